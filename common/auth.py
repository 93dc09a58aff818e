"""JWT verification shared by both tiers: HS256 (or pinned HS*) with the VSKI master's secret.

- The algorithm list is pinned by configuration; the token's header never chooses it, so
  ``alg: none`` and RS/HS confusion tokens are refused.
- ``exp`` and ``nbf`` are honoured with a small leeway; ``JWT_REQUIRE_EXP`` makes ``exp`` mandatory.
- Several secrets are tried in order (``JWT_SECRET`` then ``JWT_PREVIOUS_SECRETS``) so the master's
  secret can be rotated without downtime.
- Verified tokens are cached (HMAC costs ~30 µs, a cache hit ~0.2 µs; VSKI reuses one trigger
  token for many webhooks). A cached token is still checked against its ``exp`` on every use.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jwt

from common.config import JwtSettings
from common.errors import ServiceError


class AuthError(ServiceError):
    """A token was refused."""


@dataclass(frozen=True, slots=True)
class Claims:
    payload: dict[str, Any]
    expires_at: float | None  # unix seconds, None if the token has no exp

    @property
    def subject(self) -> str | None:
        sub = self.payload.get("sub") or self.payload.get("id")
        return str(sub) if sub is not None else None


MAX_TOKEN_BYTES = 8192


class TokenVerifier:
    def __init__(self, settings: JwtSettings, cache_size: int = 4096) -> None:
        if not settings.secrets:
            raise ValueError("TokenVerifier needs at least one secret")
        self.settings = settings
        self._cache: OrderedDict[str, Claims] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # gthread workers share one verifier between threads

    def verify(self, token: str | None, now: float | None = None) -> Claims:
        """Return the token's claims or raise AuthError saying why it was refused."""
        if not token:
            raise AuthError("missing_token", "no token: send Authorization: Bearer <JWT>")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError("invalid_token", "token is larger than 8 KiB")
        now = time.time() if now is None else now
        with self._lock:
            cached = self._cache.get(token)
            if cached is not None:
                self._cache.move_to_end(token)
        if cached is not None:
            if cached.expires_at is not None and now > cached.expires_at + self.settings.leeway:
                with self._lock:
                    self._cache.pop(token, None)
                raise AuthError("token_expired", "token has expired: get a new one")
            return cached
        claims = self._decode(token, now)
        with self._lock:
            self._cache[token] = claims
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return claims

    def _decode(self, token: str, now: float) -> Claims:
        s = self.settings
        options: Any = {"require": ["exp"] if s.require_exp else []}
        if s.audience is None:
            options["verify_aud"] = False
        last_error: Exception | None = None
        for secret in s.secrets:
            try:
                payload = jwt.decode(
                    token,
                    secret,
                    algorithms=list(s.algorithms),
                    leeway=s.leeway,
                    audience=s.audience,
                    issuer=s.issuer,
                    options=options,
                )
            except jwt.InvalidSignatureError as exc:
                last_error = exc
                continue  # maybe signed with a previous secret
            except jwt.ExpiredSignatureError:
                raise AuthError("token_expired", "token has expired: get a new one") from None
            except jwt.ImmatureSignatureError:
                raise AuthError("token_not_yet_valid", "token is not valid yet (nbf/iat)") from None
            except jwt.MissingRequiredClaimError as exc:
                raise AuthError("invalid_token", f"token lacks the {exc.claim!r} claim") from None
            except jwt.InvalidAlgorithmError:
                raise AuthError(
                    "invalid_token",
                    f"token algorithm is not accepted (accepted: {', '.join(s.algorithms)})",
                ) from None
            except jwt.InvalidTokenError as exc:
                raise AuthError("invalid_token", f"token is invalid: {_reason(exc)}") from None
            exp = payload.get("exp")
            expires_at = float(exp) if isinstance(exp, int | float) else None
            return Claims(payload=payload, expires_at=expires_at)
        raise AuthError("invalid_token", "token signature does not match") from last_error


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text[:120]


def bearer_token(header: str | None) -> str | None:
    """``"Bearer abc"`` -> ``"abc"``; anything else -> None."""
    if not header:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()
