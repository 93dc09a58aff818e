"""The Redis contract between the writer (ingest) and the readers (fanout), in one place.

Key layout: every key of one (database, collection) carries the hash tag ``{<db>/<collection>}``,
so the append script, the dedupe markers, the epoch and the notification channel of a
collection live in one Redis Cluster slot, while collections spread over the masters. Names
are validated before any key is built, so no name can escape its hash tag.

Stored shapes:

- stream entry ``<ms>-<seq>``, one field ``d`` = the event's ``data`` JSON
  (``{"action":...,"record":...}``), pre-encoded so fanout forwards the bytes as they are;
- meta hash: ``e`` epoch, ``q`` last seq, ``ms`` last time (the Lua scripts use the same
  literals; ``tests/unit`` checks they agree);
- notification on the collection's sharded channel: ``<epoch> <ms>-<seq> <data>``.

A client-visible event id is ``<ms>-<seq>@<epoch>``: ``seq`` grows by exactly one per event of
a collection (gaps are visible), ``epoch`` changes when Redis lost the collection's data (stale
ids are recognised). All state is in the id and in Redis, so any node reads any node's ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
NAME_RULE = "1-64 characters of A-Z a-z 0-9 _ . - (not starting with . or -)"

DATA_FIELD = b"d"  # the stream entry's one field: the event's data JSON
META_EPOCH = "e"
META_SEQ = "q"
META_MS = "ms"
META_FIELDS = (META_EPOCH, META_SEQ, META_MS)


class InvalidName(ValueError):
    """A database, collection or group name that the key layout cannot hold."""


def check_name(kind: str, value: object) -> str:
    """Return ``value`` if it is a valid name, else raise InvalidName saying what is allowed."""
    if not isinstance(value, str) or not NAME_RE.match(value):
        shown = (
            repr(value)
            if not isinstance(value, str) or len(value) <= 80
            else repr(value[:80]) + "..."
        )
        raise InvalidName(f"{kind} name {shown} is invalid: use {NAME_RULE}")
    return value


@dataclass(frozen=True, slots=True)
class CollectionKeys:
    """Keys of one (database, collection); build with :func:`collection_keys`."""

    database: str
    collection: str
    prefix: str

    @property
    def tag(self) -> str:
        return f"{{{self.database}/{self.collection}}}"

    @property
    def stream(self) -> str:
        """Redis Stream holding the retained events (source of truth for replay)."""
        return f"{self.prefix}:{self.tag}:s"

    @property
    def meta(self) -> str:
        """Hash with the epoch, the last seq and the last ms (:data:`META_FIELDS`)."""
        return f"{self.prefix}:{self.tag}:m"

    @property
    def channel(self) -> str:
        """Sharded pub/sub channel announcing each appended event to fanout nodes."""
        return f"{self.prefix}:{self.tag}:n"

    def dedupe(self, digest: str) -> str:
        """Marker of one delivered webhook, holding the id it was stored under."""
        return f"{self.prefix}:{self.tag}:d:{digest}"

    def group_registry(self) -> str:
        """Sorted set of consumer group names by last use (ms), for cleanup of idle groups."""
        return f"{self.prefix}:{self.tag}:g"


@dataclass(frozen=True, slots=True)
class RevocationKeys:
    """Revoked users and tokens (``POST /admin/disconnect``), all in one slot (``{revocations}``):
    a sorted set per kind, scored by the unix time the revocation ends; a sharded channel that
    tells every fanout node at once; and a list per request for the nodes' "closed" counts."""

    prefix: str = "vski"

    @property
    def tag(self) -> str:
        return "{revocations}"

    def of(self, kind: str) -> str:
        """``kind`` is ``u`` (user ids) or ``t`` (token ids, the ``jti`` claim)."""
        return f"{self.prefix}:{self.tag}:{kind}"

    @property
    def channel(self) -> str:
        return f"{self.prefix}:{self.tag}:n"

    def replies(self, request: str) -> str:
        return f"{self.prefix}:{self.tag}:r:{request}"


