"""The live console's HTTP server: static page from package data, config, and a webhook relay.

The page talks to fanout directly over WebSocket (same frames as the SDK), but posts test
webhooks through ``POST /api/webhook`` here, which adds the dev token and forwards to ingest:
the browser never needs CORS on ingest, and ingest stays exactly as in production.
Development only: ``/api/config`` hands the page a dev token, so bind it to localhost.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from common.errors import error_json
from devstack.client import post_webhook

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}
MAX_RELAY_BYTES = 1_048_576


@dataclass(frozen=True)
class ConsoleConfig:
    ingest_url: str
    fanout_urls: list[str]  # ws://host:port, one per node
    token: Callable[[str], str]  # fresh dev token for a user id, per page load
    webhook_token: Callable[[], str]  # what the page's test webhooks are signed with
    db: str = "postgres"
    collection: str = "posts"


def _asset(name: str) -> bytes:
    return resources.files("devstack").joinpath("console", name).read_bytes()


def make_handler(cfg: ConsoleConfig) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "vski-console"

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the page polls nothing; keep the dev terminal for the tiers' logs

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: dict[str, Any]) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def _error(self, status: int, code: str, message: str) -> None:
            self._send(status, error_json(code, message), "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in STATIC:
                name, ctype = STATIC[path]
                self._send(200, _asset(name), ctype)
            elif path == "/api/config":
                self._json(
                    200,
                    {
                        "ingest": cfg.ingest_url,
                        "fanout": cfg.fanout_urls,
                        "token": cfg.token(_query(self.path).get("sub") or "dev"),
                        "db": cfg.db,
                        "collection": cfg.collection,
                    },
                )
            else:
                self._error(404, "not_found", f"no page at {path}")

        def do_POST(self) -> None:
            if self.path.split("?", 1)[0] != "/api/webhook":
                self._error(404, "not_found", "POST /api/webhook only")
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_RELAY_BYTES:
                self._error(413, "payload_too_large", "1 MiB at most")
                return
            body = self.rfile.read(length)
            try:
                status, answer = post_webhook(cfg.ingest_url, cfg.webhook_token(), body)
            except OSError as exc:
                status = HTTPStatus.BAD_GATEWAY
                answer = {"error": "ingest_unreachable", "message": str(exc)}
            self._json(status, answer)

    return Handler


def _query(path: str) -> dict[str, str]:
    return dict(parse_qsl(urlsplit(path).query, max_num_fields=10)[:10])


class ConsoleServer:
    """A threaded stdlib HTTP server on its own port, run in a daemon thread of the supervisor."""

    def __init__(self, host: str, port: int, cfg: ConsoleConfig) -> None:
        self.httpd = ThreadingHTTPServer((host, port), make_handler(cfg))
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="console", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> ConsoleServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
