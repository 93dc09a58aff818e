"""The floor of bench/ingest_bench.py: a Falcon app that reads the body and answers a fixed
200 JSON, run under the same gunicorn config as the ingest app (no JWT, no JSON, no Redis)."""

from __future__ import annotations

import falcon


class Bare:
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.bounded_stream.read()
        resp.content_type = falcon.MEDIA_JSON
        resp.data = b'{"success":true,"id":"0-0@00000000"}'


app = falcon.App()
app.add_route("/webhook", Bare())
