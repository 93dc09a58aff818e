"""nginx + nchan as a peer server for the benchmarks: a generated config, started and stopped here.

nchan (Debian's ``libnginx-mod-nchan``) is the C module a team might pick instead of a fanout
tier of its own. The peer bench runs it on the same core, with the same client and the same
records as a ``vski-fanout`` node. The generated ``nginx.conf`` has:

- ``POST /pub/<channel>``: ``nchan_publisher``; the request body is the message. There is no
  webhook ingest and no Redis in front of it (the memory store): nchan's figures leave out work
  that ours include.
- ``GET /sub/<channel>``: ``nchan_subscriber websocket``; every message is one text frame.

The settings that matter for the load (each is nchan's or nginx's own directive):

- ``worker_processes N`` (the peer of ``FANOUT_PROCESSES=N``), ``daemon off; master_process
  on`` so the master stays our child and its workers die with it;
- ``worker_connections`` sized for ``max_connections`` (10,000 subscribers and more), and
  ``worker_rlimit_nofile`` as well, capped at the hard open-files limit (raising that needs a
  capability a container may not have; 20,000 here);
- ``nchan_subscriber_first_message newest``: a subscriber gets messages published after it
  connected, as ours do without ``lastId`` (nchan's default, ``oldest``, replays the buffer);
- ``nchan_message_buffer_length 100`` and ``nchan_message_timeout 60s``: each channel keeps its
  last 100 messages for a minute (the default is 10 for an hour); a live subscriber never
  needs more, and a short buffer is cheap, which again favours nchan;
- ``nchan_shared_memory_size 256M``: the memory store's shared memory (default 128M), so a
  burst of 512-byte messages never runs it out;
- ``access_log off``: nginx logs every request by default; ours log none on the success path.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from devstack.ports import LOCALHOST, free_port, wait_port

# Debian's libnginx-mod-nchan installs the module here (and a load_module snippet, relative to
# nginx's prefix, in /usr/share/nginx/modules-available/mod-nchan.conf)
MODULE_PATHS = (
    Path("/usr/lib/nginx/modules/ngx_nchan_module.so"),
    Path("/usr/share/nginx/modules/ngx_nchan_module.so"),
)
NGINX_PATHS = ("/usr/sbin/nginx", "/usr/local/sbin/nginx")

BUFFER_LENGTH = 100  # messages kept per channel
MESSAGE_TIMEOUT = "60s"
SHARED_MEMORY = "256M"


class NchanMissing(RuntimeError):
    """nginx or the nchan module is not installed; the message says how to get them."""


def find_nginx() -> Path:
    found = shutil.which("nginx") or next((p for p in NGINX_PATHS if os.access(p, os.X_OK)), None)
    if found is None:
        raise NchanMissing("nginx is not installed (apt-get install nginx libnginx-mod-nchan)")
    return Path(found)


def find_module() -> Path:
    for path in MODULE_PATHS:
        if path.is_file():
            return path
    raise NchanMissing("the nchan module is not installed (apt-get install libnginx-mod-nchan)")


def render_conf(
    directory: Path, port: int, workers: int, max_connections: int, module: Path
) -> str:
    """The whole nginx.conf; every path it names is inside ``directory``."""
    d = directory
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers write temp files as we do
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = max_connections + 1024
    if hard != resource.RLIM_INFINITY:
        nofile = min(nofile, hard)  # raising the hard limit needs a capability we may lack
    return f"""load_module {module};
{user}daemon off;
master_process on;
worker_processes {workers};
worker_rlimit_nofile {nofile};
pid {d / "nginx.pid"};
error_log {d / "error.log"} warn;

events {{
    worker_connections {max_connections + 512};
}}

http {{
    access_log off;
    client_body_temp_path {d / "body"};
    proxy_temp_path {d / "proxy"};
    fastcgi_temp_path {d / "fastcgi"};
    uwsgi_temp_path {d / "uwsgi"};
    scgi_temp_path {d / "scgi"};
    nchan_shared_memory_size {SHARED_MEMORY};

    server {{
        listen {LOCALHOST}:{port} backlog=4096;

        location ~ ^/pub/(\\w+)$ {{
            nchan_publisher http;
            nchan_channel_id $1;
            nchan_message_buffer_length {BUFFER_LENGTH};
            nchan_message_timeout {MESSAGE_TIMEOUT};
        }}

        location ~ ^/sub/(\\w+)$ {{
            nchan_subscriber websocket;
            nchan_channel_id $1;
            nchan_subscriber_first_message newest;
        }}
    }}
}}
"""


@dataclass
class NchanServer:
    """One nginx master (our child, in its own session) and its ``workers`` workers.

    ``prefix`` goes before the nginx command (e.g. ``taskset -c 0``): the workers inherit it.
    """

    workers: int = 1
    max_connections: int = 20_000
    prefix: Sequence[str] = ()
    port: int = 0
    dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="vski-nchan-")))
    proc: subprocess.Popen[bytes] | None = None

    def command(self, *extra: str) -> list[str]:
        conf = self.dir / "nginx.conf"
        log = self.dir / "error.log"
        return [str(find_nginx()), "-p", str(self.dir), "-c", str(conf), "-e", str(log), *extra]

    def write_conf(self) -> Path:
        if not self.port:
            self.port = free_port()
        conf = self.dir / "nginx.conf"
        conf.write_text(
            render_conf(self.dir, self.port, self.workers, self.max_connections, find_module())
        )
        return conf

    def check(self) -> subprocess.CompletedProcess[str]:
        """``nginx -t`` on the generated config (it does not start a server)."""
        self.write_conf()
        return subprocess.run(self.command("-t"), capture_output=True, text=True, timeout=30)

    def start(self) -> Self:
        checked = self.check()
        if checked.returncode != 0:
            raise RuntimeError(f"nginx -t refused the nchan config: {checked.stderr.strip()}")
        self.proc = subprocess.Popen(
            [*self.prefix, *self.command()],
            stdout=(self.dir / "stdout.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_port(self.port, 20)
        except Exception:
            self.stop()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def error_log(self) -> str:
        path = self.dir / "error.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 10) -> None:
        """Fast shutdown (SIGTERM: nginx closes its connections at once); the whole session is
        killed if it does not finish in ``timeout``; the directory is removed."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        if proc is not None:  # workers left behind by a killed master
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
