"""Where a fanout node's time goes under load: top functions by own time, from py-spy samples.

    flock -x /tmp/vski-bench.lock .venv/bin/python bench/profile_top.py --case c5
    .venv/bin/python bench/profile_top.py --stacks DIR/c5-1234.txt   # an earlier recording

Method: ``bench/fanout_bench.py --profile DIR`` runs the case as usual (node pinned to the server
core) while ``py-spy record --nonblocking`` samples the node at 250 Hz from the load core; this
script reads the collapsed stacks and prints, per function, the share of samples in which it was
the innermost Python frame (own time) and in which it was anywhere on the stack (inclusive).
Samples where the node was idle (waiting in ``select``; recorded with py-spy's ``--idle``) are
counted separately, so the shares are of busy time. Kernel time inside a system call (``send``)
is attributed to the Python function that made the call.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::\d+)?\)$")
IDLE = "select (selectors.py)"  # the loop waiting for I/O: EpollSelector.select


def _name(frame: str) -> str:
    """``func (path/to/file.py:123)`` -> ``func (short/file.py)``: lines of a function merged."""
    m = _FRAME.match(frame.strip())
    if m is None:
        return frame.strip()
    path = m.group("file").split("site-packages/")[-1].split("python3.11/")[-1]
    path = path.replace(str(ROOT) + "/", "")
    return f"{m.group('func')} ({path})"


def read_stacks(path: Path) -> tuple[Counter[str], Counter[str], int, int]:
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    busy = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack or not count_s.isdigit():
            continue
        count = int(count_s)
        frames = [_name(f) for f in stack.split(";") if f and not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("thread ")]
        if not frames:
            continue
        if frames[-1].endswith(IDLE):
            idle += count
            continue
        busy += count
        own[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
    return own, inclusive, busy, idle


def report(path: Path, top: int) -> str:
    own, inclusive, busy, idle = read_stacks(path)
    total = max(busy, 1)
    out = [
        f"{path.name}: {busy} busy samples, {idle} idle "
        f"({100 * busy / max(busy + idle, 1):.0f}% busy)",
        "",
        "| function (own time) | own % of busy | inclusive % |",
        "| --- | --- | --- |",
    ]
    for func, n in own.most_common(top):
        out.append(f"| {func} | {100 * n / total:.1f} | {100 * inclusive[func] / total:.1f} |")
    out += ["", "| function (inclusive) | inclusive % of busy |", "| --- | --- |"]
    for func, n in inclusive.most_common(top):
        out.append(f"| {func} | {100 * n / total:.1f} |")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--case", default="c5", help="a case of bench/fanout_bench.py to profile")
    p.add_argument("--stacks", default=None, help="read this recording instead of running")
    p.add_argument("--top", type=int, default=25)
    a, rest = p.parse_known_args()
    if a.stacks:
        print(report(Path(a.stacks), a.top))
        return
    directory = Path(tempfile.mkdtemp(prefix="vski-prof-"))
    bench = [sys.executable, str(ROOT / "bench" / "fanout_bench.py"), "--cases", a.case]
    subprocess.run([*bench, "--profile", str(directory), *rest], check=True)
    for path in sorted(directory.glob("*.txt")):
        print()
        print(report(path, a.top))
        print(f"\n(stacks kept in {path})")


if __name__ == "__main__":
    main()
