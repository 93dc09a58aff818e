"""How ``@request.auth.<name>`` is read from a JWT payload, per the ``[claims]`` table.

Each name maps to candidate paths; the first that is present and not null wins (a null claim
falls through to the next candidate, so ``id = ["id", "sub"]`` works for tokens that carry
``"id": null``). A name not listed reads the top-level claim of the same name. Payloads are
attacker-shaped: anything that is not an object along a path simply reads as null.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ClaimMap:
    """Resolves claim names to values; immutable once built."""

    __slots__ = ("_paths",)

    def __init__(self, paths: Mapping[str, tuple[tuple[str, ...], ...]] | None = None) -> None:
        self._paths: dict[str, tuple[tuple[str, ...], ...]] = dict(paths or {})

    @classmethod
    def from_lists(cls, table: Mapping[str, list[str]]) -> ClaimMap:
        """Build from already validated ``name -> ["a", "meta.b"]`` lists."""
        return cls({name: tuple(tuple(p.split(".")) for p in lst) for name, lst in table.items()})

    def names(self) -> list[str]:
        return sorted(self._paths)

    def resolve(self, payload: Any, name: str) -> Any:
        """The value of ``@request.auth.<name>`` for this payload (None if absent)."""
        if not isinstance(payload, Mapping):
            return None
        paths = self._paths.get(name)
        if paths is None:
            return payload.get(name)
        for path in paths:
            value: Any = payload
            for seg in path:
                if not isinstance(value, Mapping):
                    value = None
                    break
                value = value.get(seg)
            if value is not None:
                return value
        return None
