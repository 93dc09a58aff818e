"""structlog set up once per process: JSON lines in production, readable lines in development.

Tokens travel in query strings (``?auth=<JWT>``) and headers; :func:`redact` strips them from any
string before it is logged, and the processor chain applies it to every event, so a careless
``log.info(url=...)`` cannot leak a token.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = {
    "auth", "token", "authorization", "jwt", "secret", "password", "jwt_secret", "admin_key", "key",
}  # fmt: skip
_QUERY_SECRET = re.compile(r"(?i)\b(auth|token|access_token|jwt)=[^&\s\"']+")
_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]+")
_JWT_SHAPE = re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")


def redact(text: str) -> str:
    """Remove tokens from a string (query parameters, bearer headers, anything JWT-shaped)."""
    text = _QUERY_SECRET.sub(lambda m: f"{m.group(1)}=[redacted]", text)
    text = _BEARER.sub("Bearer [redacted]", text)
    return _JWT_SHAPE.sub("[redacted-jwt]", text)


def _redact_processor(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key, value in list(event_dict.items()):
        if key.lower() in _SECRET_KEYS and value is not None:
            event_dict[key] = "[redacted]"
        elif isinstance(value, str):
            event_dict[key] = redact(value)
    return event_dict


_configured = False


def setup_logging(fmt: str = "json", level: str = "info", *, force: bool = False) -> None:
    """Configure structlog (and route stdlib logging through the same output)."""
    global _configured
    if _configured and not force:
        return
    lvl = getattr(logging, level.upper(), logging.INFO)
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    logging.basicConfig(level=max(lvl, logging.WARNING), stream=sys.stderr, force=True)
    _configured = True


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