@dataclass(frozen=True, slots=True)
class RegistryKeys:
    """The node registry of the operations view, in one slot (``{nodes}``) so one script reads
    and writes it on Redis Cluster too: a hash of heartbeats (field = node id, value = its JSON)
    and a sorted set of the same ids scored by when each heartbeat expires (Redis time, ms).
    Redis 7.0 has no per-field expiry (HEXPIRE), so the scores emulate it: every write and read
    drops the fields whose score has passed, and both keys expire when no node writes."""

    prefix: str = "vski"

    @property
    def tag(self) -> str:
        return "{nodes}"

    @property
    def beats(self) -> str:
        return f"{self.prefix}:{self.tag}:h"

    @property
    def expiry(self) -> str:
        return f"{self.prefix}:{self.tag}:x"


@dataclass(frozen=True, slots=True)
class ActivityKeys:
    """Recently busy collections (``{activity}``, one slot): per time window a sorted set of
    ``<db>/<collection>`` scored by the events ingest stored in it, and one per database scored
    by collection name; ingest workers add their counts once a second, the window expires."""

    prefix: str = "vski"

    @property
    def tag(self) -> str:
        return "{activity}"

    def window(self, index: int, database: str | None = None) -> str:
        """The window ``index`` (unix seconds // window length), for all databases or one."""
        base = f"{self.prefix}:{self.tag}:w:{index}"
        return base if database is None else f"{base}:{check_name('database', database)}"


def collection_keys(database: str, collection: str, prefix: str = "vski") -> CollectionKeys:
    check_name("database", database)
    check_name("collection", collection)
    return CollectionKeys(database, collection, prefix)


def parse_channel(channel: str, prefix: str = "vski") -> tuple[str, str] | None:
    """Inverse of ``CollectionKeys.channel``: (database, collection) or None if not ours."""
    return _parse_collection_key(channel, "n", prefix)


def parse_meta_key(key: str, prefix: str = "vski") -> tuple[str, str] | None:
    """Inverse of ``CollectionKeys.meta``: (database, collection) or None if not ours."""
    return _parse_collection_key(key, "m", prefix)


def _parse_collection_key(key: str, kind: str, prefix: str) -> tuple[str, str] | None:
    head, tail = prefix + ":{", "}:" + kind
    if not (key.startswith(head) and key.endswith(tail)):
        return None
    inner = key[len(head) : -len(tail)]
    db, sep, coll = inner.partition("/")
    if not sep or not NAME_RE.match(db) or not NAME_RE.match(coll):
        return None
    return db, coll


# ---------------------------------------------------------------- ids

_ID_RE = re.compile(r"^(\d{1,15})-(\d{1,19})@([A-Za-z0-9]{1,32})$")


class InvalidEventId(ValueError):
    """A lastId or ackId that is not an id this service issued."""


def stream_id(ms: int, seq: int) -> str:
    """The stream entry id of an event: ``<ms>-<seq>``."""
    return f"{ms}-{seq}"


def event_id(ms: int, seq: int, epoch: str) -> str:
    """The id clients see: ``<ms>-<seq>@<epoch>``."""
    return f"{ms}-{seq}@{epoch}"


def split_stream_id(sid: str | bytes) -> tuple[int, int]:
    """``b"1700000000000-42"`` -> ``(1700000000000, 42)``."""
    if isinstance(sid, bytes):
        sid = sid.decode()
    ms, _, seq = sid.partition("-")
    return int(ms), int(seq)


@dataclass(frozen=True, slots=True, order=True)
class EventId:
    ms: int
    seq: int
    epoch: str

    @property
    def stream_id(self) -> str:
        return stream_id(self.ms, self.seq)

    def __str__(self) -> str:
        return event_id(self.ms, self.seq, self.epoch)

    @classmethod
    def parse(cls, text: str) -> EventId:
        m = _ID_RE.match(text) if isinstance(text, str) else None
        if m is None:
            raise InvalidEventId(
                f"event id {text!r} is not of the form <ms>-<seq>@<epoch> issued by this service"
            )
        return cls(int(m.group(1)), int(m.group(2)), m.group(3))


# ---------------------------------------------------------------- notifications


@dataclass(frozen=True, slots=True)
class Notification:
    epoch: str
    ms: int
    seq: int
    data: bytes

    @property
    def event_id(self) -> str:
        return event_id(self.ms, self.seq, self.epoch)


class BadNotification(ValueError):
    pass


def parse_notification(payload: bytes) -> Notification:
    try:
        epoch, sid, data = payload.split(b" ", 2)
        ms, _, seq = sid.partition(b"-")
        return Notification(epoch.decode(), int(ms), int(seq), data)
    except (ValueError, UnicodeDecodeError):
        raise BadNotification(f"not an event notification: {payload[:80]!r}") from None
