"""Where each tier gets its access policy: ``REALTIME_POLICY``, read at start and on SIGHUP.

At start a bad file stops the process (the operator must not run with a policy other than the
one written); on a reload a bad file is refused and logged, and the policy in force stays.
Without ``REALTIME_POLICY`` the open policy applies (today's behaviour) and one warning says so.
The parsing and the decisions are pure (``common/policy``); this is the thin shell that reads
the file and logs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path

from common.logs import get_logger
from common.policy import Policy, PolicyError, parse_policy

POLICY_ENV = "REALTIME_POLICY"

log = get_logger("policy")


def policy_path(env: Mapping[str, str] | None = None) -> str | None:
    value = (os.environ if env is None else env).get(POLICY_ENV, "").strip()
    return value or None


def read_policy(path: str | None) -> tuple[Policy, str]:
    """The policy at ``path`` (open without one) and the text it was compiled from."""
    if path is None:
        return Policy.open(), ""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(path, 1, 1, f"cannot read the policy file: {exc}") from None
    return parse_policy(text, path), text


def policy_label(policy: Policy) -> str:
    """What ``/ready`` says of the policy in force."""
    return "open" if policy.is_open else "enforced"


class PolicySource:
    """The policy in force in this process, and its reloads."""

    def __init__(self, path: str | None, *, tier: str) -> None:
        self.path = path
        self.tier = tier
        self.policy, self.text = read_policy(path)  # PolicyError: the caller stops
        self._listeners: list[Callable[[Policy], None]] = []

    def announce(self) -> None:
        """Log what is in force, once at start."""
        if self.policy.is_open:
            log.warning(
                "policy_open",
                tier=self.tier,
                message=f"{POLICY_ENV} is not set: every valid token may subscribe to every "
                "collection of its database and receives every record",
            )
        else:
            log.info(
                "policy_loaded",
                tier=self.tier,
                path=self.path,
                collections=len(self.policy.collections),
            )

    def on_change(self, listener: Callable[[Policy], None]) -> None:
        self._listeners.append(listener)

    def reload(self) -> bool:
        """Read the file again (SIGHUP). False, with the old policy kept, if it is bad."""
        try:
            policy, text = read_policy(self.path)
        except PolicyError as exc:
            log.error("policy_reload_refused", tier=self.tier, error=str(exc))
            return False
        self.policy, self.text = policy, text
        log.info("policy_reloaded", tier=self.tier, path=self.path, open=policy.is_open)
        for listener in self._listeners:
            try:
                listener(policy)
            except Exception:
                log.exception("policy_listener_failed", tier=self.tier)
        return True
