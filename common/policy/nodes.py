"""The syntax tree of a rule: small frozen dataclasses, each with its offset in the rule.

``&&`` and ``||`` are n-ary (a chain ``a || b || c`` is one node), so a long rule gives a
shallow tree and nothing downstream (compiler, DNF planner) recurses deeper than the
parenthesis nesting, which the parser caps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

InputKind: TypeAlias = Literal["auth", "sub"]
# ("auth", "id") is @request.auth.id, ("sub", "team") is @sub.team
InputRef: TypeAlias = tuple[InputKind, str]


@dataclass(frozen=True, slots=True)
class Field:
    """A record field; ``path`` is dotted into JSON objects (``meta.level``)."""

    path: tuple[str, ...]
    offset: int


@dataclass(frozen=True, slots=True)
class Input:
    """A per-subscriber value: a claim (``@request.auth.x``) or a proxy variable (``@sub.x``)."""

    ref: InputRef
    offset: int


@dataclass(frozen=True, slots=True)
class Now:
    """``@now``: the evaluation time as a VSKI date string."""

    offset: int


@dataclass(frozen=True, slots=True)
class Const:
    """A literal; strings also keep ``pattern``, their LIKE form for ``~`` (see values.py)."""

    value: Any
    offset: int
    pattern: str | None = None


Operand: TypeAlias = Field | Input | Now | Const


@dataclass(frozen=True, slots=True)
class Compare:
    """``left op right``; ``op`` is one of lexer.OPERATORS (``?`` prefix = any-element form)."""

    op: str
    left: Operand
    right: Operand
    offset: int


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Node, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Node, ...]


Node: TypeAlias = Compare | And | Or


def operands(node: Node) -> list[Operand]:
    """Every operand of a tree, left to right (iterative: the tree may be wide)."""
    out: list[Operand] = []
    stack: list[Node] = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, Compare):
            out.extend((cur.left, cur.right))
        else:
            stack.extend(reversed(cur.items))
    return out
