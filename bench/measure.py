"""What every bench reports the same way: a median with its spread, the machine's load during the run,
and a scratch folder that is always removed; and a shield that lets a bench stop its processes even
when Ctrl-C is pressed again meanwhile.

The benches run on a shared machine, so a single number (or the best of a few) hides how noisy the
run was. ``Spread`` keeps the median with the lowest and highest value and the count; ``MachineLoad``
says how busy the whole machine was while the bench ran (from ``/proc``, Linux only), so a reader can
tell a slow figure from a busy machine. ``RoleCpu`` says which processes spent the CPU a run took
(each role's processes and their children, also from ``/proc``): on a machine whose speed drifts
from run to run, the CPU a task costs each part of the stack is the steadier figure. Used on the
bench's main thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, TracebackType

GLUED_UNITS = ("×", "x")  # written right after the number: "1.16×", not "1.16 ×"


@dataclass(frozen=True)
class Spread:
    """The median of ``n`` values, with the lowest and the highest."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Spread:
        ordered = sorted(values)
        if not ordered:
            raise ValueError("a spread needs at least one value")
        return cls(statistics.median(ordered), ordered[0], ordered[-1], len(ordered))

    def scaled(self, factor: float) -> Spread:
        """The same spread in another unit (seconds to milliseconds: ``scaled(1000)``)."""
        low, high = sorted((self.low * factor, self.high * factor))
        return Spread(self.median * factor, low, high, self.n)

    def format(self, unit: str = "", digits: int = 1, of: str = "") -> str:
        """``12.3 ms median (11.9 to 13.0, n=5)``; ``of`` names what n counts (``n=5 runs``)."""
        sep = "" if unit in GLUED_UNITS or not unit else " "
        count = f"n={self.n}" + (f" {of}" if of else "")
        return (
            f"{self.median:.{digits}f}{sep}{unit} median "
            f"({self.low:.{digits}f} to {self.high:.{digits}f}, {count})"
        )

    def __str__(self) -> str:
        return self.format()


def paired_ratios(numerators: Iterable[float], denominators: Iterable[float]) -> Spread:
    """The spread of ``a / b`` over pairs measured side by side (same run, block or round), so that
    a busy moment of the machine, which slows both, cancels out of each ratio."""
    return Spread.of(a / b for a, b in zip(numerators, denominators, strict=True))


@dataclass(frozen=True)
class CpuTimes:
    """The first line of ``/proc/stat``: the whole machine's CPU time, in clock ticks."""

    busy: int
    total: int

    @classmethod
    def parse(cls, stat: str) -> CpuTimes:
        for line in stat.splitlines():
            fields = line.split()
            if fields and fields[0] == "cpu":
                # user nice system idle iowait irq softirq steal (guest time is already in user)
                ticks = [int(value) for value in fields[1:9]]
                idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
                return cls(busy=sum(ticks) - idle, total=sum(ticks))
        raise ValueError("no 'cpu' line in /proc/stat")


def count_cores(stat: str) -> int:
    """The CPUs ``/proc/stat`` lists (``cpu0``, ``cpu1``, ...): the cores the busy share is over."""
    return sum(1 for line in stat.splitlines() if line.startswith("cpu") and line[3:4].isdigit())


def parse_loadavg(text: str) -> float:
    """The one-minute load average from ``/proc/loadavg``."""
    return float(text.split()[0])


def _read(path: str) -> str:
    return Path(path).read_text()


