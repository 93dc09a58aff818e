"""deploy/compose checked against the code (no Docker engine here, so the files are read).

Every variable the services set is one the code reads and docs/configuration.md documents; every
variable the code reads is documented there; ports agree between binds, EXPOSE, health checks and
nginx. That the health-check commands succeed against the real tiers:
e2e/test_deploy_healthchecks.py.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.support import ROOT
from tests.support.deploy_files import COMPOSE, dockerfile_targets, load

CONFIG_DOC = ROOT / "docs" / "configuration.md"

yaml = pytest.importorskip("yaml", reason="PyYAML is a test extra (pip install -e .[test])")

CODE_DIRS = ("common", "ingest", "fanout", "devstack")
ENV_NAME = re.compile(r"[\"']([A-Z][A-Z0-9]*_[A-Z0-9_]+)[\"']")
# upper-case string literals in the code that are not environment variables
NOT_ENV: set[str] = set()


def code_env_vars() -> set[str]:
    """Every environment variable name the code reads (string literals like "REDIS_URL")."""
    names: set[str] = set()
    for d in CODE_DIRS:
        for path in (ROOT / d).rglob("*.py"):
            names.update(ENV_NAME.findall(path.read_text()))
    return names - NOT_ENV


def documented_vars() -> set[str]:
    """The variable names the configuration reference (docs/configuration.md, the whole page)
    names in backticks, such as `REDIS_URL`."""
    assert CONFIG_DOC.exists(), "docs/configuration.md (the configuration reference) is missing"
    text = CONFIG_DOC.read_text()
    assert text.startswith("# Configuration\n"), "docs/configuration.md lost its title"
    return set(re.findall(r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+)`", text))


def merged() -> dict[str, Any]:
    """compose.yaml with compose.cluster.yaml applied the way `docker compose -f a -f b` merges
    services: maps merge key by key, the override's scalars and lists win."""
    base, over = load("compose.yaml"), load("compose.cluster.yaml")

    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = merge(a[k], v) if k in a else v
            return out
        return b

    return {
        k: merge(base.get(k), over.get(k)) if k in base else over[k]
        for k in {*base, *over}
        if not k.startswith("x-")
    }


def service_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def test_every_variable_the_services_set_is_read_by_the_code_and_documented() -> None:
    read = code_env_vars()
    docs = documented_vars()
    for file in ("compose.yaml", "compose.cluster.yaml"):
        for name, svc in load(file)["services"].items():
            for var in service_env(svc):
                # the monitoring profile's services are Prometheus and Grafana: their settings
                # are theirs, documented on the configuration page but read by no code of ours
                if "monitoring" not in (svc.get("profiles") or ()):
                    assert var in read, f"{file}: {name} sets {var}, which no code reads"
                assert var in docs, f"{var} ({file}: {name}) is not in docs/configuration.md"


def test_every_variable_the_code_reads_is_documented() -> None:
    docs = documented_vars()
    missing = sorted(v for v in code_env_vars() if v not in docs)
    assert missing == [], f"docs/configuration.md does not document: {missing}"


def test_tiers_get_what_they_require() -> None:
    for file_services in (load("compose.yaml")["services"], merged()["services"]):
        for tier in ("ingest", "fanout"):
            env = service_env(file_services[tier])
            assert env["REDIS_URL"].startswith("redis://redis:")
            assert env["JWT_SECRET"].startswith("${JWT_SECRET:?"), "JWT_SECRET must be required"
            assert env["LOG_FORMAT"] == "json"
    cluster = merged()["services"]
    assert service_env(cluster["ingest"])["REDIS_CLUSTER"] == "true"
    assert service_env(cluster["fanout"])["REDIS_CLUSTER"] == "true"
    assert "INGEST_WORKERS" in service_env(load("compose.yaml")["services"]["ingest"])


def test_fanout_uses_every_core_of_its_container() -> None:
    for services in (load("compose.yaml")["services"], merged()["services"]):
        assert service_env(services["fanout"])["FANOUT_PROCESSES"] == "${FANOUT_PROCESSES:-auto}"


