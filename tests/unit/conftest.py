"""Unit tests stay pure: a test here that opens a network connection, binds a socket or starts
a process fails, saying where it belongs (tests/integration or tests/e2e). That keeps
``python3 dev.py test tests/unit`` a matter of seconds."""

from __future__ import annotations

import socket
import subprocess
from typing import NoReturn

import pytest


def _refuse(what: str) -> object:
    def refuse(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError(
            f"a unit test {what}: move it to tests/integration (in-process, real Redis) "
            "or tests/e2e (processes)"
        )

    return refuse


@pytest.fixture(autouse=True)
def _pure(monkeypatch: pytest.MonkeyPatch) -> None:
    for method in ("connect", "connect_ex", "bind"):
        monkeypatch.setattr(socket.socket, method, _refuse("uses a socket"))
    monkeypatch.setattr(socket, "create_connection", _refuse("opens a connection"))
    monkeypatch.setattr(subprocess.Popen, "_execute_child", _refuse("starts a process"))
