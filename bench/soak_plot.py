"""Draw the 30-minute soak: steady clients' p99 latency and each process's RSS over time.

The soak (``tests/reliability/test_soak_restarts.py``, ``--run-slow``, under the bench lock)
writes its samples to ``$VSKI_RELIABILITY_DIR/samples/soak-restarts.json`` (default
``.vski/reliability/``): p99 per 10 s window, median RSS per minute, and the Redis restart
times. This script renders them as one PNG with the restarts marked::

    flock /tmp/vski-bench.lock .venv/bin/pytest --run-slow tests/reliability/test_soak_restarts.py
    .venv/bin/python bench/soak_plot.py                    # -> docs/img/soak.png
    .venv/bin/python bench/soak_plot.py --samples X --out Y

Needs matplotlib (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = Path(os.environ.get("VSKI_RELIABILITY_DIR") or ROOT / ".vski" / "reliability")


def plot(data: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, mem) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True)
    windows = data["latency"]
    minutes = [w["t"] / 60 for w in windows]
    lat.plot(minutes, [w["p99_ms"] for w in windows], lw=1, color="tab:blue")
    lat.set_yscale("log")
    lat.set_ylabel("steady clients' p99 (ms, 10 s windows)")
    for name, per_minute in sorted(data["rss_mb_per_minute"].items()):
        mem.plot([m + 0.5 for m in range(len(per_minute))], per_minute, marker=".", label=name)
    mem.set_ylabel("RSS (MB, median per minute)")
    mem.set_xlabel("minutes")
    mem.legend(loc="upper left", fontsize="small")
    mem.set_ylim(bottom=0)
    for ax in (lat, mem):
        for i, t in enumerate(data.get("restarts", [])):
            ax.axvline(t / 60, color="tab:red", lw=0.6, alpha=0.5, label=None if i else "restart")
        ax.axvspan(0, data["warmup"] / 60, color="0.9", zorder=0)
        ax.grid(alpha=0.3)
    lat.legend(loc="upper left", fontsize="small")
    fig.suptitle(
        f"soak: {data['seconds'] / 60:.0f} min, 2 nodes, churn, 200 webhooks/s, Redis restarts "
        "(red; grey: warm-up)"
    )
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=Path, default=DEFAULT / "samples" / "soak-restarts.json")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "img" / "soak.png")
    args = parser.parse_args(argv)
    plot(json.loads(args.samples.read_text()), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
