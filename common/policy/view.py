"""Filters bound to a collection entry, and Views: what one subscriber may receive.

A View is ``(filter identity, input key)``: the input key is the type-exact frozen form of
the claim and ``@sub`` values the filter reads, so subscribers whose filters would answer
every event alike share one View, and fanout can encode a frame once per View instead of once
per socket. A filter that reads no input gives all its subscribers one View.

Deletes are the caller's to route: with ``on_delete = "filter"`` call :meth:`View.matches`
with the deleted record (a delete without a record matches only :data:`View.ALL`); with
``on_delete = "all"`` every allowed View receives it, no call needed.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, ClassVar

from common.policy.claims import ClaimMap
from common.policy.compile import Inputs, Rule
from common.policy.plan import Plan, build_plan
from common.policy.values import freeze, now_string


class Filter:
    """A compiled ``filter`` of one policy entry; compared by identity (one per load)."""

    __slots__ = ("__weakref__", "claims", "label", "plan", "rule")

    def __init__(self, rule: Rule, claims: ClaimMap, label: str = "") -> None:
        self.rule = rule
        self.claims = claims
        self.label = label  # for humans: "db/collection"
        self.plan: Plan = build_plan(rule)

    def __repr__(self) -> str:
        return f"Filter({self.label!r}, {self.rule.source!r})"

    @property
    def reads_inputs(self) -> bool:
        """Does the filter read any claim or @sub value (else: one View for everyone)?"""
        return self.rule.reads_inputs

    @property
    def reads_now(self) -> bool:
        return self.rule.reads_now

    def inputs_for(self, claims_payload: Any, sub_vars: Mapping[str, Any] | None) -> Inputs:
        """The input tuple of a subscriber, in :attr:`Rule.refs` order."""
        out: list[Any] = []
        for kind, name in self.rule.refs:
            if kind == "auth":
                out.append(self.claims.resolve(claims_payload, name))
            else:
                out.append(sub_vars.get(name) if isinstance(sub_vars, Mapping) else None)
        return tuple(out)

    def view(self, claims_payload: Any, sub_vars: Mapping[str, Any] | None = None) -> View:
        return View(self, self.inputs_for(claims_payload, sub_vars))


class View:
    """What one subscriber sees; hashable, equal for subscribers that see the same events."""

    __slots__ = ("_hash", "filter", "inputs", "key")
    ALL: ClassVar[View]

    def __init__(self, flt: Filter | None, inputs: Inputs = ()) -> None:
        self.filter = flt
        self.inputs = inputs
        self.key: tuple[Hashable, ...] = tuple(freeze(v) for v in inputs)
        self._hash = hash((id(flt), self.key))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, View):
            return NotImplemented
        return self.filter is other.filter and self.key == other.key

    def __repr__(self) -> str:
        if self.filter is None:
            return "View.ALL"
        return f"View({self.filter!r}, {self.inputs!r})"

    @property
    def is_all(self) -> bool:
        return self.filter is None

    def matches(self, record: Any, *, action: str, now: str | None = None) -> bool:
        """Does an event with this decoded record pass the filter?

        A non-object record has no fields. A delete without a record (None) passes only
        View.ALL. ``on_delete = "all"`` is not applied here: see the module docstring.
        """
        flt = self.filter
        if flt is None:
            return True
        if record is None and action == "delete":
            return False
        rule = flt.rule
        if now is None:
            now = now_string() if rule.reads_now else ""
        return rule.predicate(record, self.inputs, now)


View.ALL = View(None)
