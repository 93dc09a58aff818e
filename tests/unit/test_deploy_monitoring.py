"""The monitoring profile of deploy/compose read as data (no Docker engine here): Prometheus and
Grafana only with ``--profile monitoring``, mounted files that exist, Prometheus finding every
fanout replica through Docker's DNS on the tiers' ports, alert rules for what an operator must
hear about, a dashboard with the panels the docs promise on the data source Grafana is given,
and nginx letting only private networks reach the operations page. promtool's own checks and
the metrics against running nodes: tests/e2e/test_monitoring.py.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.support.deploy_files import COMPOSE, load

yaml = pytest.importorskip("yaml", reason="PyYAML is a test extra (pip install -e .[test])")

MONITORING = COMPOSE / "monitoring"


def services() -> dict[str, Any]:
    data: dict[str, Any] = load("compose.yaml")["services"]
    return data


def test_prometheus_and_grafana_run_only_with_the_monitoring_profile() -> None:
    svc = services()
    for name in ("prometheus", "grafana"):
        assert svc[name]["profiles"] == ["monitoring"], name
        for mount in svc[name]["volumes"]:
            source = mount.split(":")[0]
            if source.startswith("./"):
                assert (COMPOSE / source).exists(), f"{name} mounts {source}, which is missing"
        assert all(p.startswith("127.0.0.1:") for p in svc[name]["ports"]), "local only"
    for name in ("redis", "ingest", "fanout", "nginx"):
        assert "profiles" not in svc[name], f"{name} must run without a profile"


def test_prometheus_scrapes_ingest_and_every_fanout_replica_on_their_ports() -> None:
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    env = {n: services()[n]["environment"] for n in ("ingest", "fanout")}
    for job, service, bind in (
        ("vski-ingest", "ingest", "INGEST_BIND"),
        ("vski-fanout", "fanout", "FANOUT_BIND"),
    ):
        (sd,) = jobs[job]["dns_sd_configs"]
        assert sd["names"] == [service] and sd["type"] == "A"
        assert sd["port"] == int(env[service][bind].rsplit(":", 1)[1])
        assert jobs[job]["metrics_path"] == "/metrics"
    mounted = services()["prometheus"]["volumes"]
    assert "./monitoring/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounted
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]


def test_the_alert_rules_cover_what_an_operator_must_hear_about() -> None:
    rules = [
        r
        for g in yaml.safe_load((MONITORING / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    ]
    names = {r["alert"] for r in rules}
    assert {
        "VskiNodeDown", "VskiFanoutNotReady", "VskiFanoutReadLagHigh", "VskiSlowConsumerCloses",
        "VskiGroupPendingGrowing", "VskiIngestServerErrors", "VskiNotRecoveredResumes",
    } <= names  # fmt: skip
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning"), r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
        assert "for" in r, f"{r['alert']} would fire on one bad scrape"


def test_the_dashboard_has_the_promised_panels_on_the_provisioned_data_source() -> None:
    dash = json.loads((MONITORING / "grafana" / "dashboards" / "vski-realtime.json").read_text())
    source = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uid = source["datasources"][0]["uid"]
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    panels = dash["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        assert p["datasource"]["uid"] == uid and p["targets"], p["title"]
    text = " ".join(t["expr"] for p in panels for t in p["targets"])
    for metric in (
        "vski_ingest_webhooks_total", "vski_fanout_events_sent_total", "vski_fanout_connections",
        "vski_fanout_read_lag_seconds_bucket", "vski_fanout_slow_client_closes_total",
        "vski_fanout_not_recovered_total", "vski_fanout_group_pending",
    ):  # fmt: skip
        assert metric in text, f"no panel queries {metric}"
    assert re.search(r"sum by \(outcome\)", text), "ingest statuses by outcome"
    provider = yaml.safe_load(
        (MONITORING / "grafana" / "provisioning" / "dashboards" / "vski-realtime.yml").read_text()
    )
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    assert (
        "./monitoring/grafana/dashboards:/var/lib/grafana/dashboards:ro"
        in services()["grafana"]["volumes"]
    )


def test_nginx_lets_only_private_networks_reach_the_operations_page() -> None:
    conf = (COMPOSE / "nginx.conf").read_text()
    block = re.search(r"location /admin/ \{(.*?)\n        \}", conf, flags=re.S)
    assert block is not None, "no location /admin/"
    body = block.group(1)
    assert "deny all;" in body and "proxy_pass http://ingest;" in body
    assert "allow 0.0.0.0/0" not in body and "allow all" not in body
    assert "REALTIME_ADMIN_KEY" in services()["ingest"]["environment"]