def _port(bind: str) -> int:
    return int(bind.rsplit(":", 1)[1])


def test_dockerfile_targets_are_slim_non_root_with_health_checks() -> None:
    text = (COMPOSE / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim AS base$", text, flags=re.M)
    targets = dockerfile_targets()
    assert {"base", "ingest", "fanout"} <= set(targets)
    assert re.search(r"^USER (?!root|0)", targets["base"], flags=re.M), "must not run as root"
    scripts = (ROOT / "pyproject.toml").read_text()
    for tier, default in (("ingest", "8000"), ("fanout", "8080")):
        body = targets[tier]
        assert f'CMD ["vski-{tier}"]' in body
        assert f'vski-{tier} = "' in scripts, f"vski-{tier} is not a console script"
        bind = re.search(rf"ENV {tier.upper()}_BIND=(\S+)", body)
        assert bind and _port(bind.group(1)) == int(default)
        assert f"EXPOSE {default}" in body
        assert "HEALTHCHECK" in body and "/health" in body


def test_ports_agree_between_binds_expose_healthchecks_and_nginx() -> None:
    services = load("compose.yaml")["services"]
    nginx = (COMPOSE / "nginx.conf").read_text()
    for tier in ("ingest", "fanout"):
        svc = services[tier]
        port = _port(service_env(svc)[f"{tier.upper()}_BIND"])
        assert svc["expose"] == [str(port)]
        assert svc["build"]["target"] == tier
        assert svc["build"]["dockerfile"] == "deploy/compose/Dockerfile"
        assert (COMPOSE / svc["build"]["context"] / "pyproject.toml").exists()
        hc = " ".join(svc["healthcheck"]["test"])
        assert f"{tier.upper()}_BIND" in hc and "/health" in hc
        assert re.search(rf"server {tier}:{port}\b.*# vski:upstream {tier}", nginx)
    assert services["fanout"]["deploy"]["replicas"] == "${FANOUT_REPLICAS:-3}"
    assert any(p.endswith(":80") for p in services["nginx"]["ports"])
    assert re.search(r"listen 80;\s+# vski:listen", nginx)
    assert services["nginx"]["volumes"] == ["./nginx.conf:/etc/nginx/nginx.conf:ro"]
    # nginx refuses oversized webhooks itself, at exactly ingest's limit
    m = re.search(r"client_max_body_size (\d+)m;", nginx)
    assert m and int(m.group(1)) * 1024 * 1024 == int(
        service_env(services["ingest"])["INGEST_MAX_BODY_BYTES"]
    )


def test_redis_runs_with_persistence_and_noeviction() -> None:
    for svc_name, svc in merged()["services"].items():
        if not svc_name.startswith("redis") or svc_name == "redis-cluster-init":
            continue
        cmd = svc["command"]
        assert cmd[cmd.index("--appendonly") + 1] == "yes", svc_name
        assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction", svc_name
    cluster = merged()["services"]
    nodes = [n for n in cluster if n.startswith("redis") and n != "redis-cluster-init"]
    assert len(nodes) == 6
    for n in nodes:
        cmd = cluster[n]["command"]
        assert cmd[cmd.index("--cluster-enabled") + 1] == "yes"
    init = cluster["redis-cluster-init"]
    assert "--cluster-replicas 1" in init["command"][0]
    assert set(init["depends_on"]) == set(nodes)
    for tier in ("ingest", "fanout"):
        dep = cluster[tier]["depends_on"]["redis-cluster-init"]
        assert dep["condition"] == "service_completed_successfully"


def test_stop_grace_outlasts_the_tiers_own_drain() -> None:
    services = load("compose.yaml")["services"]

    def seconds(v: str) -> int:
        return int(v.rstrip("s"))

    assert seconds(services["fanout"]["stop_grace_period"]) > int(
        service_env(services["fanout"])["FANOUT_DRAIN_SECONDS"]
    )
    assert seconds(services["ingest"]["stop_grace_period"]) > int(
        service_env(services["ingest"])["INGEST_GRACEFUL_TIMEOUT"]
    )
