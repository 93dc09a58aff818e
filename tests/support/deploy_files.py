"""The files of deploy/compose as data, for the deploy checks (static ones in unit, the health
checks against real tiers in e2e). No Docker engine here: the files are read, not run."""

from __future__ import annotations

import re
from typing import Any

from tests.support import ROOT

COMPOSE = ROOT / "deploy" / "compose"


def load(name: str) -> dict[str, Any]:
    """One compose file, parsed (PyYAML is a test extra)."""
    import yaml

    data: dict[str, Any] = yaml.safe_load((COMPOSE / name).read_text())
    return data


def dockerfile_targets() -> dict[str, str]:
    """The Dockerfile's build stages: stage name -> its text up to the next ``FROM``."""
    text = (COMPOSE / "Dockerfile").read_text()
    parts = re.split(r"^FROM\s+\S+\s+AS\s+(\w+)\s*$", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}