class MachineLoad:
    """The whole machine's load over a ``with`` block: the one-minute load average at entry and at
    exit, and the share of all cores' time that was busy (this bench's own work included)."""

    def __init__(self, read: Callable[[str], str] = _read) -> None:
        self._read = read
        self.cores = 0
        self.load_start = self.load_end = 0.0
        self._start: CpuTimes | None = None
        self._end: CpuTimes | None = None

    def __enter__(self) -> MachineLoad:
        stat = self._read("/proc/stat")
        self.cores = count_cores(stat)
        self._start = CpuTimes.parse(stat)
        self.load_start = parse_loadavg(self._read("/proc/loadavg"))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._end = CpuTimes.parse(self._read("/proc/stat"))
        self.load_end = parse_loadavg(self._read("/proc/loadavg"))

    @property
    def busy_percent(self) -> float:
        """Busy share of all cores between entry and exit, in percent (0 before the block ends)."""
        if self._start is None or self._end is None:
            return 0.0
        total = self._end.total - self._start.total
        return 100.0 * (self._end.busy - self._start.busy) / total if total > 0 else 0.0

    def describe(self) -> str:
        """``machine: 2 cores, 71 % busy during the run, load 1.4 → 2.1``."""
        return (
            f"machine: {self.cores} cores, {self.busy_percent:.0f} % busy during the run, "
            f"load {self.load_start:.1f} → {self.load_end:.1f}"
        )


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` a bench needs, times in clock ticks: the parent, the CPU
    time the process (all its threads) spent in user and system mode, that of its children that
    exited and were waited for (the kernel adds it to the parent's), and when it started (a pid
    taken again by a new process has a new start)."""

    ppid: int
    ticks: int
    reaped: int = 0
    started: int = 0

    @classmethod
    def parse(cls, stat: str) -> ProcStat:
        # The command name, in parentheses, may hold spaces and parentheses: fields follow the last ")".
        fields = stat[stat.rindex(")") + 2 :].split()
        return cls(
            ppid=int(fields[1]),
            ticks=int(fields[11]) + int(fields[12]),
            reaped=int(fields[13]) + int(fields[14]),
            started=int(fields[19]),
        )

    @property
    def total(self) -> int:
        return self.ticks + self.reaped


def proc_stats(
    read: Callable[[str], str] = _read, listdir: Callable[[str], list[str]] = os.listdir
) -> dict[int, ProcStat]:
    """Every process's ``ProcStat`` now, by pid (those gone or unreadable meanwhile left out)."""
    stats: dict[int, ProcStat] = {}
    for name in listdir("/proc"):
        if name.isdigit():
            try:
                stats[int(name)] = ProcStat.parse(read(f"/proc/{name}/stat"))
            except (OSError, ValueError, IndexError):
                continue
    return stats


def children_of(pids: Iterable[int], stats: dict[int, ProcStat]) -> list[int]:
    """The direct children of ``pids`` (a worker's pool processes)."""
    parents = set(pids)
    return [pid for pid, stat in stats.items() if stat.ppid in parents]


def role_of_each(roles: dict[str, Iterable[int]], stats: dict[int, ProcStat]) -> dict[int, str]:
    """Each pid of ``roles`` and of all their descendants, with its role. A pid counts once, under
    the first role that reaches it: name a worker's pool processes before the worker."""
    children: dict[int, list[int]] = {}
    for pid, stat in stats.items():
        children.setdefault(stat.ppid, []).append(pid)
    owner: dict[int, str] = {}
    for role, pids in roles.items():
        pending = list(pids)
        while pending:
            pid = pending.pop()
            if pid in owner or pid not in stats:
                continue
            owner[pid] = role
            pending.extend(children.get(pid, ()))
    return owner


class RoleCpu:
    """The CPU seconds each role's processes, with their descendants, spent over a ``with`` block
    (see ``role_of_each``; the roles are read at the end, so a pool process that replaced one inside
    the block counts for its worker's role). A process that exited inside the block counts under its
    parent's role once the parent has waited for it (the kernel adds its time to the parent's), only
    for its time inside the block; one nobody waited for is lost."""

    def __init__(
        self, roles: dict[str, Iterable[int]], stats: Callable[[], dict[int, ProcStat]] = proc_stats
    ):
        self.roles = {role: list(pids) for role, pids in roles.items()}
        self._stats = stats
        self._start: dict[int, ProcStat] = {}
        self.seconds: dict[str, float] = {}

    def __enter__(self) -> RoleCpu:
        self._start = self._stats()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        start, end = self._start, self._stats()
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

        def same(pid: int) -> bool:
            return pid in start and pid in end and start[pid].started == end[pid].started

        ticks = dict.fromkeys(self.roles, 0)
        owners = role_of_each(self.roles, end)
        for pid, role in owners.items():
            ticks[role] += end[pid].total - (start[pid].total if same(pid) else 0)
        for pid in role_of_each(self.roles, start):
            parent = start[pid].ppid
            if not same(pid) and same(parent) and parent in owners:
                # It exited and its parent waited for it: the parent's reaped time now holds its
                # time before the block too.
                ticks[owners[parent]] -= start[pid].total
        self.seconds = {role: count / tick for role, count in ticks.items()}


@contextlib.contextmanager
def scratch_folder(prefix: str = "morag-bench-", parent: Path | None = None) -> Iterator[Path]:
    """A new temporary folder, removed when the block ends however it ends: normally, by an
    exception, by Ctrl-C, or by SIGTERM (turned into ``SystemExit`` for the block, on the main thread,
    so that the bench's own ``finally`` clauses stop its processes first). Kills nothing itself: stop
    the processes that write into the folder inside the block."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        with _sigterm_as_exit():
            yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():
            print(f"could not remove the bench's folder {path}; remove it by hand", file=sys.stderr)


@contextlib.contextmanager
def _sigterm_as_exit() -> Iterator[None]:
    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: leave SIGTERM as it is
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C and SIGTERM during the block wait until it ends, then raise as usual (KeyboardInterrupt,
    ``SystemExit``): wrap a bench's clean-up in it, so that a second Ctrl-C does not leave its
    processes running. Every stop in there must have its own timeout. Main thread only; elsewhere a
    no-op."""
    received: list[int] = []

    def remember(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        print("stopping the bench's processes first", file=sys.stderr)

    try:
        previous = {sig: signal.signal(sig, remember) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if signal.SIGTERM in received:
            raise SystemExit(128 + signal.SIGTERM)
        if received:
            raise KeyboardInterrupt
