"""Lua scripts ship as ``.lua`` files next to the module that runs them, loaded once."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources


@dataclass(frozen=True, slots=True)
class LuaScript:
    name: str
    text: str
    sha: str  # what EVALSHA names it by


def load_lua(package: str, name: str) -> LuaScript:
    """``load_lua("ingest", "append")`` reads ``ingest/append.lua``."""
    text = resources.files(package).joinpath(f"{name}.lua").read_text()
    return LuaScript(name, text, hashlib.sha1(text.encode()).hexdigest())
