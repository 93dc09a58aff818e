"""gunicorn worker classes of the ingest tier.

gunicorn's ``gthread`` threads read requests from blocking sockets with no timeout, so a sender
that stops mid-header or mid-body holds a thread forever (the worker's heartbeat keeps running,
so gunicorn never restarts it): ``workers * threads`` stalled senders would stop ingest. The
sync worker does not have this problem (the arbiter kills a worker stuck past ``INGEST_TIMEOUT``).
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from gunicorn.workers.gthread import ThreadWorker


def set_io_timeout(sock: socket.socket, seconds: float) -> None:
    """Kernel-level read/write timeouts (SO_RCVTIMEO/SO_SNDTIMEO): unlike ``settimeout`` they
    survive gunicorn's ``setblocking`` calls; a blocked read then fails with EAGAIN."""
    whole = int(seconds)
    tv = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


class GuardedThreadWorker(ThreadWorker):  # type: ignore[misc]
    """``gthread`` whose client sockets time out after ``INGEST_TIMEOUT`` of silence on any one
    read or write, so a stalled sender costs a thread at most that long. (A sender that trickles
    a byte at a time is not caught; put a proxy with request timeouts in front, as deploy/ does.)
    Idle keep-alive connections wait in gunicorn's poller, not in a thread, and are unaffected."""

    def enqueue_req(self, conn: Any) -> None:
        if not getattr(conn, "vski_guarded", False):
            set_io_timeout(conn.sock, float(self.cfg.timeout))
            conn.vski_guarded = True
        super().enqueue_req(conn)
