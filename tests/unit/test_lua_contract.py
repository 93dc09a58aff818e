"""The Lua scripts and the Python readers agree on the Redis layout (common/layout.py)."""

from __future__ import annotations

import re
from pathlib import Path

from common.layout import META_EPOCH, META_FIELDS, META_MS, META_SEQ
from common.scripts import load_lua

ROOT = Path(__file__).resolve().parents[2]


def test_append_script_writes_the_meta_fields_fanout_reads() -> None:
    text = load_lua("ingest", "append").text
    hmget = re.search(r"HMGET', KEYS\[2\], (.*)\)", text)
    assert hmget is not None
    assert [f.strip(" '") for f in hmget.group(1).split(",")] == list(META_FIELDS)
    hset = re.search(r"HSET', KEYS\[2\], '(\w+)', epoch, '(\w+)', .*, '(\w+)', ", text)
    assert hset is not None and hset.groups() == (META_EPOCH, META_SEQ, META_MS)


def test_every_script_is_a_file_and_loads() -> None:
    # the project's own folders only: a virtualenv (.venv) may hold some package's .lua files
    scripts = sorted(
        p for p in ROOT.glob("*/**/*.lua") if not p.relative_to(ROOT).parts[0].startswith(".")
    )
    assert {p.name for p in scripts} >= {"append.lua", "group_ensure.lua", "group_release.lua"}
    for path in scripts:
        package = path.parent.relative_to(ROOT).parts[0]
        name = str(path.relative_to(ROOT / package).with_suffix(""))
        script = load_lua(package, name)
        assert script.text and len(script.sha) == 40
    inline = [
        p
        for p in ROOT.glob("*/*.py")
        if "redis.call(" in p.read_text() and p.parent.name != "tests"
    ]
    assert inline == [], f"inline Lua in {inline}: keep scripts in .lua files"
