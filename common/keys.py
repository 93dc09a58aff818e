"""Redis key layout: everything about one (database, collection) lives in one cluster slot.

Every key of a collection carries the hash tag ``{<db>/<collection>}``, so the append script, the
dedupe markers, the epoch and the notification channel of one collection are in one slot (a Lua
script and a transaction may touch them together on Redis Cluster), while different collections
hash to different slots and spread over the masters.

Names are validated before any key is built, so no name can escape its hash tag or collide with
another collection's keys: no braces, no slash, no colon, no whitespace, bounded length.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
NAME_RULE = "1-64 characters of A-Z a-z 0-9 _ . - (not starting with . or -)"


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
        """Hash with ``epoch`` (changes when Redis lost the data), ``seq`` and ``ms``."""
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


def collection_keys(database: str, collection: str, prefix: str = "vski") -> CollectionKeys:
    check_name("database", database)
    check_name("collection", collection)
    return CollectionKeys(database, collection, prefix)


def parse_channel(channel: str, prefix: str = "vski") -> tuple[str, str] | None:
    """Inverse of ``CollectionKeys.channel``: (database, collection) or None if not ours."""
    head = prefix + ":{"
    if not (channel.startswith(head) and channel.endswith("}:n")):
        return None
    inner = channel[len(head) : -3]
    db, sep, coll = inner.partition("/")
    if not sep or not NAME_RE.match(db) or not NAME_RE.match(coll):
        return None
    return db, coll
