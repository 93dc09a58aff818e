"""Real network faults for the reliability suite: namespaces, veth pairs, link down, ``tbf``, and a
TCP relay that adds latency (this kernel has no ``netem``).

A :class:`NetNamespace` is a network namespace joined to this one by a veth pair; the near end
(here) is ``127.77.N.1``, the far end (inside) ``127.77.N.2``, a /30 with ``route_localnet`` on
both ends so loopback-range addresses route over the pair. Run a server inside with
:meth:`NetNamespace.command` as a command prefix (``ip netns exec <name>``), and reach it at
``ns.far``. Static neighbour entries on both ends mean that a downed link loses packets
silently, as a real partition does (no ARP failure turning into an instant "no route").

Faults:

- :meth:`NetNamespace.blackhole` takes the **far** end down: the near end keeps its address
  and route, so writes are buffered and retransmitted, reads wait, new connections hang: a
  partition that answers nothing. Taking the near end down would remove the route and make the
  kernel fail at once, which is not a blackhole.
- :meth:`NetNamespace.rate_limit` puts a ``tbf`` on the near end's egress: traffic from here to
  the namespace slows to the rate (a slow client path).
- :class:`DelayRelay` forwards a local port to a target, holding every chunk ``delay`` seconds
  each way.

Cleanup: every name carries the prefix ``vnt`` and a slot number N held by an ``flock`` under
``/tmp/vski-netns/``. Taking a slot first removes whatever a crashed run left under its name
(processes inside, the namespace, the link); leaving it, by the context manager or at exit,
removes them again. :func:`unavailable` gives the reason to skip where namespaces cannot be
made (not root, no ``ip``).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

PREFIX = "vnt"
LOCK_DIR = Path("/tmp/vski-netns")
SLOTS = range(10, 250)  # the N of 127.77.N.0/30


def _ip(*args: str, ns: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = ["ip", *(["netns", "exec", ns, "ip"] if ns else []), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=check)


def _sysctl(name: str, value: str, ns: str | None = None) -> None:
    cmd = [*(["ip", "netns", "exec", ns] if ns else []), "sysctl", "-qw", f"{name}={value}"]
    subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=True)


_checked: list[str | None] = []  # the one answer of unavailable(), once asked


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (a skip reason), or None if they can."""
    if _checked:
        return _checked[0]
    reason: str | None = None
    if os.geteuid() != 0:
        reason = "network namespaces need root"
    elif shutil.which("ip") is None or shutil.which("sysctl") is None:
        reason = "`ip` (iproute2) or `sysctl` is not installed"
    else:
        try:
            with NetNamespace.open("probe"):
                pass
        except Exception as exc:  # any failure to build one is a reason to skip, shown as such
            reason = f"cannot create a network namespace with a veth pair: {exc}"[:300]
    _checked.append(reason)
    return reason


def has_tbf() -> bool:
    return shutil.which("tc") is not None


def _link_mac(dev: str, ns: str | None = None) -> str:
    out = _ip("-o", "link", "show", dev, ns=ns).stdout
    return out.split("link/ether", 1)[1].split()[0]


