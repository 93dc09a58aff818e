"""Rules to Python closures, compiled once at load: evaluation is a few calls, never a parse.

A compiled predicate takes ``(record, inputs, now)``: the decoded record (anything; a
non-object has no fields), the tuple of per-subscriber input values in the order of
:attr:`Rule.refs`, and the ``@now`` string. Passing inputs as a positional tuple is what lets
fanout evaluate one filter for many subscribers and share a View between equal inputs.

The scope check lives here too: access rules (subscribe, groups, superusers, sender) see a
token, not a record, so they may not read record fields; ``@sub.*`` exists only in the filter
of a collection that asks the subscribe proxy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from common.policy.errors import RuleError
from common.policy.nodes import (
    And,
    Compare,
    Const,
    Field,
    Input,
    InputRef,
    Node,
    Now,
    Operand,
    operands,
)
from common.policy.parser import parse_rule
from common.policy.values import (
    BINARY,
    UNKNOWN,
    Binary,
    any_of,
    has_wildcard,
    like_literal,
    like_op,
    now_string,
)

Inputs: TypeAlias = tuple[Any, ...]
Predicate: TypeAlias = Callable[[Any, Inputs, str], bool]
Getter: TypeAlias = Callable[[Any, Inputs, str], Any]
RuleKind: TypeAlias = Literal["access", "filter"]


def _true(record: Any, inputs: Inputs, now: str) -> bool:
    return True


def read_path(record: Any, path: tuple[str, ...]) -> Any:
    """A record field: missing is None, a path through a non-object is UNKNOWN."""
    if not isinstance(record, dict):
        return None
    value: Any = record.get(path[0])
    for seg in path[1:]:
        if isinstance(value, dict):
            value = value.get(seg)
        elif value is None:
            return None
        elif type(value) is list and seg.isdigit():
            idx = int(seg)
            value = value[idx] if idx < len(value) else None
        else:
            return UNKNOWN
    return value


def field_reader(path: tuple[str, ...]) -> Callable[[Any], Any]:
    """A fast one-argument reader for ``path`` (a single key is the common case)."""
    if len(path) == 1:
        key = path[0]
        return lambda r: r.get(key) if isinstance(r, dict) else None
    return lambda r: read_path(r, path)


def _getter(op: Operand, positions: Mapping[InputRef, int]) -> Getter:
    if isinstance(op, Field):
        read = field_reader(op.path)
        return lambda r, i, n: read(r)
    if isinstance(op, Input):
        pos = positions[op.ref]
        return lambda r, i, n: i[pos]
    if isinstance(op, Now):
        return lambda r, i, n: n
    value = op.value
    return lambda r, i, n: value


def _operator(c: Compare) -> Binary:
    base = c.op.lstrip("?")
    right = c.right
    fn: Binary
    if base in ("~", "!~") and isinstance(right, Const) and right.pattern is not None:
        if has_wildcard(right.pattern):
            unary = like_op(right.pattern, negate=base == "!~")
            fn = lambda a, b: unary(a)  # noqa: E731
        else:
            needle = like_literal(right.pattern)
            plain = BINARY[base]
            fn = lambda a, b: plain(a, needle)  # noqa: E731
    else:
        fn = BINARY[base]
    return any_of(fn) if c.op.startswith("?") else fn


def _compare(c: Compare, positions: Mapping[InputRef, int]) -> Predicate:
    fn = _operator(c)
    left = _getter(c.left, positions)
    if isinstance(c.right, Const):
        value = c.right.value
        return lambda r, i, n: fn(left(r, i, n), value)
    right = _getter(c.right, positions)
    return lambda r, i, n: fn(left(r, i, n), right(r, i, n))


def compile_node(node: Node | None, positions: Mapping[InputRef, int]) -> Predicate:
    """The predicate of a tree (None: always true); ``positions`` maps inputs to tuple slots."""
    if node is None:
        return _true
    if isinstance(node, Compare):
        return _compare(node, positions)
    preds = [compile_node(item, positions) for item in node.items]
    if isinstance(node, And):
        if len(preds) == 2:
            a, b = preds
            return lambda r, i, n: a(r, i, n) and b(r, i, n)
        return lambda r, i, n: all(p(r, i, n) for p in preds)
    if len(preds) == 2:
        a, b = preds
        return lambda r, i, n: a(r, i, n) or b(r, i, n)
    return lambda r, i, n: any(p(r, i, n) for p in preds)


def check_scope(node: Node, kind: RuleKind, proxy: bool) -> None:
    """Refuse operands that cannot exist where the rule is used."""
    for op in operands(node):
        if kind == "access" and isinstance(op, Field):
            raise RuleError(
                f"record fields belong in filter: {'.'.join(op.path)!r} is a record field, "
                "and this rule decides about a token before any record exists (it may read "
                "@request.auth.*, @now and literals)",
                op.offset,
            )
        if isinstance(op, Input) and op.ref[0] == "sub":
            if kind == "access":
                raise RuleError(
                    f"@sub.{op.ref[1]} is only available in filter: @sub.* variables come "
                    "from the subscribe proxy after this rule has decided",
                    op.offset,
                )
            if not proxy:
                raise RuleError(
                    f"@sub.{op.ref[1]} needs proxy = true on this collection: @sub.* "
                    "variables are returned by the subscribe proxy",
                    op.offset,
                )


def refs_of(node: Node | None) -> tuple[InputRef, ...]:
    """The distinct inputs a tree reads, sorted: the canonical order of a View's inputs."""
    if node is None:
        return ()
    return tuple(sorted({op.ref for op in operands(node) if isinstance(op, Input)}))


def reads_now(node: Node | None) -> bool:
    return node is not None and any(isinstance(op, Now) for op in operands(node))


@dataclass(frozen=True, slots=True, eq=False)
class Rule:
    """A compiled rule. ``node`` is None for an empty rule, which allows everything."""

    source: str
    kind: RuleKind
    node: Node | None
    refs: tuple[InputRef, ...]
    reads_now: bool
    predicate: Predicate = field(repr=False)

    @property
    def is_empty(self) -> bool:
        return self.node is None

    @property
    def reads_inputs(self) -> bool:
        return bool(self.refs)

    def fields(self) -> list[tuple[str, ...]]:
        """The record field paths the rule reads."""
        if self.node is None:
            return []
        return [op.path for op in operands(self.node) if isinstance(op, Field)]

    def test(self, record: Any, inputs: Inputs, now: str | None = None) -> bool:
        """Evaluate; ``now`` defaults to the current time when the rule reads ``@now``."""
        if now is None:
            now = now_string() if self.reads_now else ""
        return self.predicate(record, inputs, now)


def compile_rule(source: str, *, kind: RuleKind = "access", proxy: bool = False) -> Rule:
    """Parse, scope-check and compile a rule; raise RuleError with the offending offset."""
    node = parse_rule(source)
    if node is not None:
        check_scope(node, kind, proxy)
    refs = refs_of(node)
    positions = {ref: i for i, ref in enumerate(refs)}
    return Rule(source, kind, node, refs, reads_now(node), compile_node(node, positions))
