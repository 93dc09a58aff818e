"""The list that stands in for websockets' frame deque behaves like the deque it replaces."""

from __future__ import annotations

from collections import deque

from fanout.server import _SmallQueue


def test_small_queue_matches_deque_for_the_operations_websockets_uses() -> None:
    ours, theirs = _SmallQueue(), deque[int]()
    for q in (ours, theirs):
        q.append(1)
        q.append(2)
        q.append(3)
    assert ours.popleft() == theirs.popleft() == 1
    for q in (ours, theirs):
        q.extendleft(reversed([7, 8]))  # websockets' put_back
    assert list(ours) == list(theirs) == [7, 8, 2, 3]
    assert len(ours) == len(theirs) == 4
    while theirs:
        assert ours.popleft() == theirs.popleft()
    assert not ours
