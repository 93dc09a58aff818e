"""The operations page at ``/admin/``: static HTML, JS and CSS from package data, no build step.

The page holds no data: it asks the operator for the admin key, keeps it in ``sessionStorage``
(gone with the tab) and sends it as ``Authorization: Bearer`` on every call to the read API.
Assets are served from a fixed list (no path from the request reaches the file system), with
a Content-Security-Policy that allows only this origin's scripts, styles and API calls.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

import falcon

from common.errors import HTTPRefusal

ASSETS = {
    "ops.js": "text/javascript; charset=utf-8",
    "ops.css": "text/css; charset=utf-8",
    "uPlot.iife.min.js": "text/javascript; charset=utf-8",
    "uPlot.min.css": "text/css; charset=utf-8",
}
_VENDOR = {"uPlot.iife.min.js", "uPlot.min.css"}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@cache
def _read(name: str) -> bytes:
    folder = resources.files("ingest").joinpath("ops_page")
    if name in _VENDOR:
        folder = folder.joinpath("vendor", "uplot")
    return folder.joinpath(name).read_bytes()


class PageResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.set_headers(HEADERS)
        resp.set_header("Cache-Control", "no-cache")
        resp.content_type = "text/html; charset=utf-8"
        resp.data = _read("index.html")


class AssetResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        ctype = ASSETS.get(name)
        if ctype is None:
            raise HTTPRefusal(404, "not_found", f"no such asset: {name[:60]}")
        resp.set_headers(HEADERS)
        resp.set_header("Cache-Control", "no-cache")
        resp.content_type = ctype
        resp.data = _read(name)