@dataclass
class NetNamespace:
    """One namespace, its veth pair and its slot; see the module docstring."""

    slot: int
    label: str
    _lock: IO[bytes] | None = field(default=None, repr=False)
    _down: bool = False

    @property
    def name(self) -> str:
        return f"{PREFIX}{self.slot}"

    @property
    def near_dev(self) -> str:
        return f"{PREFIX}{self.slot}a"

    @property
    def far_dev(self) -> str:
        return f"{PREFIX}{self.slot}b"

    @property
    def near(self) -> str:
        """This side's address on the pair (what the namespace sees us as)."""
        return f"127.77.{self.slot}.1"

    @property
    def far(self) -> str:
        """The namespace's address: bind servers inside to it, connect to it from here."""
        return f"127.77.{self.slot}.2"

    def command(self) -> list[str]:
        """The prefix that runs a command inside (it execs the command: the pid is its own)."""
        return ["ip", "netns", "exec", self.name]

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    @contextlib.contextmanager
    def open(cls, label: str) -> Iterator[NetNamespace]:
        """A new namespace on a free slot; everything it made is removed on exit."""
        ns = cls._claim(label)
        try:
            ns._build()
            yield ns
        finally:
            ns.remove()

    @classmethod
    def _claim(cls, label: str) -> NetNamespace:
        LOCK_DIR.mkdir(parents=True, exist_ok=True)
        for slot in SLOTS:
            fh = (LOCK_DIR / f"{slot}.lock").open("wb")
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            ns = cls(slot, label, fh)
            ns._clear()  # a previous holder of this slot died without cleaning up
            _LIVE.add(ns)
            return ns
        raise RuntimeError("no free network-namespace slot")

    def _build(self) -> None:
        _ip("netns", "add", self.name)
        _ip("link", "add", self.near_dev, "type", "veth", "peer", "name", self.far_dev)
        _ip("link", "set", self.far_dev, "netns", self.name)
        _ip("addr", "add", f"{self.near}/30", "dev", self.near_dev)
        _ip("addr", "add", f"{self.far}/30", "dev", self.far_dev, ns=self.name)
        _sysctl(f"net.ipv4.conf.{self.near_dev}.route_localnet", "1")
        _sysctl("net.ipv4.conf.all.route_localnet", "1", ns=self.name)
        _sysctl(f"net.ipv4.conf.{self.far_dev}.route_localnet", "1", ns=self.name)
        _ip("link", "set", "lo", "up", ns=self.name)
        _ip("link", "set", self.near_dev, "up")
        _ip("link", "set", self.far_dev, "up", ns=self.name)
        near_mac, far_mac = _link_mac(self.near_dev), _link_mac(self.far_dev, self.name)
        # permanent neighbours: a downed link drops packets silently instead of failing ARP
        _ip(
            "neigh", "replace", self.far, "lladdr", far_mac, "dev", self.near_dev,
            "nud", "permanent",
        )  # fmt: skip
        _ip(
            "neigh", "replace", self.near, "lladdr", near_mac, "dev", self.far_dev,
            "nud", "permanent", ns=self.name,
        )  # fmt: skip

    def pids(self) -> list[int]:
        out = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, timeout=20
        ).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def _clear(self) -> None:
        """Kill what runs inside, then remove the namespace and the link (if any exist)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _ip("netns", "del", self.name, check=False)
        _ip("link", "del", self.near_dev, check=False)

    def remove(self) -> None:
        self._clear()
        _LIVE.discard(self)
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # ------------------------------------------------------------------ faults

    def blackhole(self) -> None:
        """Take the far end down: the namespace answers nothing, nothing fails here at once."""
        _ip("link", "set", self.far_dev, "down", ns=self.name)
        self._down = True

    def heal(self) -> None:
        _ip("link", "set", self.far_dev, "up", ns=self.name)
        self._down = False

    @contextlib.contextmanager
    def partitioned(self) -> Iterator[None]:
        self.blackhole()
        try:
            yield
        finally:
            self.heal()

    def rate_limit(self, rate: str, burst: str = "16kb", latency: str = "400ms") -> None:
        """A ``tbf`` on the near end's egress (here -> namespace), e.g. ``rate="64kbit"``."""
        subprocess.run(
            ["tc", "qdisc", "replace", "dev", self.near_dev, "root", "tbf", "rate", rate,
             "burst", burst, "latency", latency],
            capture_output=True, text=True, timeout=20, check=True,
        )  # fmt: skip

    def unlimit(self) -> None:
        subprocess.run(
            ["tc", "qdisc", "del", "dev", self.near_dev, "root"],
            capture_output=True, text=True, timeout=20, check=False,
        )  # fmt: skip

    def sysctl(self, name: str, value: str) -> None:
        """Set a per-namespace sysctl inside (e.g. ``net.ipv4.tcp_rmem``): this side keeps its."""
        _sysctl(name, value, ns=self.name)

    def __hash__(self) -> int:
        return self.slot


_LIVE: set[NetNamespace] = set()


@atexit.register
def _remove_live() -> None:  # a run that dies between tests still leaves nothing behind
    for ns in list(_LIVE):
        with contextlib.suppress(Exception):
            ns.remove()


@contextlib.contextmanager
def net_namespace(label: str) -> Iterator[NetNamespace]:
    with NetNamespace.open(label) as ns:
        yield ns


# ---------------------------------------------------------------------- delay relay


class DelayRelay:
    """Forwards ``127.0.0.1:<port>`` to ``target`` holding each chunk ``delay`` seconds each way
    (order kept): added latency without ``netem``. Runs its own event loop in a thread; the
    delay can be changed while it runs. ``connections`` counts the pairs open now."""

    def __init__(self, target: tuple[str, int], delay: float = 0.0) -> None:
        self.target, self.delay = target, delay
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def start(self) -> DelayRelay:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        fut.result(10)
        return self

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._pair, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pair(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.CancelledError):  # stop() cancels every pair
            await self._relay(reader, writer)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.connections += 1
        self._writers.update((writer, up_w))
        try:
            await asyncio.gather(self._pipe(reader, up_w), self._pipe(up_r, writer))
        finally:
            self.connections -= 1
            for w in (writer, up_w):
                self._writers.discard(w)
                w.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def send() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                dst.write(data)
                await dst.drain()
            with contextlib.suppress(OSError):
                dst.write_eof()

        sender = asyncio.create_task(send())
        try:
            while True:
                data = await src.read(65536)
                queue.put_nowait((time.monotonic() + self.delay, data))
                if not data:
                    break
            await sender
        except OSError:
            sender.cancel()
            dst.close()

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for w in list(self._writers):
                w.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def __enter__(self) -> DelayRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
