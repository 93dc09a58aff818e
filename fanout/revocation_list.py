"""Which users and tokens are revoked, and until when: the pure part of revocation at a node.

Fed from Redis (``fanout/revocations.py``), asked by the server before every upgrade and when
a revocation arrives. Entries only ever extend (a longer revocation wins) and drop out when
their time is up, so a Redis that lost its data (restarted without persistence) cannot lift a
revocation this node already knows.
"""

from __future__ import annotations

from collections.abc import Iterable

USER = "u"
TOKEN = "t"


class RevocationList:
    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until: dict[str, dict[str, float]] = {USER: {}, TOKEN: {}}

    def __len__(self) -> int:
        return sum(len(v) for v in self._until.values())

    def add(self, kind: str, ident: str, until: float) -> bool:
        """Record a revocation; False if ``kind`` is unknown."""
        table = self._until.get(kind)
        if table is None:
            return False
        if until > table.get(ident, 0.0):
            table[ident] = until
        return True

    def merge(self, kind: str, entries: Iterable[tuple[str, float]]) -> None:
        for ident, until in entries:
            self.add(kind, ident, until)

    def revoked(self, users: Iterable[str], jti: str | None, now: float) -> bool:
        """Is any of the token's user ids, or its ``jti``, revoked at ``now``?"""
        table = self._until[USER]
        if any(table.get(u, 0.0) > now for u in users):
            return True
        return jti is not None and self._until[TOKEN].get(jti, 0.0) > now

    def prune(self, now: float) -> None:
        for table in self._until.values():
            for ident in [i for i, until in table.items() if until <= now]:
                del table[ident]
