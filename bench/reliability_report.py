"""Render the reliability table of docs/reliability.md from the rows the reliability suite wrote.

Each case of the suites under ``tests/reliability/`` writes one JSON row
(``tests/support/chaos.py: reported``) into ``$VSKI_RELIABILITY_DIR`` (default
``.vski/reliability/``): what was tried, how many events and clients, how many events were lost
or duplicated, and the result. Run the suite, then this:

    .venv/bin/pytest tests/reliability
    .venv/bin/python bench/reliability_report.py            # markdown table on stdout
    .venv/bin/python bench/reliability_report.py --write    # ... into docs/reliability.md

``--since-minutes N`` ignores rows older than N minutes (from an earlier run); ``--json`` prints
the rows instead; ``--write [PATH]`` replaces the table between the ``reliability-table`` marker
comments of ``docs/reliability.md`` (or PATH) instead of printing it. Exit status 1 if any row
failed (a "known bug" row is an expected failure).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "reliability.md"
START, END = "<!-- reliability-table:start -->", "<!-- reliability-table:end -->"
AREAS = {"fault": "fault", "network": "network", "soak": "soak", "hostile": "hostile input"}


def load(folder: Path, since_minutes: float | None) -> list[dict[str, Any]]:
    rows = []
    cutoff = time.time() - since_minutes * 60 if since_minutes else 0.0
    for path in sorted(folder.glob("*.json")):
        if path.stat().st_mtime < cutoff:
            continue
        try:
            rows.append(json.loads(path.read_text()))
        except (OSError, ValueError) as exc:
            print(f"skipping {path.name}: {exc}", file=sys.stderr)
    rows.sort(key=order)
    return rows


FILES = [  # the order of the table: faults by tier, then hostile input by tier
    "reliability_fanout",
    "reliability_cluster",
    "reliability_redis",
    "reliability_ingest",
    "net_ingest",
    "net_fanout_redis",
    "net_clients_vanish",
    "net_slow_paths",
    "net_cluster_partition",
    "reliability_soak",
    "soak_restarts",
    "abuse_tokens",
    "abuse_webhooks",
    "abuse_ws",
    "fuzz",
]


def order(row: dict[str, Any]) -> tuple[int, int, str]:
    areas = list(AREAS)
    area = areas.index(row["area"]) if row["area"] in areas else len(areas)
    test = str(row.get("test", ""))
    place = next((i for i, name in enumerate(FILES) if f"test_{name}" in test), len(FILES))
    return area, place, str(row.get("at", ""))


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return str(value).replace("|", "\\|").replace("\n", " ")


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| area | case | what was tried (how often) | events checked | clients | lost "
        "| duplicated | result | observed |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in rows:
        result = r.get("result", "?")
        if result == "FAIL":
            result = "**FAIL**"
        observed = r.get("notes") or ""
        if r.get("error") and result != "pass":
            observed = f"{observed} ({r['error']})".strip()
        delivered = bool(r.get("events"))  # lost/duplicated only mean something with events
        lines.append(
            "| "
            + " | ".join(
                cell(x)
                for x in (
                    AREAS.get(r["area"], r["area"]),
                    r["case"],
                    r.get("tried"),
                    r.get("events") or None,
                    r.get("clients") or None,
                    r.get("lost") if delivered else None,
                    r.get("duplicated") if delivered else None,
                    result,
                    observed,
                )
            )
            + " |"
        )
    lost = sum(int(r.get("lost") or 0) for r in rows if r.get("result") == "pass")
    dup = sum(int(r.get("duplicated") or 0) for r in rows if r.get("result") == "pass")
    counts = {k: sum(r.get("result") == k for r in rows) for k in ("pass", "known bug", "FAIL")}
    lines.append("")
    lines.append(
        f"{len(rows)} cases: {counts['pass']} passed, {counts['known bug']} known bug(s) "
        f"(xfail), {counts['FAIL']} failed; {lost} events lost and {dup} duplicated "
        "in the passing cases."
    )
    return "\n".join(lines)


def splice(page: str, table: str) -> str:
    """``page`` with the text between the START and END marker lines replaced by ``table``."""
    start, end = page.find(START + "\n"), page.find("\n" + END)
    if start == -1 or end == -1 or end < start or page.count(START) + page.count(END) != 2:
        raise ValueError(f"the page must hold one {START} line and, after it, one {END} line")
    head = page[: start + len(START) + 1]
    return head + table.rstrip("\n") + page[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("VSKI_RELIABILITY_DIR") or ROOT / ".vski" / "reliability"),
    )
    parser.add_argument("--since-minutes", type=float, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--write",
        type=Path,
        nargs="?",
        const=PAGE,
        default=None,
        metavar="PATH",
        help=f"write the table into PATH between its markers (default {PAGE.relative_to(ROOT)})",
    )
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        print(f"no results in {args.dir}: run the reliability suite first", file=sys.stderr)
        return 2
    rows = load(args.dir, args.since_minutes)
    if not rows:
        print(f"no result rows in {args.dir}", file=sys.stderr)
        return 2
    if args.write is not None:
        try:
            page = args.write.read_text()
            args.write.write_text(splice(page, render(rows)))
        except (OSError, ValueError) as exc:
            print(f"cannot write {args.write}: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {len(rows)} rows into {args.write}", file=sys.stderr)
    else:
        print(json.dumps(rows, indent=1) if args.json else render(rows))
    return 1 if any(r.get("result") == "FAIL" for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
