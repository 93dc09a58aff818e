"""Settings from environment variables, validated once at start with errors that say what to set.

Both tiers read the shared settings (``REDIS_URL``, ``REDIS_CLUSTER``, ``JWT_SECRET`` ...); each
tier adds its own with a prefix (``INGEST_``, ``FANOUT_``). The README's configuration reference
lists every variable read here.
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping
from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable and what to set."""


class Env:
    """Typed reads of environment variables; every error names the variable."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def str(self, name: builtins.str, default: builtins.str) -> builtins.str:
        return self.env.get(name, default).strip() or default

    def opt(self, name: builtins.str) -> builtins.str | None:
        value = self.env.get(name, "").strip()
        return value or None

    def int(
        self, name: builtins.str, default: builtins.int, *, minimum: builtins.int = 0
    ) -> builtins.int:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
        if value < minimum:
            raise ConfigError(f"{name}={value} must be at least {minimum}")
        return value

    def float(
        self, name: builtins.str, default: builtins.float, *, minimum: builtins.float = 0.0
    ) -> builtins.float:
        raw = self.env.get(name, "").strip()
        if not raw:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if value < minimum:
            raise ConfigError(f"{name}={value} must be at least {minimum}")
        return value

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        raw = self.env.get(name, "").strip().lower()
        if not raw:
            return default
        if raw in ("1", "true", "yes", "on"):
            return True
        if raw in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r} must be true or false")

    def list(self, name: builtins.str) -> builtins.list[builtins.str]:
        raw = self.env.get(name, "")
        return [item.strip() for item in raw.split(",") if item.strip()]

    def bind(
        self, name: builtins.str, default: builtins.str, *, unix: builtins.bool = False
    ) -> builtins.str:
        """``host:port`` (or ``unix:/path`` where ``unix``) to listen on."""
        value = self.str(name, default)
        if unix and value.startswith("unix:"):
            return value
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            example = f"host:port (e.g. {default})" + (" or unix:/path" if unix else "")
            raise ConfigError(f"{name}={value!r} must be {example}")
        return value


@dataclass(frozen=True)
class RedisSettings:
    url: str = "redis://127.0.0.1:6379/0"
    cluster: bool = False
    # fanout only: read streams from this (replica) Redis instead of REDIS_URL; writes stay on url
    read_url: str | None = None
    key_prefix: str = "vski"
    socket_timeout: float = 2.0
    connect_timeout: float = 2.0
    # TCP keepalive on every Redis connection: a peer that vanished without FIN/RST (a
    # partition, a host powered off) is found by the kernel even on an idle connection
    keepalive_idle: int = 10
    keepalive_interval: int = 5
    keepalive_count: int = 3
    # TCP_USER_TIMEOUT (ms): unacknowledged data this long drops the connection (0 = kernel's)
    tcp_user_timeout_ms: int = 20_000


@dataclass(frozen=True)
class JwtSettings:
    secrets: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ("HS256",)
    leeway: float = 30.0
    require_exp: bool = False
    audience: str | None = None
    issuer: str | None = None
    max_age: float = 86_400.0  # JWT_MAX_AGE_SECONDS: how long a token may live (revocations last)


@dataclass(frozen=True)
class RetentionSettings:
    max_age_ms: int = 3_600_000
    max_len: int = 10_000
    # how long a collection's epoch and sequence outlive its last event; past it, old lastIds
    # are reported as not recovered instead of being compared with a new sequence
    meta_ttl_ms: int = 7 * 24 * 3_600_000


@dataclass(frozen=True)
class CommonSettings:
    redis: RedisSettings = field(default_factory=RedisSettings)
    jwt: JwtSettings = field(default_factory=JwtSettings)
    retention: RetentionSettings = field(default_factory=RetentionSettings)
    log_format: str = "json"  # json | console
    log_level: str = "info"
    dev_mode: bool = False


def load_common(
    env: Mapping[str, str] | None = None, *, require_secret: bool = True
) -> CommonSettings:
    e = Env(os.environ if env is None else env)
    dev_mode = e.bool("VSKI_DEV", False)
    secrets = [s for s in [e.opt("JWT_SECRET"), *e.list("JWT_PREVIOUS_SECRETS")] if s]
    if require_secret and not secrets:
        raise ConfigError(
            "JWT_SECRET is not set: set it to the HS256 secret of the VSKI master "
            "(the one it signs user tokens and webhook triggers with)"
        )
    algorithms = tuple(e.list("JWT_ALGORITHMS") or ["HS256"])
    for alg in algorithms:
        if alg not in ("HS256", "HS384", "HS512"):
            raise ConfigError(
                f"JWT_ALGORITHMS contains {alg!r}: only HS256, HS384 and HS512 are supported "
                "(the VSKI master signs with a shared secret)"
            )
    log_format = e.str("LOG_FORMAT", "console" if dev_mode else "json")
    if log_format not in ("json", "console"):
        raise ConfigError(f"LOG_FORMAT={log_format!r} must be json or console")
    log_level = e.str("LOG_LEVEL", "info").lower()
    if log_level not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"LOG_LEVEL={log_level!r} must be debug, info, warning or error")
    url = e.str("REDIS_URL", "redis://127.0.0.1:6379/0")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"REDIS_URL={url!r} must start with redis://, rediss:// or unix://")
    read_url = e.opt("REDIS_READ_URL")
    if read_url and not read_url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"REDIS_READ_URL={read_url!r} must start with redis:// or rediss://")
    prefix = e.str("REDIS_KEY_PREFIX", "vski")
    if not prefix.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"REDIS_KEY_PREFIX={prefix!r} must be letters, digits, - or _")
    return CommonSettings(
        redis=RedisSettings(
            url=url,
            cluster=e.bool("REDIS_CLUSTER", False),
            read_url=read_url,
            key_prefix=prefix,
            socket_timeout=e.float("REDIS_TIMEOUT", 2.0, minimum=0.05),
            connect_timeout=e.float("REDIS_CONNECT_TIMEOUT", 2.0, minimum=0.05),
            keepalive_idle=e.int("REDIS_KEEPALIVE_IDLE", 10, minimum=1),
            keepalive_interval=e.int("REDIS_KEEPALIVE_INTERVAL", 5, minimum=1),
            keepalive_count=e.int("REDIS_KEEPALIVE_COUNT", 3, minimum=1),
            tcp_user_timeout_ms=int(e.float("REDIS_TCP_USER_TIMEOUT", 20.0) * 1000),
        ),
        jwt=JwtSettings(
            secrets=tuple(secrets),
            algorithms=algorithms,
            leeway=e.float("JWT_LEEWAY", 30.0),
            max_age=e.float("JWT_MAX_AGE_SECONDS", 86_400.0, minimum=1),
            require_exp=e.bool("JWT_REQUIRE_EXP", False),
            audience=e.opt("JWT_AUDIENCE"),
            issuer=e.opt("JWT_ISSUER"),
        ),
        retention=RetentionSettings(
            max_age_ms=int(e.float("RETENTION_SECONDS", 3600, minimum=1) * 1000),
            max_len=e.int("RETENTION_MAX_EVENTS", 10_000, minimum=1),
            meta_ttl_ms=int(e.float("EPOCH_TTL_SECONDS", 7 * 24 * 3600, minimum=1) * 1000),
        ),
        log_format=log_format,
        log_level=log_level,
        dev_mode=dev_mode,
    )
