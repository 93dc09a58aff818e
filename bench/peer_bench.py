"""vski-fanout against nginx + nchan, side by side in one run: the same client, pinning and records.

Run under the exclusive lock, and hold it for one whole comparison (at most ~15 minutes):

    flock -x /tmp/vski-bench.lock .venv/bin/python bench/peer_bench.py --cases p20,p50,c5,idle
    flock -x /tmp/vski-bench.lock .venv/bin/python bench/peer_bench.py --cases sat --repeat 3

Method
- Both servers are pinned to ``--server-cpu`` (core 0); Redis, ingest, the poster and the load
  client share ``--load-cpu`` (core 1), all at nice -10 (``bench/fanout_bench.py``'s machinery,
  imported, not copied). ``--workers 1,2``: nchan ``worker_processes N`` against vski-fanout with
  ``FANOUT_PROCESSES=N``; with N = 2 both servers are pinned to cores 0,1, so they share core 1
  with the load. In a build without ``FANOUT_PROCESSES`` (fanout_bench's node cases take no
  ``processes``) the N-process rows are skipped, and the script says so.
- Load client: ``bench/fanout_client.c``, one epoll loop; for nchan in its ``nchan`` mode
  (``/sub/c<i % colls>``, no SUBSCRIBE, every text frame one event). Latency = receive time -
  the record's ``sent``.
- Records: 512 bytes of JSON each, for both. vski-fanout gets them as webhooks through ingest and
  Redis; nchan (``bench/nchan_server.py``: memory store) gets the same records POSTed straight to
  its publisher location, by the same paced open-loop poster. nchan has no webhook ingest and no
  Redis in front of it, so our latencies include work that nchan's do not: that favours nchan.
- CPU per delivery = the server's CPU time (every process of it) over the case / deliveries. For
  nchan that includes taking the publishes; for vski-fanout ingest and Redis run on the load core
  and are not counted (at 1,000 subscribers a publish is 1/1,000 of the deliveries it causes).
- Cases: ``p20`` 1,000 subscribers x 20 records/s (p99, CPU per delivery); ``p50`` 1,000 x 50/s
  (p99); ``c5`` 10,000 x 5/s (p99); ``sat``: a step search over offered rates (SAT_RATES
  records/s, 1,000 subscribers, SAT_SECONDS each, stopping at the first step that fails): the
  sustainable rate is the deliveries/s of the highest step with p99 < 500 ms, no loss and the
  publishes on schedule (>= 95 % of the offered rate posted; a server too busy to take its
  publishes in time slows the paced poster's 4 threads), and the table also gives the highest
  delivered events/s of any step; ``idle``: memory per idle
  connection = RSS delta of the server (summed over its processes) / 10,000 idle subscribers.
- Each repetition runs every case on both servers, alternating which goes first; the tables give
  medians of ``--repeat`` runs and the median of the same-run ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fanout_bench as fb
from nchan_server import NchanMissing, NchanServer, find_module, find_nginx

RECORD_BYTES = 512
SAT_RATES = (50, 100, 150, 200, 300, 400, 600)  # records/s offered to 1,000 subscribers
SAT_SECONDS = 5.0
SAT_P99_MS = 500.0
IDLE_CLIENTS = 10_000
SERVERS = ("vski", "nchan")

CASES = {
    "p20": fb.Case("p20", 1000, 1, 20, 10, note="1,000 x 20/s", record_bytes=RECORD_BYTES),
    "p50": fb.Case("p50", 1000, 1, 50, 10, note="1,000 x 50/s", record_bytes=RECORD_BYTES),
    "c5": dataclasses.replace(fb.CASES["c5"], record_bytes=RECORD_BYTES),
}
ALL_CASES = (*CASES, "sat", "idle")


class NchanPoster(fb.Poster):
    """The same paced records, POSTed as the message body to nchan's publisher location."""

    def _post_once(self, i: int) -> bool:
        body = json.dumps(self.record(i)).encode()
        return 200 <= self.send(f"/pub/c{i % self.colls}", body, {}) < 300


# the columns of a delivery case in the peer tables (fanout_bench's names)
ROW_KEYS = (
    "case", "clients", "offered", "posted_rate", "events_s", "p50", "p99", "max", "loss", "cpu",
)  # fmt: skip


