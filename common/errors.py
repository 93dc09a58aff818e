"""Every refusal the service sends has the same two parts: a machine-readable ``code`` and a
sentence for the human who has to fix it. One root error carries both, so each layer catches
errors by type and the wire shape is built in one place.

Also here: the WebSocket close codes a fanout node uses, as one enum, so no layer writes a bare
number and the protocol docs can be checked against a single list.
"""

from __future__ import annotations

import enum
import re
from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()


class ServiceError(Exception):
    """A refusal meant for the client: ``code`` for programs, ``message`` for people."""

    code: str = "error"

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ClientError(ServiceError):
    """A request a client may retry differently (bad subscription, bad ACK, forbidden)."""


class StoreUnavailable(ClientError):
    """Redis did not answer: nothing was decided, the client should retry later."""

    def __init__(self, message: str = "the event store is unavailable; retry later") -> None:
        super().__init__("redis_unavailable", message)


class HTTPRefusal(ServiceError):
    """A refusal answered over HTTP: a status and extra headers besides code and message."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(code, message)
        self.status = status
        self.headers = headers or {}


def error_json(code: str, message: str, **extra: Any) -> bytes:
    """The JSON body of every HTTP refusal: ``{"error": code, "message": sentence, ...}``."""
    return _encoder.encode({"error": code, "message": message, **extra})


_NON_WORD = re.compile(r"[^a-z0-9]+")


def code_for(phrase: str, default: str = "error") -> str:
    """An error code for a refusal someone else phrased (gunicorn, Falcon): ``Bad Request`` ->
    ``bad_request``."""
    return _NON_WORD.sub("_", phrase.lower()).strip("_") or default


class CloseCode(enum.IntEnum):
    """WebSocket close codes sent by a fanout node. Every one leaves the SDK able to resume
    from its lastId on any node (it reconnects after 3 s)."""

    NORMAL = 1000
    FLOOD = 1008  # policy violation: more messages than the client rate allows
    TOO_BIG = 1009  # a client frame over FANOUT_MAX_FRAME_BYTES (sent by websockets itself)
    INTERNAL_ERROR = 1011  # a bug, or keepalive pong missing (websockets)
    SERVICE_RESTART = 1012  # the node is draining
    TRY_AGAIN_LATER = 1013  # Redis unreachable during a SUBSCRIBE
    TOKEN_EXPIRED = 4001
    REVOKED = 4003
    SLOW_CONSUMER = 4008
