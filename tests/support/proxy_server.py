"""A subscribe proxy the tests control: answers from a table of teams, or misbehaves on demand.

``mode`` picks the behaviour of the next requests: ``ok`` (allow members of a team, ``vars``
``{"teams": [...]}``), ``garbage``, ``oversized``, ``html`` (wrong content type), ``error``
(HTTP 500), ``hang`` (sleep ``delay`` before answering), ``slow`` (answer normally after
``delay``), ``vars`` (allow with vars of every JSON type). Every request is recorded with its
verified claims, so tests can check the node signs its asks and coalesces identical ones.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt

from tests.support.tokens import SECRET

EVERY_JSON_TYPE = {
    "s": "text",
    "n": 7,
    "f": 1.5,
    "b": True,
    "z": None,
    "teams": ["t1", "t2"],
    "o": {"nested": {"deep": [1, {"x": None}]}},
}


@dataclass
class ProxyServer:
    teams: dict[str, list[str]] = field(default_factory=dict)
    mode: str = "ok"
    delay: float = 0.0
    ttl: float = 30.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    unsigned: int = 0

    def __post_init__(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                proxy.handle(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/check"

    def asks_for(self, user: str) -> int:
        with self.lock:
            return sum(1 for r in self.requests if r.get("user") == user)

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        token = (req.headers.get("Authorization") or "").removeprefix("Bearer ")
        try:
            claims = jwt.decode(token, SECRET, algorithms=["HS256"])
            signed = claims.get("sub") == "vski-realtime" and claims["exp"] <= time.time() + 61
        except (jwt.InvalidTokenError, KeyError):
            signed = False
        body = json.loads(req.rfile.read(int(req.headers.get("Content-Length") or 0)) or b"{}")
        with self.lock:
            self.requests.append(body)
            if not signed:
                self.unsigned += 1
        mode = self.mode
        if mode in ("hang", "slow"):
            time.sleep(self.delay)
        ctype, status = "application/json", 200
        if mode == "garbage":
            data = b"{not json"
        elif mode == "oversized":
            data = json.dumps({"allow": True, "vars": {"x": "y" * 200_000}}).encode()
        elif mode == "html":
            ctype, data = "text/html", b"<html>allow</html>"
        elif mode == "error":
            status, data = 500, b'{"allow": true}'
        elif mode == "vars":
            data = json.dumps({"allow": True, "vars": EVERY_JSON_TYPE, "ttl": self.ttl}).encode()
        else:
            teams = self.teams.get(str(body.get("user")))
            answer = {"allow": teams is not None, "vars": {"teams": teams or []}, "ttl": self.ttl}
            data = json.dumps(answer).encode()
        try:
            req.send_response(status)
            req.send_header("Content-Type", ctype)
            req.send_header("Content-Length", str(len(data)))
            req.end_headers()
            req.wfile.write(data)
        except OSError:
            pass  # the node gave up waiting

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
