"""The pure parts of ``vski-fanout --processes N``: the count, the restart plan, the lifeline,
the cleanup of a SIGKILLed supervisor's metrics folder. The supervisor itself runs end to end
in tests/e2e/test_fanout_processes.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.config import ConfigError
from common.lifeline import lifeline_cut, parent_alive
from fanout.settings import MAX_PROCESSES, load_fanout, parse_processes, usable_cores
from fanout.supervisor import METRICS_DIR_PREFIX, RestartPlan, remove_stale_metrics_dirs

NO_SUCH_PID = 4_194_305  # above the largest pid_max Linux allows


def test_processes_is_a_count_or_auto_for_the_usable_cores() -> None:
    assert parse_processes("1") == 1
    assert parse_processes(" 4 ") == 4
    assert parse_processes("auto", cores=6) == 6
    assert parse_processes("AUTO", cores=0) == 1  # never fewer than one node
    assert parse_processes("auto", cores=10_000) == MAX_PROCESSES
    assert parse_processes("auto") == usable_cores() == len(os.sched_getaffinity(0))


@pytest.mark.parametrize("raw", ["0", "-2", "two", "1.5", "", str(MAX_PROCESSES + 1)])
def test_a_bad_processes_value_is_a_clear_configuration_error(raw: str) -> None:
    with pytest.raises(ConfigError, match="FANOUT_PROCESSES"):
        parse_processes(raw)


def test_processes_default_to_one_and_come_from_the_environment() -> None:
    base = {"JWT_SECRET": "x" * 40}
    assert load_fanout(base).processes == 1
    assert load_fanout({**base, "FANOUT_PROCESSES": "3"}).processes == 3
    tuned = load_fanout(
        {**base, "FANOUT_RESTART_MAX_SECONDS": "2", "FANOUT_RESTART_RESET_SECONDS": "9"}
    )
    assert (tuned.restart_max_seconds, tuned.restart_reset_seconds) == (2.0, 9.0)
    with pytest.raises(ConfigError):
        load_fanout({**base, "FANOUT_PROCESSES": "none"})


def test_restart_waits_grow_while_a_child_keeps_crashing_at_start() -> None:
    plan = RestartPlan(cap=1.0, reset_after=30.0)
    waits = [plan.after_exit(0.2) for _ in range(6)]
    assert waits == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_a_child_that_ran_well_restarts_after_the_shortest_wait() -> None:
    plan = RestartPlan(cap=5.0, reset_after=30.0)
    for _ in range(4):
        plan.after_exit(1.0)
    assert plan.after_exit(31.0) == 0.1
    assert plan.after_exit(1.0) == 0.2  # and quick crashes after it lengthen the waits again


def test_a_cap_below_the_first_wait_is_kept() -> None:
    assert RestartPlan(cap=0.05, reset_after=1.0).after_exit(0.0) == 0.05


def test_the_lifeline_is_cut_when_the_write_end_closes() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    try:
        assert not lifeline_cut(read_end)  # nothing to read, not closed
        os.close(write_end)
        assert lifeline_cut(read_end)
    finally:
        os.close(read_end)
    assert lifeline_cut(read_end)  # a broken fd counts as cut: the child leaves
    assert parent_alive(os.getppid())
    assert not parent_alive(NO_SUCH_PID)


def test_only_the_metrics_folders_of_gone_supervisors_are_removed(tmp_path: Path) -> None:
    gone = tmp_path / f"{METRICS_DIR_PREFIX}{NO_SUCH_PID}-abc"
    mine = tmp_path / f"{METRICS_DIR_PREFIX}{os.getpid()}-def"
    other = tmp_path / "vski-ingest-metrics-xyz"
    for folder in (gone, mine, other):
        folder.mkdir()
        (folder / "counter_1.db").write_bytes(b"\0" * 8)
    assert remove_stale_metrics_dirs(str(tmp_path)) == [gone.name]
    assert not gone.exists() and mine.exists() and other.exists()
