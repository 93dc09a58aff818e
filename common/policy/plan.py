"""The audience plan of a filter: how fanout finds the subscribers of an event without
evaluating the filter once per subscriber.

The filter is rewritten into a disjunction of terms (``&&`` distributed over ``||``). A term
with a conjunct ``field = @request.auth.x`` (either side, or ``@sub.x``) is *indexable*: an
event can only match it for subscribers whose input x equals the record's field, so fanout
keeps those subscribers in a dict keyed by :func:`values.index_key` of their x and looks the
record's key up. What is left of the term (its *residual*) is evaluated only for the views
found. If distribution would give more than MAX_TERMS terms the plan falls back to one
non-indexable term: the whole filter (correct, just not indexed).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from common.policy.compile import Predicate, Rule, compile_node, field_reader, reads_now
from common.policy.nodes import And, Compare, Field, Input, InputRef, Node, Or, operands
from common.policy.values import index_key

MAX_TERMS: Final = 64


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """``path = input``: the record field and the slot of the input in a View's inputs."""

    path: tuple[str, ...]
    ref: InputRef
    slot: int
    read: Callable[[Any], Any] = field(repr=False, compare=False)

    def record_key(self, record: Any) -> Hashable | None:
        """The index key of the record's side (None: the term cannot match this record)."""
        return index_key(self.read(record))

    def view_key(self, inputs: tuple[Any, ...]) -> Hashable | None:
        """The index key of a subscriber's side (None: the term never matches for it)."""
        return index_key(inputs[self.slot])


@dataclass(frozen=True, slots=True)
class Term:
    """One disjunct: true iff its index conjunct (if any) and its residual both hold."""

    index: IndexSpec | None
    residual: Predicate = field(repr=False)
    reads_inputs: bool  # does the residual read any input (else: one evaluation per event)
    conjuncts: int


@dataclass(frozen=True, slots=True)
class Plan:
    terms: tuple[Term, ...]
    reads_inputs: bool  # does the filter read any input at all
    reads_now: bool
    exact: bool  # False when the DNF was too large and the plan is the whole filter


def _dnf(node: Node, cap: int) -> list[list[Compare]] | None:
    """Disjunctive normal form as lists of conjuncts; None if it exceeds ``cap`` terms."""
    if isinstance(node, Compare):
        return [[node]]
    if isinstance(node, Or):
        out: list[list[Compare]] = []
        for item in node.items:
            sub = _dnf(item, cap)
            if sub is None or len(out) + len(sub) > cap:
                return None
            out.extend(sub)
        return out
    acc: list[list[Compare]] = [[]]
    for item in node.items:
        sub = _dnf(item, cap)
        if sub is None or len(acc) * len(sub) > cap:
            return None
        acc = [a + b for a in acc for b in sub]
    return acc


def _index_of(conjuncts: list[Compare]) -> tuple[int, Field, Input] | None:
    for i, c in enumerate(conjuncts):
        if c.op != "=":
            continue
        if isinstance(c.left, Field) and isinstance(c.right, Input):
            return i, c.left, c.right
        if isinstance(c.left, Input) and isinstance(c.right, Field):
            return i, c.right, c.left
    return None


def _term(conjuncts: list[Compare], positions: Mapping[InputRef, int]) -> Term:
    found = _index_of(conjuncts)
    spec: IndexSpec | None = None
    rest = conjuncts
    if found is not None:
        i, fld, inp = found
        spec = IndexSpec(fld.path, inp.ref, positions[inp.ref], field_reader(fld.path))
        rest = conjuncts[:i] + conjuncts[i + 1 :]
    node: Node | None
    if not rest:
        node = None
    elif len(rest) == 1:
        node = rest[0]
    else:
        node = And(tuple(rest))
    reads = node is not None and any(isinstance(op, Input) for op in operands(node))
    return Term(spec, compile_node(node, positions), reads, len(conjuncts))


def build_plan(rule: Rule, max_terms: int = MAX_TERMS) -> Plan:
    """The plan of a compiled filter (an empty filter gives one always-true term)."""
    positions = {ref: i for i, ref in enumerate(rule.refs)}
    node = rule.node
    if node is None:
        return Plan((Term(None, rule.predicate, False, 0),), False, False, True)
    terms = _dnf(node, max_terms)
    if terms is None:
        whole = Term(None, rule.predicate, rule.reads_inputs, 0)
        return Plan((whole,), rule.reads_inputs, rule.reads_now, False)
    return Plan(
        tuple(_term(t, positions) for t in terms),
        rule.reads_inputs,
        reads_now(node),
        True,
    )
