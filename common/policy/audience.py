"""Which Views of one collection receive an event, without a filter call per subscriber.

Fanout keeps one :class:`Audience` per collection and adds a View per subscription (counted:
two subscribers sharing a View add it twice and remove it twice). For an event it asks
:meth:`Audience.match` once and writes the one encoded frame to the sockets of every View
returned. Per filter, using its :class:`plan.Plan`:

- a term that reads no input is evaluated once per event and, if true, selects every View
  of the filter;
- an indexable term looks the record's key up in a dict of Views keyed by their input and
  evaluates only its residual, only for those Views (once, if the residual reads no input);
- any other term is evaluated once per distinct View not matched yet.

The result is exactly ``{v for v in views if v.matches(record, action=action)}``, plus the
``on_delete = "all"`` rule (every View gets the delete); the unit tests check it against that
brute force on random filters, subscribers and records.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from typing import Any, Literal

from common.policy.values import now_string
from common.policy.view import Filter, View

OnDelete = Literal["filter", "all"]


class _Group:
    """The Views of one filter with one dict per indexable term of its plan."""

    __slots__ = ("filter", "indexes", "views")

    def __init__(self, flt: Filter) -> None:
        self.filter = flt
        self.views: set[View] = set()
        self.indexes: list[dict[Hashable, set[View]] | None] = [
            {} if term.index is not None else None for term in flt.plan.terms
        ]

    def add(self, view: View) -> None:
        self.views.add(view)
        for term, index in zip(self.filter.plan.terms, self.indexes, strict=True):
            if term.index is None or index is None:
                continue
            key = term.index.view_key(view.inputs)
            if key is not None:
                index.setdefault(key, set()).add(view)

    def remove(self, view: View) -> None:
        self.views.discard(view)
        for term, index in zip(self.filter.plan.terms, self.indexes, strict=True):
            if term.index is None or index is None:
                continue
            key = term.index.view_key(view.inputs)
            bucket = index.get(key) if key is not None else None
            if bucket is not None:
                bucket.discard(view)
                if not bucket:
                    del index[key]

    def match(self, record: Any, now: str) -> set[View]:
        views = self.views
        matched: set[View] = set()
        for term, index in zip(self.filter.plan.terms, self.indexes, strict=True):
            if term.index is None:
                if not term.reads_inputs:
                    if term.residual(record, (), now):
                        return set(views)
                    continue
                candidates: set[View] = views
            else:
                rkey = term.index.record_key(record)
                found = index.get(rkey) if index is not None and rkey is not None else None
                if not found:
                    continue
                if not term.reads_inputs:
                    if term.residual(record, (), now):
                        matched |= found
                    continue
                candidates = found
            residual = term.residual
            for view in candidates:
                if view not in matched and residual(record, view.inputs, now):
                    matched.add(view)
            if len(matched) == len(views):
                break
        return matched


class Audience:
    """The subscribed Views of one collection; pure and synchronous (no locking needed in
    asyncio, where only one task touches it at a time)."""

    __slots__ = ("_counts", "_groups", "on_delete")

    def __init__(self, on_delete: OnDelete = "filter") -> None:
        self.on_delete: OnDelete = on_delete
        self._counts: dict[View, int] = {}
        self._groups: dict[Filter | None, _Group] = {}

    def __len__(self) -> int:
        return len(self._counts)

    def __contains__(self, view: object) -> bool:
        return view in self._counts

    def __iter__(self) -> Iterator[View]:
        return iter(list(self._counts))

    def add(self, view: View) -> None:
        """Count one more subscriber of ``view``."""
        n = self._counts.get(view, 0)
        self._counts[view] = n + 1
        if n or view.filter is None:
            return
        group = self._groups.get(view.filter)
        if group is None:
            group = self._groups[view.filter] = _Group(view.filter)
        group.add(view)

    def remove(self, view: View) -> None:
        """Count one subscriber less; the View leaves when its last subscriber does."""
        n = self._counts.get(view, 0)
        if n > 1:
            self._counts[view] = n - 1
            return
        if n == 0:
            return
        del self._counts[view]
        if view.filter is None:
            return
        group = self._groups.get(view.filter)
        if group is not None:
            group.remove(view)
            if not group.views:
                del self._groups[view.filter]

    def match(self, record: Any, action: str, *, now: str | None = None) -> set[View]:
        """The Views that receive an event with this decoded record."""
        if action == "delete" and self.on_delete == "all":
            return set(self._counts)
        out: set[View] = {View.ALL} if View.ALL in self._counts else set()
        if record is None and action == "delete":
            return out
        if now is None and any(g.filter.plan.reads_now for g in self._groups.values()):
            now = now_string()
        for group in self._groups.values():
            out |= group.match(record, now or "")
        return out
