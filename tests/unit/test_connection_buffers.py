"""What the node assumes of websockets' internals: the list that stands in for its frame deque
behaves like the deque, and the state attribute the broadcast path reads is the state."""

from __future__ import annotations

from collections import deque

from websockets.protocol import State
from websockets.server import ServerProtocol

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


def test_the_state_attribute_the_broadcast_path_reads_is_websockets_state() -> None:
    protocol = ServerProtocol()
    assert protocol._state is protocol.state is State.CONNECTING
    protocol.state = State.OPEN
    assert protocol._state is State.OPEN
