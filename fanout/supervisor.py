"""``vski-fanout --processes N``: N full fanout nodes on one port, under this supervisor.

Each child is today's single node (``fanout.__main__.run``), started as ``python -m fanout
--child i``; all of them bind ``FANOUT_BIND`` with ``SO_REUSEPORT``, so the kernel spreads new
connections over the children. Nothing on the delivery path crosses processes: every child
reads Redis and serves its own clients, as separate nodes on separate hosts do.

The supervisor:

- restarts a child that exits unexpectedly, after a backoff (:class:`RestartPlan`); the
  child's clients reconnect (the SDK does) and land on the others or on the new child, and
  resume with their lastId;
- on SIGTERM/SIGINT sends SIGTERM to every child (each drains within ``FANOUT_DRAIN_SECONDS``)
  and SIGKILLs any child still there after that time and a short grace;
- forwards SIGHUP (policy reload) to every child;
- owns ``PROMETHEUS_MULTIPROC_DIR`` (a temporary folder where the children write the samples
  that ``/metrics`` sums), marks each dead child in it, and removes it at exit; the folder of a
  supervisor that was SIGKILLed is removed by the next supervisor that starts on the host.

No child outlives the supervisor, even a SIGKILLed one: each child asks the kernel for SIGTERM
when its parent dies and watches a lifeline pipe whose write end only the supervisor holds
(``common/lifeline.py``); either way it drains and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from common.backoff import Backoff
from common.logs import get_logger
from fanout.settings import FanoutSettings

log = get_logger("fanout.supervisor")

EXIT_CONFIG = 2  # a child that exits with this found bad configuration: restarting cannot help
RESTART_BASE_SECONDS = 0.1  # first wait before a crashed child is started again
KILL_GRACE_SECONDS = 0.5  # after FANOUT_DRAIN_SECONDS, a child still running is SIGKILLed
METRICS_DIR_PREFIX = "vski-fanout-metrics-"  # then the supervisor's pid and a random part


class RestartPlan:
    """When to start a crashed child again: quickly after a crash of a child that ran well, and
    with growing waits (up to ``cap``) while it keeps crashing soon after its start, so a child
    that cannot start does not spin a core."""

    __slots__ = ("backoff", "reset_after")

    def __init__(self, cap: float, reset_after: float) -> None:
        self.backoff = Backoff(base=min(RESTART_BASE_SECONDS, cap), cap=cap)
        self.reset_after = reset_after

    def after_exit(self, lived_seconds: float) -> float:
        """The wait before the next start of a child that ran ``lived_seconds``."""
        if lived_seconds >= self.reset_after:
            self.backoff.reset()
        return self.backoff.next()


@dataclass
class Child:
    index: int
    proc: asyncio.subprocess.Process
    lifeline: int  # the write end of the lifeline pipe: closing it tells the child to leave
    started: float

    @property
    def pid(self) -> int:
        return self.proc.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def remove_stale_metrics_dirs(parent: str) -> list[str]:
    """Remove the metrics folders of supervisors that are gone (a SIGKILL leaves one behind)."""
    removed = []
    with contextlib.suppress(OSError):
        for name in os.listdir(parent):
            pid_text = name.removeprefix(METRICS_DIR_PREFIX).partition("-")[0]
            stale = pid_text.isdigit() and not _alive(int(pid_text))
            if name.startswith(METRICS_DIR_PREFIX) and stale:
                shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
                removed.append(name)
    return removed


def child_command(index: int, supervisor_pid: int, lifeline_fd: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fanout",
        "--child",
        str(index),
        "--supervisor-pid",
        str(supervisor_pid),
        "--lifeline-fd",
        str(lifeline_fd),
    ]


class Supervisor:
    def __init__(
        self,
        settings: FanoutSettings,
        command: Callable[[int, int, int], list[str]] = child_command,
    ) -> None:
        self.settings = settings
        self.count = settings.processes
        self.command = command
        self.children: dict[int, Child] = {}
        self.exit_code = 0
        self.restarts = 0
        self.metrics_dir = ""
        self._stop = asyncio.Event()
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        """Start the children, keep them running until SIGTERM/SIGINT, then drain them all."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self._forward, signal.SIGHUP)
        remove_stale_metrics_dirs(tempfile.gettempdir())
        self.metrics_dir = tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")
        log.info(
            "supervisor_starting",
            processes=self.count,
            bind=self.settings.bind,
            metrics_dir=self.metrics_dir,
        )
        keepers = [asyncio.create_task(self._keep(i), name=f"child-{i}") for i in range(self.count)]
        try:
            await self._stop.wait()
            await self._shutdown(keepers)
        finally:
            for task in keepers:
                task.cancel()
            for child in list(self.children.values()):
                self._kill(child)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)
        return self.exit_code

    def stop(self) -> None:
        """Begin the shutdown: no child is restarted from now on."""
        self._stopping = True
        self._stop.set()

    async def _keep(self, index: int) -> None:
        """One child slot: start it, wait for its exit, start it again after the plan's wait."""
        plan = RestartPlan(self.settings.restart_max_seconds, self.settings.restart_reset_seconds)
        while not self._stopping:
            child = await self._spawn(index)
            code = await child.proc.wait()
            self._reap(child)
            if self._stopping:
                return
            lived = time.monotonic() - child.started
            if code == EXIT_CONFIG:
                log.error("child_config_error", child=index, pid=child.pid, code=code)
                self.exit_code = EXIT_CONFIG
                self.stop()
                return
            delay = plan.after_exit(lived)
            self.restarts += 1
            log.warning(
                "child_exited",
                child=index,
                pid=child.pid,
                code=code,
                lived_s=round(lived, 3),
                restart_in_s=round(delay, 3),
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _spawn(self, index: int) -> Child:
        read_end, write_end = os.pipe()
        env = dict(os.environ)
        env["PROMETHEUS_MULTIPROC_DIR"] = self.metrics_dir
        env["FANOUT_PROCESSES"] = str(self.count)  # the children bind with SO_REUSEPORT
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command(index, os.getpid(), read_end),
                env=env,
                pass_fds=(read_end,),
            )
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        child = Child(index, proc, write_end, time.monotonic())
        self.children[index] = child
        cpu = self._pin(proc.pid, index) if self.settings.pin_children else None
        log.info("child_started", child=index, pid=proc.pid, cpu=cpu)
        if self._stopping:  # a shutdown began while this child was being started
            self._signal(child, signal.SIGTERM)
        return child

    @staticmethod
    def _pin(pid: int, index: int) -> int | None:
        """FANOUT_PIN_CHILDREN: child ``index`` runs on the index-th usable core only (set at
        once, before the child has started its loop and threads)."""
        cpus = sorted(os.sched_getaffinity(0))
        cpu = cpus[index % len(cpus)]
        try:
            os.sched_setaffinity(pid, {cpu})
        except OSError as exc:
            log.warning("child_pin_failed", child=index, cpu=cpu, error=str(exc))
            return None
        return cpu

    def _reap(self, child: Child) -> None:
        from prometheus_client import multiprocess

        if self.children.get(child.index) is child:
            del self.children[child.index]
        with contextlib.suppress(OSError):
            os.close(child.lifeline)
        # a dead child's live gauges (connections, subscriptions...) leave the sums
        multiprocess.mark_process_dead(child.pid, self.metrics_dir)  # type: ignore[no-untyped-call]

    async def _shutdown(self, keepers: list[asyncio.Task[None]]) -> None:
        drain = self.settings.drain_seconds
        log.info("supervisor_draining", children=len(self.children), drain_s=drain)
        self._forward(signal.SIGTERM)
        started = time.monotonic()
        _, pending = await asyncio.wait(keepers, timeout=drain + KILL_GRACE_SECONDS)
        if pending:
            left = list(self.children.values())
            log.warning("supervisor_drain_timeout_kill", children=[c.index for c in left])
            for child in left:
                self._kill(child)
            await asyncio.wait(pending, timeout=2.0)
        log.info("supervisor_stopped", seconds=round(time.monotonic() - started, 3))

    # ------------------------------------------------------------------ signals

    def _forward(self, sig: int) -> None:
        for child in list(self.children.values()):
            self._signal(child, sig)
        if sig == signal.SIGHUP:
            log.info("supervisor_reload_forwarded", children=len(self.children))

    @staticmethod
    def _signal(child: Child, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(sig)

    def _kill(self, child: Child) -> None:
        self._signal(child, signal.SIGKILL)
