"""Tokenizer of the rule language: a hand-written scanner, so every error has an exact offset.

It refuses here what can be recognised from characters alone: operators that are not ours
(``==``, ``<>``, ``!``, ``&``, ``|``), modifiers (``:each``), stray characters, unterminated
strings. Everything that needs context (which ``@`` macros exist, function calls, where an
operand may appear) is the parser's and the compiler's job.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from common.policy.errors import RuleError

MAX_RULE_CHARS: Final = 4096

OPERATORS: Final = frozenset(
    {"=", "!=", ">", ">=", "<", "<=", "~", "!~"}
    | {"?=", "?!=", "?>", "?>=", "?<", "?<=", "?~", "?!~"}
)
_OP_CHARS: Final = frozenset("=!<>~?&|")
_HINTS: Final = {
    "==": "use '=' for equality",
    "===": "use '=' for equality",
    "<>": "use '!=' for 'not equal'",
    "!": "there is no unary not: use '!=' or '!~'",
    "&": "use '&&' for 'and'",
    "|": "use '||' for 'or'",
    "=>": "use '>='",
    "=<": "use '<='",
    "=~": "use '~' for 'contains'",
}
_PROXY_HINT: Final = (
    "it is evaluated by VSKI's database, which this tier cannot see: "
    "set proxy = true on the collection and let the subscribe proxy decide (@sub.* variables)"
)


@dataclass(frozen=True, slots=True)
class Token:
    """One token; ``kind`` is one of ( ) && || op str num ident macro eof."""

    kind: str
    text: str
    offset: int
    value: object = None  # str / int / float for literals
    pattern: str | None = None  # strings: the text with only quote escapes removed (LIKE form)


def _ident_end(src: str, i: int) -> int:
    n = len(src)
    while i < n and (src[i].isascii() and (src[i].isalnum() or src[i] == "_")):
        i += 1
    return i


def _is_ident_start(c: str) -> bool:
    return c.isascii() and (c.isalpha() or c == "_")


def _path(src: str, start: int) -> int:
    """End of a dotted identifier path starting at ``start`` (first char already checked)."""
    i = _ident_end(src, start)
    while i + 1 < len(src) and src[i] == "." and _ident_end(src, i + 1) > i + 1:
        i = _ident_end(src, i + 1)
    return i


def _string(src: str, start: int) -> tuple[Token, int]:
    quote = src[start]
    i = start + 1
    value: list[str] = []
    pattern: list[str] = []
    n = len(src)
    while i < n:
        c = src[i]
        if c == quote:
            text = src[start : i + 1]
            return Token("str", text, start, "".join(value), "".join(pattern)), i + 1
        if c == "\\" and i + 1 < n:
            nxt = src[i + 1]
            if nxt == quote:
                value.append(nxt)
                pattern.append(nxt)
            elif nxt == "\\":
                value.append("\\")
                pattern.append("\\\\")
            else:  # kept as written: a backslash only escapes the quote and itself
                value.append("\\" + nxt)
                # for ~, \% and \_ are a literal % and _; any other backslash is itself
                pattern.append(("\\" if nxt in "%_" else "\\\\") + nxt)
            i += 2
            continue
        value.append(c)
        pattern.append(c)
        i += 1
    raise RuleError(f"string starting with {quote} is never closed", start)


def _number(src: str, start: int) -> tuple[Token, int]:
    i = start + 1 if src[start] == "-" else start
    j = i
    while j < len(src) and src[j].isascii() and src[j].isdigit():
        j += 1
    if j == i:
        raise RuleError("'-' must be followed by a number", start)
    is_float = False
    if j + 1 < len(src) and src[j] == "." and src[j + 1].isascii() and src[j + 1].isdigit():
        is_float = True
        j += 1
        while j < len(src) and src[j].isascii() and src[j].isdigit():
            j += 1
    if j < len(src) and (src[j].isascii() and (src[j].isalnum() or src[j] in "_.")):
        raise RuleError(f"invalid number {src[start : j + 1]!r}", start)
    text = src[start:j]
    value: int | float = float(text) if is_float else int(text)
    return Token("num", text, start, value), j


def _operator(src: str, start: int) -> tuple[Token, int]:
    j = start
    while j < len(src) and src[j] in _OP_CHARS:
        j += 1
    text = src[start:j]
    if text in ("&&", "||"):
        return Token(text, text, start), j
    if text in OPERATORS:
        return Token("op", text, start), j
    hint = _HINTS.get(text, "operators are = != > >= < <= ~ !~ and their ?-forms, && and ||")
    raise RuleError(f"unknown operator {text!r}: {hint}", start)


def tokenize(src: str) -> list[Token]:
    """All tokens of a rule, ending with an ``eof`` token; raise RuleError on bad input."""
    return list(iter_tokens(src))


def iter_tokens(src: str) -> Iterator[Token]:
    """Tokens one by one, so the parser reports the first problem in reading order."""
    if len(src) > MAX_RULE_CHARS:
        raise RuleError(f"rule is {len(src)} characters long; the limit is {MAX_RULE_CHARS}", 0)
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if c in " \t\r\n":
            i += 1
        elif c == "/" and src.startswith("//", i):
            nl = src.find("\n", i)
            i = n if nl < 0 else nl + 1
        elif c in "()":
            yield Token(c, c, i)
            i += 1
        elif c in "'\"":
            tok, i = _string(src, i)
            yield tok
        elif (c.isascii() and c.isdigit()) or c == "-":
            tok, i = _number(src, i)
            yield tok
        elif c in _OP_CHARS:
            tok, i = _operator(src, i)
            yield tok
        elif c == "@" or _is_ident_start(c):
            first = i + 1 if c == "@" else i
            if first >= n or not _is_ident_start(src[first]):
                raise RuleError("'@' must be followed by a name such as @request.auth.id", i)
            j = _path(src, first)
            yield Token("macro" if c == "@" else "ident", src[i:j], i)
            i = j
            if i < n and src[i] == ":":
                m = _ident_end(src, i + 1)
                mod = src[i:m] if m > i + 1 else ":"
                raise RuleError(f"modifier {mod!r} is not supported: {_PROXY_HINT}", i)
        else:
            raise RuleError(f"unexpected character {c!r}", i)
    yield Token("eof", "", n)


PROXY_HINT: Final = _PROXY_HINT
