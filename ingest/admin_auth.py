"""Who may call ingest's ``/admin/*`` endpoints: the holder of ``REALTIME_ADMIN_KEY``.

Unset, the admin endpoints do not exist (404, as for any unknown path), so a deployment that
never configured a key exposes nothing. Set, every admin request must carry
``Authorization: Bearer <key>``; the comparison is constant-time (``hmac.compare_digest`` on
digests of equal length), so the time of a refusal says nothing about the key.
"""

from __future__ import annotations

import hashlib
import hmac

import falcon

from common.errors import HTTPRefusal

ADMIN_KEY_ENV = "REALTIME_ADMIN_KEY"


class AdminAuth:
    def __init__(self, key: str | None) -> None:
        self._digest = hashlib.sha256(key.encode()).digest() if key else None

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def check(self, req: falcon.Request) -> None:
        """Raise the refusal for a request without the right key (404 when admin is off)."""
        if self._digest is None:
            raise HTTPRefusal(404, "not_found", f"no such endpoint: {req.path[:100]}")
        header = req.get_header("Authorization") or ""
        scheme, _, value = header.partition(" ")
        offered = hashlib.sha256(value.strip().encode()).digest()
        ok = hmac.compare_digest(offered, self._digest)
        if scheme.lower() != "bearer" or not ok:
            raise HTTPRefusal(
                401,
                "unauthorized",
                "admin endpoints need Authorization: Bearer <REALTIME_ADMIN_KEY>",
                {"WWW-Authenticate": 'Bearer realm="vski-realtime admin"'},
            )
