"""Who receives one collection live on this node, and the frames they get.

Members are grouped by *view*: what the access policy lets them see of the collection
(``common/policy``). Without a policy, or for superusers, the view is ``View.ALL`` and a batch
of events is encoded into one frame written to every member, as before the policy existed.
With filters, each event's record is decoded once, :class:`~common.policy.Audience` finds the
views it goes to without evaluating the filter once per subscriber, and every distinct subset
of the batch is encoded once and written to all members whose views got that subset
(``fanout/wire.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Literal

import msgspec

from common.messages import event_frame
from common.policy import Audience, View
from fanout.wire import Frame, Member, deliver

Event = tuple[str, bytes]  # (client-visible id, data JSON)
OnDelete = Literal["filter", "all"]


class _Data(msgspec.Struct):
    action: str = ""
    record: Any = None


_decode = msgspec.json.Decoder(_Data).decode


def decode_event(data: bytes) -> tuple[str, Any]:
    """(action, record) of a stored event's data, for the filters. Undecodable data (never
    written by ingest) has no record: only unfiltered views receive it."""
    try:
        d = _decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "", None
    return d.action, d.record


def visible(view: View, on_delete: OnDelete, events: Iterable[Event]) -> list[Event]:
    """The events of a replay that ``view`` may receive."""
    if view.is_all:
        return list(events)
    out = []
    for event in events:
        action, record = decode_event(event[1])
        if (action == "delete" and on_delete == "all") or view.matches(record, action=action):
            out.append(event)
    return out


class Recipients:
    __slots__ = ("_count", "audience", "views")

    def __init__(self) -> None:
        self.views: dict[View, set[Member]] = {}
        self.audience = Audience()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Member]:
        for members in self.views.values():
            yield from members

    def has(self, member: Member, view: View = View.ALL) -> bool:
        members = self.views.get(view)
        return members is not None and member in members

    def add(self, member: Member, view: View = View.ALL) -> bool:
        members = self.views.get(view)
        if members is None:
            members = self.views[view] = set()
            self.audience.add(view)
        elif member in members:
            return False
        members.add(member)
        self._count += 1
        return True

    def discard(self, member: Member, view: View = View.ALL) -> bool:
        members = self.views.get(view)
        if members is None or member not in members:
            return False
        members.discard(member)
        if not members:
            del self.views[view]
            self.audience.remove(view)
        self._count -= 1
        return True

    def deliver(
        self, collection: str, events: list[Event], limit: int
    ) -> tuple[int, int, list[Member]]:
        """Write a batch to every member that may see it: (frames, events written, slow)."""
        views = self.views
        if len(views) == 1 and View.ALL in views:
            written, over = deliver(views[View.ALL], Frame(event_frame(collection, events)), limit)
            return written, written * len(events), over
        # which events each view gets; views with the same subset share one frame
        subsets: dict[View, list[int]] = {}
        match = self.audience.match
        for i, (_eid, data) in enumerate(events):
            action, record = decode_event(data)
            for view in match(record, action):
                subsets.setdefault(view, []).append(i)
        frames: dict[tuple[int, ...], Frame] = {}
        written_frames = written_events = 0
        slow: list[Member] = []
        for view, indexes in subsets.items():
            key = tuple(indexes)
            shared = frames.get(key)
            if shared is None:
                shared = frames[key] = Frame(event_frame(collection, [events[i] for i in key]))
            written, over = deliver(views[view], shared, limit)
            written_frames += written
            written_events += written * len(key)
            slow.extend(over)
        return written_frames, written_events, slow

    @property
    def on_delete(self) -> OnDelete:
        return self.audience.on_delete

    @on_delete.setter
    def on_delete(self, value: OnDelete) -> None:
        self.audience.on_delete = value
