"""What operand values are and what each operator does with them (PocketBase semantics).

Values are what JSON decodes to: None, bool, int, float, str, list, dict, plus UNKNOWN for a
dotted path that ran into a non-object (typically a relation id: this tier cannot follow
relations, so such a path must never grant anything, not even through ``!=``).

- null is the empty string for equality: ``null = ""`` holds, ``null != ""`` does not.
- Types are strict: numbers never equal strings, a bool never equals 1 (Python's
  ``True == 1`` is avoided by dispatching on exact types); ints and floats compare numerically.
- Ordering holds only between two numbers or two strings (VSKI dates are strings that sort).
- Lists, objects and UNKNOWN are false under every operator except the ``?`` forms (deny by
  default, ``!=`` included).
- ``~``/``!~`` are case-insensitive "contains" on two strings and false otherwise; only a
  string literal of the rule may be a LIKE pattern (``%``/``_``), values never are.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Any, Final

Binary = Callable[[Any, Any], bool]


class _Unknown:
    """A path that cannot be read locally; compares false with everything."""

    _instance: _Unknown | None = None

    def __new__(cls) -> _Unknown:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN: Final = _Unknown()


def _num(v: Any) -> bool:
    t = type(v)
    return t is int or t is float


def eq(a: Any, b: Any) -> bool:
    """The language's ``=``."""
    ta, tb = type(a), type(b)
    if a is None or (ta is str and a == ""):
        return b is None or (tb is str and b == "")
    if ta is str:
        return tb is str and a == b
    if ta is int or ta is float:
        return (tb is int or tb is float) and a == b
    if ta is bool:
        return tb is bool and a is b
    return False


def ne(a: Any, b: Any) -> bool:
    """The language's ``!=``: the negation of ``=`` for scalars, false for containers."""
    if not (_scalar(a) and _scalar(b)):
        return False
    return not eq(a, b)


def _scalar(v: Any) -> bool:
    t = type(v)
    return v is None or t is str or t is int or t is float or t is bool


def _ordered(cmp: Callable[[Any, Any], bool]) -> Binary:
    def op(a: Any, b: Any) -> bool:
        ta, tb = type(a), type(b)
        if ta is str:
            return tb is str and cmp(a, b)
        if ta is int or ta is float:
            return (tb is int or tb is float) and cmp(a, b)
        return False

    return op


gt: Final = _ordered(lambda a, b: a > b)
ge: Final = _ordered(lambda a, b: a >= b)
lt: Final = _ordered(lambda a, b: a < b)
le: Final = _ordered(lambda a, b: a <= b)


def contains(a: Any, b: Any) -> bool:
    """``~`` with a value (not a literal pattern) on the right: literal, case-insensitive."""
    return type(a) is str and type(b) is str and b.lower() in a.lower()


def not_contains(a: Any, b: Any) -> bool:
    return type(a) is str and type(b) is str and b.lower() not in a.lower()


BINARY: Final[dict[str, Binary]] = {
    "=": eq,
    "!=": ne,
    ">": gt,
    ">=": ge,
    "<": lt,
    "<=": le,
    "~": contains,
    "!~": not_contains,
}


def any_of(op: Binary) -> Binary:
    """The ``?op`` form: a list holds if one element does; a scalar is a one-element list."""

    def any_op(a: Any, b: Any) -> bool:
        if type(a) is list:
            return any(op(x, b) for x in a)
        if a is None or a is UNKNOWN:
            return False
        return op(a, b)

    return any_op


# --- LIKE patterns (string literals of the rule only) -----------------------------------


def has_wildcard(pattern: str) -> bool:
    """True if a literal's LIKE form has an unescaped ``%`` (PocketBase: then it is a pattern)."""
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] == "%":
            return True
        i += 1
    return False