def summary(r: dict[str, Any]) -> dict[str, Any]:
    """A fanout_bench node row, cut to ROW_KEYS, with CPU per delivery and RSS."""
    events = max(r["expected"] - r["loss"], 1)
    cpu_us = r["cpu_us_webhook"] * r["posted"] / events
    return {**{k: r[k] for k in ROW_KEYS}, "cpu_us_delivery": cpu_us, "rss": r["rss"]}


class Peers:
    """The vski tiers (fanout_bench's Stack) and the way to run each case on either server."""

    def __init__(self, stack: fb.Stack, client_bin: Path) -> None:
        self.stack, self.client_bin = stack, client_bin
        self.workers = 1
        self.seq = 0

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def processes(self) -> dict[str, int]:
        """fanout_bench's processes argument (it pins N > 1 to both cores itself)."""
        return {"processes": self.workers} if self.workers > 1 else {}

    def nchan(self, clients: int) -> NchanServer:
        a = self.stack.args
        cpus = a.server_cpu if self.workers == 1 else f"{a.server_cpu},{a.load_cpu}"
        return NchanServer(self.workers, clients + 1000, fb.pinned(cpus, [])).start()

    def run(self, server: str, case: fb.Case) -> dict[str, Any]:
        if server == "vski":
            seq = self.next_seq()
            # run_node_case takes the bench's --processes spelling ("2", "2pin")
            row = fb.run_node_case(self.stack, self.client_bin, case, seq, str(self.workers))
            return summary(row)
        return self.run_nchan(case)

    def run_nchan(self, case: fb.Case) -> dict[str, Any]:
        a = self.stack.args
        nchan = self.nchan(case.clients)
        client: fb.LoadClient | None = None
        try:
            client = fb.LoadClient(
                self.client_bin, a.load_cpu, nchan.port, "/sub/c{c}", case.clients, case.colls,
                protocol="nchan",
            )  # fmt: skip
            if not client.ready.wait(120):
                raise RuntimeError(f"{case.name}: clients did not connect ({client.subscribed})")
            time.sleep(0.5)
            cpu0, t0 = fb.tree_cpu_seconds(nchan.pid), time.monotonic()
            poster = NchanPoster(
                nchan.port, "", case.colls, case.rate, case.seconds, a.poster_threads,
                record_bytes=case.record_bytes,
            )  # fmt: skip
            poster.run()
            client.settle(poster.ok * case.clients // case.colls)
            cpu_s = fb.tree_cpu_seconds(nchan.pid) - cpu0
            window = (client.last_change if client.events else time.monotonic()) - t0
            rss, _ = fb.tree_rss_mb(nchan.pid)
            res = client.finish()
            expected = sum(ok * s for ok, s in zip(poster.ok_per_coll, client.subs, strict=True))
        finally:
            if client is not None and client.proc.poll() is None:
                client.proc.kill()
            nchan.stop()
        row = {k: res[f"{k}_ms"] for k in ("p50", "p99", "max")}
        row.update(
            case=case.name,
            clients=res["subscribed"],
            offered=case.rate,
            posted_rate=poster.ok / max(poster.elapsed, 1e-9),
            events_s=res["events"] / max(res["span_s"], 1e-9),
            loss=expected - res["events"],
            cpu=100 * cpu_s / max(window, 1e-9),
            cpu_us_delivery=1e6 * cpu_s / max(res["events"], 1),
            rss=rss,
        )
        return row

    def saturation(self, server: str) -> dict[str, Any]:
        """The step search: the last step that held, with every step's result."""
        steps, held = [], None
        for rate in SAT_RATES:
            case = fb.Case(f"sat{rate}", 1000, 1, rate, SAT_SECONDS, record_bytes=RECORD_BYTES)
            row = self.run(server, case)
            ok = row["p99"] < SAT_P99_MS and row["loss"] == 0 and row["posted_rate"] >= 0.95 * rate
            steps.append({**row, "held": ok})
            if not ok:
                break
            held = row
        best = held or steps[0]
        return {
            "case": "sat",
            "sustained_s": held["offered"] * held["clients"] if held else 0,
            "at_rate": held["offered"] if held else 0,
            "peak_s": max(s["events_s"] for s in steps),
            "p99": best["p99"],
            "loss": sum(s["loss"] for s in steps),
            "steps": [
                f"{s['offered']:g}/s: p99 {s['p99']:.0f} ms, posted {s['posted_rate']:.0f}/s, "
                f"server CPU {s['cpu']:.0f} %, loss {s['loss']}{'' if s['held'] else ' (fails)'}"
                for s in steps
            ],
        }

    def idle(self, server: str) -> dict[str, Any]:
        """RSS delta per connection with IDLE_CLIENTS idle subscribers."""
        node = nchan = None
        if server == "vski":
            node, port = self.stack.fanout({}, **self.processes())
            pid, path, protocol = node.pid, f"/api/realtime?db=idle&auth={fb.token()}", "vski"
        else:
            nchan = self.nchan(IDLE_CLIENTS)
            pid, port, path, protocol = nchan.pid, nchan.port, "/sub/c{c}", "nchan"
        client: fb.LoadClient | None = None
        try:
            time.sleep(1.0)
            before, _ = fb.tree_rss_mb(pid)
            client = fb.LoadClient(
                self.client_bin, self.stack.args.load_cpu, port, path, IDLE_CLIENTS, 1,
                nolat=True, protocol=protocol,
            )  # fmt: skip
            if not client.ready.wait(180):
                raise RuntimeError(f"idle: clients did not connect ({client.subscribed})")
            time.sleep(2.0)
            after, _ = fb.tree_rss_mb(pid)
            connected = client.subscribed
            client.finish()
        finally:
            if client is not None and client.proc.poll() is None:
                client.proc.kill()
            if node is not None:
                self.stack.stop_proc(node)
            if nchan is not None:
                nchan.stop()
        return {
            "case": "idle",
            "clients": connected,
            "kb_per_conn": (after - before) * 1024 / max(connected, 1),
            "rss_before": before,
            "rss_after": after,
            "loss": 0,
        }

    def one(self, server: str, name: str) -> dict[str, Any]:
        if name == "sat":
            return self.saturation(server)
        if name == "idle":
            return self.idle(server)
        return self.run(server, CASES[name])

    @staticmethod
    def vski_has_processes() -> bool:
        """Can this build run vski-fanout as N processes (``FANOUT_PROCESSES``, which
        fanout_bench's node cases take as ``processes``)?"""
        return "processes" in inspect.signature(fb.run_node_case).parameters


# (label, key, format, higher is better)
METRICS: dict[str, list[tuple[str, str, str, bool]]] = {
    "p20": [("p99 ms", "p99", "{:.1f}", False), ("CPU µs per delivery", "cpu_us_delivery",
            "{:.1f}", False)],
    "p50": [("p99 ms", "p99", "{:.1f}", False)],
    "sat": [("sustainable deliveries/s", "sustained_s", "{:,.0f}", True),
            ("highest delivered events/s of any step", "peak_s", "{:,.0f}", True)],
    "c5": [("p99 ms", "p99", "{:,.0f}", False)],
    "idle": [("KB per idle connection", "kb_per_conn", "{:.1f}", False)],
}  # fmt: skip
TITLES = {
    "p20": "1,000 subs x 20/s",
    "p50": "1,000 subs x 50/s",
    "sat": "saturation (p99 < 500 ms, on schedule, 1,000 subs)",
    "c5": "10,000 subs x 5/s",
    "idle": "10,000 idle subscribers",
}


def med(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in rows) if rows else float("nan")


def comparison(runs: list[dict[str, dict[str, dict[str, Any]]]], workers: int) -> str:
    """One row per metric: medians of each server and the median of the same-run ratios."""
    lines = [
        f"| case | measure | vski-fanout, {workers} process(es) | nginx+nchan, {workers} worker(s) "
        "| vski / nchan (same-run, median) | loss vski / nchan (all runs) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    names = [n for n in ALL_CASES if any(n in run for run in runs)]
    for name in names:
        both = [run[name] for run in runs if name in run]
        for label, key, fmt, _ in METRICS[name]:
            cells, ratios = [], []
            for server in SERVERS:
                rows = [b[server] for b in both if server in b]
                cells.append(fmt.format(med(rows, key)) if rows else "skipped")
            for b in both:
                if "vski" in b and "nchan" in b and b["nchan"][key]:
                    ratios.append(b["vski"][key] / b["nchan"][key])
            ratio = f"{statistics.median(ratios):.2f}x" if ratios else "-"
            loss = " / ".join(
                str(sum(b[s]["loss"] for b in both if s in b)) if any(s in b for b in both) else "-"
                for s in SERVERS
            )
            lines.append(
                f"| {TITLES[name]} | {label} | {cells[0]} | {cells[1]} | {ratio} | {loss} |"
            )
    return "\n".join(lines)


def details(runs: list[dict[str, dict[str, dict[str, Any]]]]) -> str:
    """Medians of the latency cases' other columns, for the record."""
    lines = [
        "| case | server | clients | offered / posted per s | delivered events/s | p50 ms | "
        "p99 ms | max ms | loss | CPU µs/delivery | RSS MB |",
        "|" + " --- |" * 11,
    ]
    for name in (n for n in CASES if any(n in run for run in runs)):
        for server in SERVERS:
            rows = [run[name][server] for run in runs if server in run.get(name, {})]
            if not rows:
                continue
            lines.append(
                f"| {name} | {server} | {med(rows, 'clients'):.0f} | {rows[0]['offered']:g} / "
                f"{med(rows, 'posted_rate'):.0f} | {med(rows, 'events_s'):,.0f} | "
                f"{med(rows, 'p50'):.1f} | {med(rows, 'p99'):.1f} | {med(rows, 'max'):.0f} | "
                f"{sum(r['loss'] for r in rows)} | {med(rows, 'cpu_us_delivery'):.1f} | "
                f"{med(rows, 'rss'):.0f} |"
            )
    return "\n".join(lines) if len(lines) > 2 else ""


def repeat_over(
    peers: Peers, names: list[str], servers: list[str], repeat: int, log: Callable[[str], None]
) -> list[dict[str, dict[str, dict[str, Any]]]]:
    runs = []
    for rep in range(repeat):
        run: dict[str, dict[str, dict[str, Any]]] = {}
        for k, name in enumerate(names):
            order = servers if (rep + k) % 2 == 0 else servers[::-1]  # alternate who goes first
            for server in order:
                try:
                    row = peers.one(server, name)
                except Exception as exc:  # one broken case must not lose the others
                    log(f"# run {rep + 1} {name} {server} FAILED: {exc!r}")
                    continue
                run.setdefault(name, {})[server] = row
                log(f"# run {rep + 1} {name} {server} x{peers.workers}: {json.dumps(row)}")
        runs.append(run)
    return runs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cases", default=",".join(ALL_CASES), help=f"of {', '.join(ALL_CASES)}")
    p.add_argument("--workers", default="1", help="comma-separated: nchan workers = vski processes")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--server-cpu", default="0", help="for 1 worker; 2 or more use --load-cpu too")
    p.add_argument("--load-cpu", default="1")
    p.add_argument("--ingest-workers", type=int, default=2)
    p.add_argument("--poster-threads", type=int, default=4)
    p.add_argument("--nice", type=int, default=-10, help="as in fanout_bench.py")
    p.add_argument("--json", default=None, help="also write every run's rows to this file")
    a = p.parse_args()
    a.redis_url = a.redis_cluster = a.profile = None  # fanout_bench options not taken here
    fb.NICE = a.nice if a.nice >= 0 or os.geteuid() == 0 else 0
    names = [n.strip() for n in a.cases.split(",") if n.strip()]
    for n in names:
        if n not in ALL_CASES:
            p.error(f"unknown case {n!r}: choose from {', '.join(ALL_CASES)}")
    try:
        find_nginx(), find_module()
    except NchanMissing as exc:
        p.error(str(exc))

    def log(line: str) -> None:
        print(line, flush=True)

    out: dict[str, Any] = {}
    stack = fb.Stack(a)
    client_bin = fb.build_client(stack.tmp)
    with fb.running(stack):
        peers = Peers(stack, client_bin)
        for workers in (int(w) for w in a.workers.split(",")):
            peers.workers = workers
            servers = list(SERVERS)
            if workers > 1 and not peers.vski_has_processes():
                log(
                    f"# this build has no FANOUT_PROCESSES (vski-fanout runs one process): the "
                    f"{workers}-process rows are skipped, nchan's {workers}-worker rows are run"
                )
                servers = ["nchan"]
            runs = repeat_over(peers, names, servers, a.repeat, log)
            out[str(workers)] = runs
            print()
            where = f"core {a.server_cpu}" if workers == 1 else f"cores {a.server_cpu},{a.load_cpu}"
            print(f"## {workers} worker(s) / process(es), servers on {where}, load on core "
                  f"{a.load_cpu}, medians of {a.repeat}")  # fmt: skip
            print()
            print(comparison(runs, workers))
            print()
            print(details(runs))
            for run_no, run in enumerate(runs, 1):
                for server, row in run.get("sat", {}).items():
                    print(f"\nsat run {run_no} {server}: " + "; ".join(row["steps"]))
            print(flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
