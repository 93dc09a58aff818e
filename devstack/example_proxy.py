"""An example subscribe proxy, run by ``vski-realtime dev`` so ``proxy = true`` can be tried.

What a real one does against VSKI's database (is this user a member of that team?), this one
does against a small table: ``devstack/example-teams.json`` or ``--teams FILE``, which maps user
ids to team ids. It checks the node's signed request like a real proxy must, then answers
``{"allow": <user is in the table>, "vars": {"teams": [...]}, "ttl": 10}``. The table is read
on every request, so editing the file changes the answers within one ttl (10 s).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt

EXAMPLE_TEAMS = Path(__file__).with_name("example-teams.json")
TTL = 10


def decide(teams_file: Path, request: dict[str, Any]) -> dict[str, Any]:
    """The whole proxy logic: members of at least one team may subscribe, and see their teams."""
    table = json.loads(teams_file.read_text())
    teams = table.get(str(request.get("user")), [])
    return {"allow": bool(teams), "vars": {"teams": teams}, "ttl": TTL}


class ExampleProxy:
    def __init__(self, host: str, port: int, secret: str, teams_file: Path = EXAMPLE_TEAMS) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                status, answer = proxy.answer(self)
                body = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.secret = secret
        self.teams_file = teams_file
        self.host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="proxy", daemon=True)

    @property
    def url(self) -> str:
        port = self.httpd.server_address[1]
        return f"http://{self.host}:{port}/subscribe"

    def answer(self, req: BaseHTTPRequestHandler) -> tuple[int, dict[str, Any]]:
        token = (req.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        try:  # only the fanout nodes, which sign with JWT_SECRET, may ask
            claims = jwt.decode(token, self.secret, algorithms=["HS256"])
        except jwt.InvalidTokenError:
            return 401, {"error": "unauthorized"}
        if claims.get("sub") != "vski-realtime":
            return 401, {"error": "unauthorized"}
        length = min(int(req.headers.get("Content-Length") or 0), 65536)
        try:
            return 200, decide(self.teams_file, json.loads(req.rfile.read(length)))
        except (ValueError, OSError) as exc:
            return 500, {"error": str(exc)[:200]}

    def start(self) -> ExampleProxy:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
