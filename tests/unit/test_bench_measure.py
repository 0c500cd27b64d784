"""bench.measure: the medians and spreads every bench prints, the machine-load line, the scratch folder."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from bench.measure import (
    CpuTimes,
    MachineLoad,
    ProcStat,
    RoleCpu,
    Spread,
    children_of,
    count_cores,
    interrupts_deferred,
    paired_ratios,
    proc_stats,
    role_of_each,
    scratch_folder,
)

pytestmark = pytest.mark.unit

STAT_START = """cpu  1000 0 500 8000 500 0 0 0 0 0
cpu0 500 0 250 4000 250 0 0 0 0 0
cpu1 500 0 250 4000 250 0 0 0 0 0
intr 12345
ctxt 678
"""
# 1,000 ticks later over both cores: 700 busy (user 500, system 150, softirq 50), 300 idle + iowait.
STAT_END = """cpu  1500 0 650 8250 550 0 50 0 0 0
cpu0 750 0 325 4125 275 0 25 0 0 0
cpu1 750 0 325 4125 275 0 25 0 0 0
intr 23456
"""


def test_spread_is_the_median_with_the_lowest_and_highest() -> None:
    assert Spread.of([13.0, 11.9, 12.3, 12.5, 12.0]) == Spread(12.3, 11.9, 13.0, 5)
    assert Spread.of([1.0, 3.0]) == Spread(2.0, 1.0, 3.0, 2)  # even count: the mean of the middle two
    assert Spread.of(iter([4.0])) == Spread(4.0, 4.0, 4.0, 1)
    with pytest.raises(ValueError):
        Spread.of([])


def test_spread_formats_with_its_unit_and_count() -> None:
    times = Spread.of([0.0119, 0.0123, 0.0130, 0.0121, 0.0125])
    assert times.scaled(1000).format("ms") == "12.3 ms median (11.9 to 13.0, n=5)"
    assert Spread(1.163, 1.1, 1.25, 3).format("×", digits=2, of="runs") == (
        "1.16× median (1.10 to 1.25, n=3 runs)"
    )
    assert str(Spread(2.0, 1.0, 3.0, 2)) == "2.0 median (1.0 to 3.0, n=2)"


def test_paired_ratios_divide_pair_by_pair() -> None:
    assert paired_ratios([2.0, 6.0, 3.0], [1.0, 2.0, 2.0]) == Spread(2.0, 1.5, 3.0, 3)
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])


def test_cpu_times_and_cores_from_proc_stat() -> None:
    assert CpuTimes.parse(STAT_START) == CpuTimes(busy=1500, total=10000)
    assert count_cores(STAT_START) == 2
    with pytest.raises(ValueError):
        CpuTimes.parse("intr 1\n")


def test_machine_load_line_from_fake_proc() -> None:
    files = {
        "/proc/stat": [STAT_START, STAT_END],
        "/proc/loadavg": ["1.40 1.10 0.90 2/170 999", "2.12 1.3 1 1/1 1"],
    }

    def read(path: str) -> str:
        return files[path].pop(0)

    with MachineLoad(read) as load:
        pass
    assert load.cores == 2
    assert load.busy_percent == pytest.approx(70.0)
    assert load.describe() == "machine: 2 cores, 70 % busy during the run, load 1.4 → 2.1"


def test_machine_load_reads_this_machine() -> None:
    with MachineLoad() as load:
        sum(range(10_000))
    assert load.cores >= 1
    assert 0.0 <= load.busy_percent <= 100.0
    assert load.describe().startswith(f"machine: {load.cores} cores, ")


def test_scratch_folder_is_removed_on_exception(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), scratch_folder(parent=tmp_path) as folder:
        (folder / "sub").mkdir()
        (folder / "sub" / "file").write_text("data")
        raise RuntimeError("the bench failed")
    assert not folder.exists()
    assert list(tmp_path.iterdir()) == []


def test_scratch_folder_is_removed_on_ctrl_c_and_sigterm(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), scratch_folder(parent=tmp_path) as interrupted:
        raise KeyboardInterrupt
    with pytest.raises(SystemExit) as exit_info, scratch_folder(parent=tmp_path) as terminated:
        signal.raise_signal(signal.SIGTERM)
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert not interrupted.exists() and not terminated.exists()
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the bench's only inside the block


def test_scratch_folder_is_removed_after_a_normal_run(tmp_path: Path) -> None:
    with scratch_folder(prefix="morag-bench-x-", parent=tmp_path) as folder:
        assert folder.is_dir() and folder.name.startswith("morag-bench-x-")
        (folder / "file").write_text("data")
    assert not folder.exists()


def test_ctrl_c_during_clean_up_waits_until_it_is_done() -> None:
    before = signal.getsignal(signal.SIGINT)
    stopped = []
    with pytest.raises(KeyboardInterrupt), interrupts_deferred():
        signal.raise_signal(signal.SIGINT)
        stopped.append("hub")  # the clean-up goes on after the Ctrl-C
    assert stopped == ["hub"]
    assert signal.getsignal(signal.SIGINT) is before
    with interrupts_deferred():
        stopped.append("redis")  # no signal: nothing is raised
    with pytest.raises(SystemExit), interrupts_deferred():
        signal.raise_signal(signal.SIGTERM)


def _stat(pid: int, name: str, ppid: int, utime: int, stime: int, cutime: int, started: int) -> str:
    rest = ["S", str(ppid)] + ["0"] * 9 + [str(utime), str(stime), str(cutime), "0"] + ["0"] * 4
    return f"{pid} ({name}) " + " ".join([*rest, str(started)] + ["0"] * 30)


def test_a_proc_stat_line_is_read_after_the_command_name_whatever_it_holds() -> None:
    line = _stat(42, "celery worker (x) ) y", 7, 120, 30, 9, 5555)
    assert ProcStat.parse(line) == ProcStat(ppid=7, ticks=150, reaped=9, started=5555)


def test_proc_stats_reads_every_process_and_skips_those_gone_meanwhile() -> None:
    files = {"/proc/1/stat": _stat(1, "init", 0, 5, 5, 0, 1), "/proc/9/stat": _stat(9, "w", 1, 2, 1, 0, 7)}

    def read(path: str) -> str:
        if path not in files:
            raise FileNotFoundError(path)
        return files[path]

    stats = proc_stats(read, lambda _: ["1", "9", "12", "self", "stat"])
    assert stats == {1: ProcStat(0, 10, 0, 1), 9: ProcStat(1, 3, 0, 7)}


def test_each_pid_and_its_descendants_count_once_under_the_first_role_that_reaches_them() -> None:
    # worker 10 with pool process 11 (and its converter child 12); hub 20; an unrelated 30.
    stats = {
        10: ProcStat(1, 0),
        11: ProcStat(10, 0),
        12: ProcStat(11, 0),
        20: ProcStat(1, 0),
        30: ProcStat(1, 0),
    }
    assert children_of([10], stats) == [11]
    owner = role_of_each({"pool": [11], "worker main": [10], "hub": [20, 99]}, stats)
    assert owner == {11: "pool", 12: "pool", 10: "worker main", 20: "hub"}


def test_role_cpu_counts_what_each_role_spent_inside_the_block() -> None:
    tick = os.sysconf("SC_CLK_TCK")
    snapshots = iter(
        [
            {
                10: ProcStat(1, 100, started=1),  # a worker
                11: ProcStat(10, 50, started=2),  # its pool process
                12: ProcStat(11, 5, started=3),  # a converter child
                20: ProcStat(1, 7, started=4),  # the hub
            },
            {
                10: ProcStat(1, 110, started=1),
                # 30 more; its child 12 exited with 8 ticks in all, and 11 waited for it.
                11: ProcStat(10, 80, reaped=8, started=2),
                13: ProcStat(11, 4, started=5),  # a new child
                20: ProcStat(1, 3, started=9),  # a new process that took the hub's pid
            },
        ]
    )
    roles = {"pool": [11], "worker main": [10], "hub": [20], "Redis": []}
    with RoleCpu(roles, stats=lambda: next(snapshots)) as cpu:
        pass
    assert cpu.seconds == {
        "pool": (30 + 3 + 4) / tick,
        "worker main": 10 / tick,
        "hub": 3 / tick,
        "Redis": 0.0,
    }
