"""The dev stack's state folder (``./.vski`` by default): the generated secret, Redis data, logs.

Development only (``VSKI_DEV=true`` semantics): when ``JWT_SECRET`` is not set, a random secret
is generated once and kept in ``<state>/jwt_secret`` (mode 0600), so tokens minted by
``vski-realtime token`` stay valid across restarts of ``vski-realtime dev``.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import time
from pathlib import Path
from typing import IO, Any

import jwt

DEFAULT_STATE_DIR = ".vski"
TOKEN_TTL_SECONDS = 24 * 3600


def state_dir(explicit: str | None = None) -> Path:
    """``--state-dir``, else ``VSKI_STATE_DIR``, else ``./.vski``."""
    return Path(explicit or os.environ.get("VSKI_STATE_DIR") or DEFAULT_STATE_DIR).resolve()


def _stored(state: Path, env_name: str, file_name: str, what: str, create: bool) -> tuple[str, str]:
    """A secret from ``env_name``, else from ``<state>/<file_name>``, generated there once (mode
    0600) so tokens and keys stay valid across restarts of ``vski-realtime dev``."""
    env = os.environ.get(env_name, "").strip()
    if env:
        return env, env_name
    path = state / file_name
    if path.exists():
        return path.read_text().strip(), str(path)
    if not create:
        raise LookupError(
            f"no {what}: set {env_name} or run `vski-realtime dev` once (it creates {path})"
        )
    state.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
    return value, str(path)


def dev_secret(state: Path, *, create: bool = True) -> tuple[str, str]:
    """The JWT secret and where it came from: ``JWT_SECRET``, else the stored dev secret."""
    return _stored(state, "JWT_SECRET", "jwt_secret", "secret", create)


def admin_key(state: Path, *, create: bool = True) -> tuple[str, str]:
    """The key of ingest's /admin/* endpoints: ``REALTIME_ADMIN_KEY``, else a stored one."""
    return _stored(state, "REALTIME_ADMIN_KEY", "admin_key", "admin key", create)


# dev tools sign webhooks as this subject; devstack/example-policy.toml's [webhooks] sender
# rule accepts it, as a real policy accepts the VSKI master's trigger tokens
WEBHOOK_SUB = "vski-master"


def mint_token(
    secret: str, *, sub: str = "dev", ttl: float = TOKEN_TTL_SECONDS, **claims: Any
) -> str:
    """A development token signed like the VSKI master signs user and trigger tokens (HS256)."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + int(ttl), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def write_stack_info(state: Path, info: dict[str, Any]) -> Path:
    """Where the running stack is (URLs, ports), so ``post``/``listen`` find it without flags."""
    state.mkdir(parents=True, exist_ok=True)
    path = state / "stack.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info, indent=2))
    tmp.replace(path)
    return path


def read_stack_info(state: Path) -> dict[str, Any]:
    try:
        data = json.loads((state / "stack.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def clear_stack_info(state: Path) -> None:
    (state / "stack.json").unlink(missing_ok=True)


class StateBusy(RuntimeError):
    """Another ``vski-realtime dev`` uses this state folder: two Redis on one AOF corrupt it."""


def lock_state(state: Path) -> IO[str]:
    """Hold ``<state>/dev.lock`` for the supervisor's lifetime (released by the OS on exit)."""
    state.mkdir(parents=True, exist_ok=True)
    f = (state / "dev.lock").open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        owner = f.read().strip() or "?"
        f.close()
        raise StateBusy(
            f"another `vski-realtime dev` (pid {owner}) is using {state}: stop it, or pass "
            "--state-dir for a separate stack"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    return f
