"""What keeps the code Redis Cluster-safe, checked without a cluster: every key of a collection
shares one hash slot (one atomic script can touch them all), and nothing publishes on a plain
channel (plain PUBLISH is broadcast to every node of a cluster; sharded SPUBLISH is not).
The same on a real cluster: cluster/test_cluster_ingest.py.
"""

from __future__ import annotations

import re

from common.layout import collection_keys
from tests.support import ROOT
from tests.support.redis_cluster import key_slot


def test_all_keys_of_a_collection_share_one_slot_and_collections_do_not() -> None:
    slots = set()
    for i in range(200):
        k = collection_keys(f"db{i % 7}", f"coll-{i}.x_{i}")
        names = [k.stream, k.meta, k.channel, k.dedupe("ab" * 16), k.group_registry()]
        assert len({key_slot(n) for n in names}) == 1, names
        slots.add(key_slot(k.stream))
    assert len(slots) > 150  # different collections land in different slots


# a call, not a mention: ``.publish(`` or the command name as a string ('PUBLISH', "publish")
_PLAIN_PUBLISH = re.compile(r"""(?i)(\.publish\(|['"]publish['"])""")


def test_no_plain_publish_in_the_code() -> None:
    offenders = []
    files = [
        p for pkg in ("common", "ingest", "fanout", "devstack") for p in (ROOT / pkg).rglob("*")
    ]
    assert any(p.name == "append.lua" for p in files)
    for path in files:
        if path.suffix not in (".py", ".lua") or not path.is_file():
            continue
        for no, line in enumerate(path.read_text().splitlines(), 1):
            if _PLAIN_PUBLISH.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()}")
    assert _PLAIN_PUBLISH.search("redis.call('PUBLISH', k, v)")  # the pattern does catch one
    assert not _PLAIN_PUBLISH.search("redis.call('SPUBLISH', k, v)")
    assert not offenders, offenders
