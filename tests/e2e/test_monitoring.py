"""The monitoring profile of deploy/compose against the real thing: Prometheus's own checker
(``promtool``, Debian's ``prometheus`` package; skipped with a reason without it) accepts the
scrape config, the alert rules and every dashboard query, the alert rules' unit tests
(``alerts_test.yml``) pass, and every metric the alert rules and the Grafana dashboard query is
exported by a running ingest and fanout node (scraped after a little traffic).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.groups import client
from tests.support.ingest_http import post_webhook, webhook_body
from tests.support.procs import Proc, fanout_proc, ingest_proc
from tests.support.redis_server import RedisServer
from tests.support.stack import NODE_ENV
from tests.support.ws_client import Client

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "monitoring"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "vski-realtime.json"
# metric names in a query: ours and the process collector's (Prometheus's own `up` is not one)
METRIC = re.compile(r"\b((?:vski|process)_[a-z0-9_]+)\b")


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (apt-get install prometheus; .ci/run does it)")
    return found


def run(*args: str) -> str:
    out = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def alert_queries() -> list[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_promtool_accepts_the_scrape_config_and_the_alert_rules(tmp_path: Path) -> None:
    config = (MONITORING / "prometheus.yml").read_text()
    assert "/etc/prometheus/alerts.yml" in config  # where compose mounts it
    (tmp_path / "prometheus.yml").write_text(
        config.replace("/etc/prometheus/alerts.yml", str(MONITORING / "alerts.yml"))
    )
    assert "SUCCESS" in run("check", "config", str(tmp_path / "prometheus.yml"))
    out = run("check", "rules", str(MONITORING / "alerts.yml"))
    assert f"SUCCESS: {len(alert_queries())} rules found" in out


def test_the_alert_rules_fire_when_they_should_and_not_otherwise() -> None:
    out = subprocess.run(
        [promtool(), "test", "rules", "alerts_test.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    """Each panel's query, checked by Prometheus's parser as a recording rule."""
    queries = dashboard_queries()
    assert len(queries) >= 15
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"vski:dashboard:q{i}", "expr": q} for i, q in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    assert f"SUCCESS: {len(queries)} rules found" in run("check", "rules", str(path))


@pytest.fixture(scope="module")
def nodes(redis_mod: RedisServer) -> Iterator[tuple[Proc, Proc]]:
    ingest = ingest_proc(redis_mod, 2).start()
    fanout = fanout_proc(redis_mod, **NODE_ENV, REGISTRY_HEARTBEAT_SECONDS="0.2").start()
    try:
        yield ingest, fanout
    finally:
        fanout.stop()
        ingest.stop()


def exported(url: str) -> set[str]:
    """Sample names and metric family names (``# TYPE`` lines) of one scrape."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


async def traffic(ingest: Proc, fanout: Proc) -> None:
    """A stored webhook, a refused one, a subscriber and a consumer group with pending events."""
    sub = await Client(fanout, "postgres", "monitored").open()
    async with client(fanout, "member", ack=False) as member:
        await member.subscribe("monitored", group="g")
        for i in range(3):
            assert (
                post_webhook(
                    ingest.port, webhook_body(collection="monitored", record_id=f"m{i}")
                ).status
                == 200
            )
        assert post_webhook(ingest.port, webhook_body(), token="not-a-jwt").status == 401
        await sub.wait_ids(3)
    await sub.close()


async def test_every_metric_queried_is_exported_by_a_running_node(nodes: tuple[Proc, Proc]) -> None:
    ingest, fanout = nodes
    await traffic(ingest, fanout)
    have = exported(ingest.url) | exported(f"http://127.0.0.1:{fanout.port}")
    wanted: dict[str, list[str]] = {}
    for source, queries in (("alerts.yml", alert_queries()), ("dashboard", dashboard_queries())):
        for q in queries:
            for name in METRIC.findall(q):
                wanted.setdefault(name, []).append(source)
    assert len(wanted) >= 15
    missing = {n: s for n, s in wanted.items() if n not in have and _family(n) not in have}
    assert missing == {}, f"queried but not exported: {missing}"


def _family(sample: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", sample)
