from __future__ import annotations

import time
from typing import Any

import jwt

SECRET = "test-secret-that-is-long-enough-for-hs256!"


def make_token(
    secret: str = SECRET, *, ttl: float | None = 3600, alg: str = "HS256", **claims: Any
) -> str:
    payload: dict[str, Any] = {"sub": "user_1", "iat": int(time.time()), **claims}
    if ttl is not None:
        payload.setdefault("exp", int(time.time() + ttl))
    return jwt.encode(payload, secret, algorithm=alg)
