"""Live recipients of a collection grouped by view (fanout/recipients.py): who gets which event,
and that subscribers with the same view share one encoded frame."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from common.policy import View, parse_policy
from fanout.recipients import Recipients, decode_event, visible
from fanout.wire import OVER_LIMIT, WRITTEN, Frame

POLICY = parse_policy(
    """
version = 1
[claims]
id = ["id", "sub"]
[superusers]
rule = '@request.auth.role = "admin"'
[[collection]]
name = "posts"
subscribe = ""
filter = 'status = "published" || author = @request.auth.id'
[[collection]]
name = "notes"
subscribe = ""
filter = 'owner = @request.auth.id'
on_delete = "all"
""",
    "test.toml",
)


@dataclass(eq=False)
class FakeMember:
    name: str
    buffered: int = 0
    frames: list[Frame] = field(default_factory=list)
    closing: bool = False

    def buffered_bytes(self) -> int:
        return self.buffered

    def write_frame(self, frame: Frame) -> bool:
        self.frames.append(frame)
        return True

    def offer(self, frame: Frame, limit: int) -> int:
        if self.buffered > limit:
            return OVER_LIMIT
        self.frames.append(frame)
        return WRITTEN

    async def send_frame(self, payload: bytes) -> None:  # pragma: no cover - not used here
        raise AssertionError

    def refund_token(self) -> None:
        pass

    def overflowed(self) -> None:
        pass

    def ids(self) -> list[str]:
        return [e["id"] for f in self.frames for e in json.loads(f.payload)["events"]]


def view(collection: str, **claims: str) -> View:
    d = POLICY.subscribe_decision(claims, "db", collection, group=None)
    assert d.allowed and d.view is not None
    return d.view


def event(n: int, action: str = "create", **record: object) -> tuple[str, bytes]:
    data = {"action": action, "record": {"id": f"r{n}", **record} if record is not None else None}
    return f"{1000 + n}-{n}@e", json.dumps(data).encode()


def test_without_a_policy_everyone_shares_one_frame() -> None:
    r = Recipients()
    members = [FakeMember(str(i)) for i in range(5)]
    for m in members:
        assert r.add(m)
    assert not r.add(members[0]), "added twice"
    frames, events, slow = r.deliver("posts", [event(1), event(2)], limit=1000)
    assert (frames, events, slow) == (5, 10, [])
    assert len({id(m.frames[0]) for m in members}) == 1, "one encoded frame for all"


def test_owner_and_published_filter() -> None:
    r = Recipients()
    alice, alice2, bob, admin = (FakeMember(n) for n in ("alice", "alice2", "bob", "admin"))
    r.add(alice, view("posts", sub="alice"))
    r.add(alice2, view("posts", sub="alice"))
    r.add(bob, view("posts", sub="bob"))
    r.add(admin, view("posts", sub="x", role="admin"))
    batch = [
        event(1, author="alice", status="draft"),
        event(2, author="bob", status="draft"),
        event(3, author="carol", status="published"),
        event(4, author="carol", status="draft"),
    ]
    frames, events, _ = r.deliver("posts", batch, limit=1000)
    assert alice.ids() == ["1001-1@e", "1003-3@e"]
    assert alice2.ids() == alice.ids() and alice2.frames[0] is alice.frames[0], "same view"
    assert bob.ids() == ["1002-2@e", "1003-3@e"]
    assert admin.ids() == [f"{1000 + n}-{n}@e" for n in (1, 2, 3, 4)], "superuser sees all"
    assert (frames, events) == (4, 2 + 2 + 2 + 4)


def test_nobody_matches_means_nothing_is_written() -> None:
    r = Recipients()
    bob = FakeMember("bob")
    r.add(bob, view("posts", sub="bob"))
    assert r.deliver("posts", [event(1, author="alice", status="draft")], 1000) == (0, 0, [])
    assert bob.frames == []


def test_deletes_follow_on_delete() -> None:
    posts, notes = Recipients(), Recipients()
    notes.on_delete = "all"
    a1, a2 = FakeMember("a"), FakeMember("b")
    posts.add(a1, view("posts", sub="alice"))
    notes.add(a2, view("notes", sub="alice"))
    posts.deliver("posts", [event(1, "delete", author="bob", status="draft")], 1000)
    posts.deliver("posts", [("1002-2@e", b'{"action":"delete","record":null}')], 1000)
    notes.deliver("notes", [("1003-3@e", b'{"action":"delete","record":{"id":"n1"}}')], 1000)
    assert a1.ids() == [], "filter: bob's draft deleted is not alice's; a bare delete is nobody's"
    assert a2.ids() == ["1003-3@e"], "on_delete all: every allowed subscriber"


def test_slow_members_are_reported_not_written() -> None:
    r = Recipients()
    ok, slow = FakeMember("ok"), FakeMember("slow", buffered=5000)
    r.add(ok, view("posts", sub="a"))
    r.add(slow, view("posts", sub="b"))
    _, _, over = r.deliver("posts", [event(1, status="published")], limit=1000)
    assert over == [slow] and slow.frames == [] and ok.ids() == ["1001-1@e"]


def test_discard_and_views_are_forgotten() -> None:
    r = Recipients()
    m = FakeMember("m")
    v = view("posts", sub="alice")
    r.add(m, v)
    assert len(r) == 1 and r.has(m, v) and v in r.audience
    assert not r.discard(m, View.ALL), "wrong view"
    assert r.discard(m, v) and len(r) == 0 and v not in r.audience and r.views == {}


def test_replay_filter_and_undecodable_data() -> None:
    v = view("posts", sub="alice")
    events = [event(1, author="alice"), event(2, author="bob"), ("1003-3@e", b"not json")]
    assert [e[0] for e in visible(v, "filter", events)] == ["1001-1@e"]
    assert visible(View.ALL, "filter", events) == events
    assert decode_event(b"not json") == ("", None)
    hostile = json.dumps({"action": "create", "record": {"author": '" || true || "'}}).encode()
    assert visible(v, "filter", [("1-1@e", hostile)]) == []
