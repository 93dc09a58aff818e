"""Recursive-descent parser of the rule language into the tree of nodes.py.

Grammar (``&&`` binds tighter than ``||``, no unary not)::

    rule    := or EOF
    or      := and ( "||" and )*
    and     := primary ( "&&" primary )*
    primary := "(" or ")" | operand OP operand

Recursion happens only at ``(``, and the nesting is capped at MAX_DEPTH, so no input can
reach Python's recursion limit. Operands that need VSKI's database or a request this tier
never sees are refused here with a message saying what to do instead.
"""

from __future__ import annotations

from typing import Final

from common.policy.errors import RuleError
from common.policy.lexer import PROXY_HINT, Token, iter_tokens
from common.policy.nodes import And, Compare, Const, Field, Input, Node, Now, Operand, Or

MAX_DEPTH: Final = 32

_REQUEST_PARTS: Final = {
    "body": "the request body",
    "query": "the query string",
    "headers": "request headers",
    "method": "the request method",
    "context": "the request context",
    "data": "the request data",
}


def _macro(tok: Token) -> Operand:
    """Turn an ``@...`` token into an operand, or explain why it cannot be used here."""
    parts = tok.text[1:].split(".")
    head = parts[0]
    if head == "now" and len(parts) == 1:
        return Now(tok.offset)
    if head == "request":
        if len(parts) >= 2 and parts[1] == "auth":
            if len(parts) == 2:
                raise RuleError("@request.auth needs a claim name: @request.auth.id", tok.offset)
            if len(parts) > 3:
                raise RuleError(
                    f"{tok.text} follows a relation, which needs VSKI's database: "
                    f"map the nested claim with [claims] (e.g. {parts[2]}_{parts[3]} = "
                    f'["{".".join(parts[2:])}"]) and read @request.auth.{parts[2]}_{parts[3]}, '
                    "or use the subscribe proxy (proxy = true, @sub.*)",
                    tok.offset,
                )
            _check_segment(parts[2], tok.offset)
            return Input(("auth", parts[2]), tok.offset)
        what = _REQUEST_PARTS.get(parts[1] if len(parts) > 1 else "", "")
        shown = what or "that part of the request"
        raise RuleError(
            f"{tok.text} is not available: a subscription has no {shown}; only "
            "@request.auth.* (the token's claims) can be read. For decisions that need more, "
            "use the subscribe proxy (proxy = true, @sub.* variables)",
            tok.offset,
        )
    if head == "collection":
        raise RuleError(f"{tok.text} reads another collection: {PROXY_HINT}", tok.offset)
    if head == "sub":
        if len(parts) != 2:
            raise RuleError(
                "@sub variables are flat: write @sub.<name> and return a flat 'vars' object "
                "from the subscribe proxy",
                tok.offset,
            )
        return Input(("sub", parts[1]), tok.offset)
    raise RuleError(
        f"{tok.text} is not supported: the only macros are @request.auth.<claim>, "
        "@sub.<name> and @now",
        tok.offset,
    )


def _check_segment(segment: str, offset: int) -> None:
    if "_via_" in segment:
        raise RuleError(f"back-relation {segment!r} needs VSKI's database: {PROXY_HINT}", offset)


class _Parser:
    def __init__(self, src: str) -> None:
        self.toks = iter_tokens(src)
        self.cur = next(self.toks)
        self.depth = 0

    def peek(self) -> Token:
        return self.cur

    def take(self) -> Token:
        tok = self.cur
        if tok.kind != "eof":
            self.cur = next(self.toks)
        return tok

    def parse(self) -> Node:
        node = self.or_()
        tok = self.peek()
        if tok.kind != "eof":
            raise RuleError(
                f"expected '&&', '||' or the end of the rule, found {_show(tok)}", tok.offset
            )
        return node

    def or_(self) -> Node:
        items = [self.and_()]
        while self.peek().kind == "||":
            self.take()
            items.append(self.and_())
        return items[0] if len(items) == 1 else Or(tuple(_flatten(items, Or)))

    def and_(self) -> Node:
        items = [self.primary()]
        while self.peek().kind == "&&":
            self.take()
            items.append(self.primary())
        return items[0] if len(items) == 1 else And(tuple(_flatten(items, And)))

    def primary(self) -> Node:
        tok = self.peek()
        if tok.kind == "(":
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise RuleError(f"parentheses are nested deeper than {MAX_DEPTH}", tok.offset)
            node = self.or_()
            close = self.take()
            if close.kind != ")":
                raise RuleError(
                    f"expected ')' to close the '(' at offset {tok.offset}, found {_show(close)}",
                    close.offset,
                )
            self.depth -= 1
            return node
        left = self.operand()
        op = self.take()
        if op.kind != "op":
            raise RuleError(
                f"expected an operator after {left_text(tok)}, found {_show(op)}", op.offset
            )
        right = self.operand()
        return Compare(op.text, left, right, op.offset)

    def operand(self) -> Operand:
        tok = self.take()
        if tok.kind == "str":
            assert isinstance(tok.value, str)
            return Const(tok.value, tok.offset, tok.pattern)
        if tok.kind == "num":
            return Const(tok.value, tok.offset)
        if tok.kind == "macro":
            self.no_call(tok)
            return _macro(tok)
        if tok.kind == "ident":
            self.no_call(tok)
            if tok.text in _KEYWORDS:
                return Const(_KEYWORDS[tok.text], tok.offset)
            path = tuple(tok.text.split("."))
            for seg in path:
                _check_segment(seg, tok.offset)
            return Field(path, tok.offset)
        raise RuleError(
            f"expected a field, @request.auth.<claim>, @sub.<name>, @now or a "
            f"literal, found {_show(tok)}",
            tok.offset,
        )

    def no_call(self, tok: Token) -> None:
        if self.peek().kind == "(":
            raise RuleError(
                f"function calls such as {tok.text}(...) are not supported: {PROXY_HINT}",
                tok.offset,
            )


_KEYWORDS: Final[dict[str, object]] = {"true": True, "false": False, "null": None}


def _flatten(items: list[Node], kind: type[And] | type[Or]) -> list[Node]:
    out: list[Node] = []
    for item in items:
        if isinstance(item, kind):
            out.extend(item.items)
        else:
            out.append(item)
    return out


def _show(tok: Token) -> str:
    return "the end of the rule" if tok.kind == "eof" else repr(tok.text)


def left_text(tok: Token) -> str:
    return repr(tok.text) if tok.kind not in ("(", ")", "eof") else "the operand"


def parse_rule(src: str) -> Node | None:
    """Parse a rule; None for an empty rule (only whitespace and comments)."""
    parser = _Parser(src)
    if parser.peek().kind == "eof":
        return None
    return parser.parse()
