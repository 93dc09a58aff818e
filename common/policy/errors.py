"""The two error types of the policy: one for a rule's text, one for the whole file.

A rule is compiled without knowing where it sits in the file, so :class:`RuleError` carries
only the 0-based offset inside the rule; the file loader turns it into a :class:`PolicyError`,
the single type every caller catches, whose ``str()`` is ``path:line:col: what is wrong`` so
an operator can jump straight to the spot.
"""

from __future__ import annotations


class RuleError(ValueError):
    """A rule that does not compile; ``offset`` is the 0-based character index in the rule."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset

    def __str__(self) -> str:
        return f"at offset {self.offset}: {self.message}"


class PolicyError(ValueError):
    """Anything wrong with a policy file, located as ``path:line:col``."""

    def __init__(self, path: str, line: int, col: int, message: str) -> None:
        super().__init__(f"{path}:{line}:{col}: {message}")
        self.path = path
        self.line = line
        self.col = col
        self.message = message