def like_matcher(pattern: str) -> Callable[[str], bool]:
    """Compile a LIKE pattern (``%`` any run, ``_`` one character, ``\\`` escapes) to a test.

    Matching splits the pattern at ``%`` and places each piece leftmost in turn, which is
    exact for these wildcards and linear-ish: no regex backtracking that a hostile record of
    1 MB could turn into a denial of service.
    """
    pieces: list[list[str | None]] = [[]]  # None stands for "_"
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            pieces[-1].append(pattern[i + 1].lower())
            i += 2
            continue
        if c == "%":
            pieces.append([])
        elif c == "_":
            pieces[-1].append(None)
        else:
            pieces[-1].append(c.lower())
        i += 1
    finders = [_piece(p) for p in pieces]
    first, last = finders[0], finders[-1]
    middle = finders[1:-1]
    only = len(finders) == 1

    def match(text: str) -> bool:
        s = text.lower()
        if only:
            return first.fixed(s, 0) == len(s)
        start = first.fixed(s, 0)
        if start < 0:
            return False
        for f in middle:
            start = f.find(s, start)
            if start < 0:
                return False
        end_at = len(s) - last.size
        return end_at >= start and last.fixed(s, end_at) == len(s)

    return match


class _Piece:
    """A ``%``-free piece of a pattern: literal characters and ``_`` wildcards."""

    def __init__(self, chars: list[str | None]) -> None:
        self.size = len(chars)
        self.literal = None if None in chars else "".join(c for c in chars if c is not None)
        body = "".join("." if c is None else re.escape(c) for c in chars)
        self.regex = re.compile(body, re.DOTALL)

    def fixed(self, s: str, at: int) -> int:
        """End index if the piece matches exactly at ``at``, else -1."""
        if self.literal is not None:
            return at + self.size if s.startswith(self.literal, at) else -1
        m = self.regex.match(s, at)
        return m.end() if m else -1

    def find(self, s: str, at: int) -> int:
        """End index of the leftmost match at or after ``at``, else -1."""
        if self.literal is not None:
            i = s.find(self.literal, at)
            return -1 if i < 0 else i + self.size
        m = self.regex.search(s, at)
        return m.end() if m else -1


def _piece(chars: list[str | None]) -> _Piece:
    return _Piece(chars)


def like_op(pattern: str, negate: bool) -> Callable[[Any], bool]:
    """``x ~ 'pattern'`` / ``x !~ 'pattern'`` for a literal with a wildcard."""
    match = like_matcher(pattern)
    if negate:
        return lambda a: type(a) is str and not match(a)
    return lambda a: type(a) is str and match(a)


# --- keys -------------------------------------------------------------------------------

_EMPTY: Final = ("s", "")


def index_key(v: Any) -> Hashable | None:
    """A key with ``eq(a, b) == (index_key(a) == index_key(b))`` whenever neither is None.

    None means the value equals nothing (containers, UNKNOWN, NaN), so it is never indexed.
    """
    t = type(v)
    if v is None:
        return _EMPTY
    if t is str:
        return ("s", v)
    if t is bool:
        return ("b", v)
    if t is int:
        return ("n", v)
    if t is float:
        if math.isnan(v):
            return None
        return ("n", int(v)) if v.is_integer() else ("n", v)
    return None


def freeze(v: Any) -> Hashable:
    """An exact, type-tagged hashable form: equal only for values no operator can tell apart.

    Unlike :func:`index_key`, null and "" differ here (``~`` and ordering tell them apart),
    and True differs from 1, so two subscribers share a View only if every filter behaves
    the same for both. Objects, and containers inside a list, are false under every
    operator whatever they hold, so they freeze to a marker: no recursion, however deep a
    hostile claim is nested.
    """
    if type(v) is list:
        return ("l", tuple(_freeze_scalar(x) for x in v))
    return _freeze_scalar(v)


def _freeze_scalar(v: Any) -> Hashable:
    t = type(v)
    if v is None:
        return ("z",)
    if t is str:
        return ("s", v)
    if t is bool:
        return ("b", v)
    if t is int:
        return ("n", v)
    if t is float:
        if math.isnan(v):
            return ("nan",)
        return ("n", int(v)) if v.is_integer() else ("n", v)
    if v is UNKNOWN:
        return ("u",)
    return ("c",)  # an object or a nested list: compares false with everything


def now_string(at: datetime | None = None) -> str:
    """The current UTC time as VSKI stores dates: ``YYYY-MM-DD HH:MM:SS.sssZ``."""
    t = at or datetime.now(UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def like_literal(pattern: str) -> str:
    """A wildcard-free LIKE form back to its characters (``\\%`` is a literal ``%``)."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            out.append(pattern[i + 1])
            i += 2
            continue
        out.append(pattern[i])
        i += 1
    return "".join(out)
