"""``vski-fanout``: one fanout node (hub + WebSocket server) until SIGTERM/SIGINT, then drain.

With ``--processes N`` / ``FANOUT_PROCESSES`` above 1 this process becomes the supervisor of N
such nodes on one port (``fanout/supervisor.py``); ``--child`` is how it starts each of them.

The default asyncio loop is used on purpose: uvloop measured slower for broadcast on this
machine class (81k vs 97k msgs/s per core, measured).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import resource
import signal
import sys
import time
from dataclasses import dataclass

from common import lifeline
from common.config import ConfigError
from common.logs import get_logger, setup_logging
from common.policy import PolicyError
from common.policy_source import PolicySource, policy_path
from fanout.settings import FanoutSettings, load_fanout, parse_processes

log = get_logger("fanout.main")


def _raise_fd_limit() -> int:
    """Each client is a file descriptor: lift the soft limit to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            return hard
    return soft


@dataclass(frozen=True)
class ChildLink:
    """How a child of the supervisor knows it is one, and notices the supervisor is gone."""

    index: int
    supervisor_pid: int
    lifeline_fd: int


def _watch_supervisor(link: ChildLink, stop: asyncio.Event) -> None:
    """Drain and exit once the supervisor is gone (its lifeline pipe reads EOF); the parent
    death signal (SIGTERM, set in ``main``) is the other way the news arrives."""
    loop = asyncio.get_running_loop()

    def readable() -> None:
        if lifeline.lifeline_cut(link.lifeline_fd):
            loop.remove_reader(link.lifeline_fd)
            log.warning("supervisor_gone", child=link.index)
            stop.set()

    os.set_blocking(link.lifeline_fd, False)
    loop.add_reader(link.lifeline_fd, readable)
    if not lifeline.parent_alive(link.supervisor_pid):
        stop.set()


async def run(
    settings: FanoutSettings, policy: PolicySource, child: ChildLink | None = None
) -> None:
    from common.redis_conn import async_client
    from fanout.access import Access
    from fanout.groups import Groups
    from fanout.hub import Hub, HubSettings
    from fanout.registry import NodeRegistry
    from fanout.revocations import Revocations
    from fanout.server import FanoutServer
    from fanout.subscribe_proxy import ProxySettings, SubscribeProxy
    from fanout.subscriptions import Subscriptions

    hub = Hub(
        HubSettings(
            replay_page=settings.replay_page,
            max_buffer_bytes=settings.max_buffer_bytes,
            max_frame_events=settings.max_frame_events,
            ping_interval=settings.redis_ping_interval,
        ),
        settings.common,
    )
    groups = Groups(hub, settings)
    if child is not None:  # the registry entry and group consumer names say which child
        groups.node_id = f"{groups.node_id}-{child.index}"
    proxy = (
        SubscribeProxy(
            ProxySettings(
                url=settings.proxy_url,
                secret=settings.common.jwt.secrets[0],
                timeout=settings.proxy_timeout,
                max_inflight=settings.proxy_max_inflight,
            )
        )
        if settings.proxy_url
        else None
    )
    subscriptions = Subscriptions(
        hub,
        groups,
        max_per_connection=settings.max_subscriptions,
        prefix=settings.common.redis.key_prefix,
        access=Access(policy.policy, proxy),
    )
    policy.on_change(subscriptions.apply_policy)
    await hub.start()
    subscriptions.start()
    server = FanoutServer(settings, hub, subscriptions)
    revocations = Revocations(
        hub.redis,
        async_client(settings.common.redis),
        settings.common.redis.key_prefix,
        server.close_revoked,
    )
    server.revocations = revocations
    await revocations.start()
    try:
        await server.start()
    except OSError as exc:  # the port is taken (by a process not sharing it): not transient
        log.error("listen_failed", bind=settings.bind, error=str(exc))
        raise SystemExit(2) from None
    index = None if child is None else child.index
    registry = NodeRegistry(settings, settings.registry, server, hub, groups, child=index)
    await registry.start()  # heartbeats for the operations view

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, policy.reload)
    if child is not None:
        _watch_supervisor(child, stop)
    await stop.wait()
    started = time.monotonic()
    log.info("shutdown_requested", drain_s=settings.drain_seconds)
    await registry.mark_draining()  # before the first connection is closed (fanout/registry.py)
    # the whole exit (drain + hub stop) stays within FANOUT_DRAIN_SECONDS
    await server.drain(settings.drain_seconds * 0.8)
    with contextlib.suppress(Exception):
        left = max(0.1, settings.drain_seconds - (time.monotonic() - started) - 0.1)
        async with asyncio.timeout(left):
            await registry.stop()
            await revocations.stop()
            await subscriptions.stop()
            await groups.stop()
            await hub.stop()
            if proxy is not None:
                await proxy.close()
    log.info("stopped", seconds=round(time.monotonic() - started, 3))


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vski-fanout", description="A VSKI realtime fanout node.")
    p.add_argument(
        "--processes",
        default=None,
        help="full nodes sharing FANOUT_BIND under one supervisor: a number or auto "
        "(the usable cores); default FANOUT_PROCESSES, else 1",
    )
    # how the supervisor starts its children (fanout/supervisor.py): not for people
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--supervisor-pid", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--lifeline-fd", type=int, default=-1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    link = None
    if args.child is not None:
        link = ChildLink(args.child, args.supervisor_pid, args.lifeline_fd)
        lifeline.set_parent_death_signal(signal.SIGTERM)  # first: the supervisor may die now
        if not lifeline.parent_alive(link.supervisor_pid):
            raise SystemExit(0)
    try:
        settings = load_fanout()
        if args.processes is not None and link is None:
            settings = dataclasses.replace(settings, processes=parse_processes(args.processes))
    except ConfigError as exc:
        sys.stderr.write(f"vski-fanout: configuration error: {exc}\n")
        raise SystemExit(2) from None
    setup_logging(settings.common.log_format, settings.common.log_level)
    if link is not None:
        import structlog

        structlog.contextvars.bind_contextvars(child=link.index)
    try:
        policy = PolicySource(policy_path(), tier="fanout")
    except PolicyError as exc:
        sys.stderr.write(f"vski-fanout: policy error: {exc}\n")
        raise SystemExit(2) from None
    if link is None and settings.processes > 1:
        from fanout.supervisor import Supervisor

        _raise_fd_limit()  # the children inherit the raised limit
        raise SystemExit(asyncio.run(Supervisor(settings).run()))
    policy.announce()
    fds = _raise_fd_limit()
    log.info("starting", bind=settings.bind, max_connections=settings.max_connections, fd_limit=fds)
    asyncio.run(run(settings, policy, link))


if __name__ == "__main__":
    main()
