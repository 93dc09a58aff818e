"""Who receives one collection live on this node, and the frames they get.

Members are grouped by *view*: what they may see of the collection. Without an access policy
there is one view (``None``: everything), so a batch of events is encoded into one frame and
written to every member (``fanout/wire.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from common.messages import event_frame
from fanout.wire import Frame, Member, deliver

Event = tuple[str, bytes]  # (client-visible id, data JSON)


class Recipients:
    __slots__ = ("_count", "views")

    def __init__(self) -> None:
        self.views: dict[Any, set[Member]] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Member]:
        for members in self.views.values():
            yield from members

    def has(self, member: Member, view: Any = None) -> bool:
        members = self.views.get(view)
        return members is not None and member in members

    def add(self, member: Member, view: Any = None) -> bool:
        members = self.views.setdefault(view, set())
        if member in members:
            return False
        members.add(member)
        self._count += 1
        return True

    def discard(self, member: Member, view: Any = None) -> bool:
        members = self.views.get(view)
        if members is None or member not in members:
            return False
        members.discard(member)
        if not members:
            del self.views[view]
        self._count -= 1
        return True

    def deliver(
        self, collection: str, events: list[Event], limit: int
    ) -> tuple[int, int, list[Member]]:
        """Write a batch to every member: (frames written, events written, slow members)."""
        frame = Frame(event_frame(collection, events))
        frames, slow = 0, []
        for members in self.views.values():
            written, over = deliver(members, frame, limit)
            frames += written
            slow.extend(over)
        return frames, frames * len(events), slow
