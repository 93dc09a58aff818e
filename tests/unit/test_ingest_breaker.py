"""The ingest circuit breaker (``ingest/breaker.py``) and the settings that shape the network
timeouts: pure, with a fake probe instead of Redis."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from common.config import load_common
from common.redis_conn import keepalive_kwargs
from fanout.settings import load_fanout
from ingest.breaker import Breaker, CircuitOpen
from ingest.settings import load_ingest


class Probe:
    """Fails until ``healthy`` is set; counts its calls."""

    def __init__(self) -> None:
        self.healthy = threading.Event()
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        if not self.healthy.is_set():
            raise ConnectionError("still unreachable")


def wait(predicate: object, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.005)
    return False


def test_closed_breaker_lets_calls_through() -> None:
    breaker = Breaker("main", Probe(), 0.01)
    breaker.check()  # does not raise
    assert not breaker.is_open


def test_trip_refuses_at_once_until_the_probe_succeeds() -> None:
    probe = Probe()
    breaker = Breaker("main", probe, 0.01)
    breaker.trip(TimeoutError("no answer"))
    started = time.monotonic()
    with pytest.raises(CircuitOpen) as exc:
        breaker.check()
    assert time.monotonic() - started < 0.01  # refused without waiting for anything
    assert exc.value.retry_after == 1
    assert "TimeoutError" in str(exc.value)
    assert wait(lambda: probe.calls >= 3)  # probing in the background meanwhile
    assert breaker.is_open
    probe.healthy.set()
    assert wait(lambda: not breaker.is_open)
    breaker.check()


def test_repeated_trips_start_one_probe() -> None:
    probe = Probe()
    breaker = Breaker("main", probe, 0.05)
    for _ in range(50):
        breaker.trip(ConnectionError("refused"))
    probers = [t for t in threading.enumerate() if t.name == "breaker:main"]
    assert len(probers) == 1
    probe.healthy.set()
    assert wait(lambda: not breaker.is_open)
    assert wait(lambda: not any(t.name == "breaker:main" for t in threading.enumerate()))


def test_a_trip_after_healing_probes_again() -> None:
    probe = Probe()
    breaker = Breaker("main", probe, 0.01)
    probe.healthy.set()
    breaker.trip(ConnectionError("blip"))
    assert wait(lambda: not breaker.is_open)
    probe.healthy.clear()
    breaker.trip(ConnectionError("again"))
    assert breaker.is_open
    probe.healthy.set()
    assert wait(lambda: not breaker.is_open)


def test_retry_after_follows_the_probe_interval() -> None:
    assert Breaker("x", Probe(), 0.2).retry_after == 1
    assert Breaker("x", Probe(), 2.5).retry_after == 3


def test_network_settings_defaults_and_validation() -> None:
    env = {"JWT_SECRET": "s"}
    redis = load_common(env).redis
    assert (redis.keepalive_idle, redis.keepalive_interval, redis.keepalive_count) == (10, 5, 3)
    assert redis.tcp_user_timeout_ms == 20_000
    assert load_ingest(env).breaker_probe_seconds == 1.0
    assert load_fanout(env).redis_ping_interval == 5.0
    tuned = {
        **env,
        "REDIS_KEEPALIVE_IDLE": "3",
        "REDIS_TCP_USER_TIMEOUT": "0",
        "INGEST_BREAKER_PROBE_SECONDS": "0.25",
        "FANOUT_REDIS_PING_INTERVAL": "0.5",
    }
    assert load_common(tuned).redis.keepalive_idle == 3
    assert load_ingest(tuned).breaker_probe_seconds == 0.25
    assert load_fanout(tuned).redis_ping_interval == 0.5
    options = keepalive_kwargs(load_common(tuned).redis)["socket_keepalive_options"]
    if hasattr(socket, "TCP_KEEPIDLE"):
        assert options[socket.TCP_KEEPIDLE] == 3
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        assert socket.TCP_USER_TIMEOUT not in options  # 0: the kernel's default
    from common.config import ConfigError

    for bad in ({"REDIS_KEEPALIVE_COUNT": "0"}, {"INGEST_BREAKER_PROBE_SECONDS": "0"}):
        with pytest.raises(ConfigError):
            load_ingest({**env, **bad})
