"""Worker lifecycle: our supervisor against a bare ``celery worker``, in the same run.

Usage: ``python bench/lifecycle.py [--runs 5] [--idle-seconds 60]``. Starts a private redis-server
(production ACL) and the hub, then alternates, ``--runs`` times each:

- bare: ``python -m celery -A morag_worker.core.worker worker ...``, Celery's own command with
  exactly the worker options and environment the supervisor would use (``build_worker_command``;
  the supervisor itself starts the same worker through ``worker_main``, without the ``celery``
  umbrella command), timed from spawn to its ``worker.ready`` log line, and from SIGTERM (warm
  stop) to its exit;
- supervised: ``Supervisor.start()`` to RUNNING (key, hub queue-info, GPU probe, launch, ready on
  the channel) and ``stop(FINISH)`` to STOPPED (the child's exit and its pipes drained).

For both, the worker's main-process CPU time when it is seen ready (``/proc``, 10 ms ticks) is
printed too: on a shared machine it moves less than the wall time does.

Then one supervised worker idles for ``--idle-seconds`` while the supervisor's own process CPU
time (``getrusage``: the loop thread, the child's reader threads) and the child's (``/proc``) are
measured. The idle part is one long run: it is cut into ``--idle-blocks`` equal blocks and the spread
is over those. Prints medians with their lowest and highest, the ratios run by run (a bare and a
supervised run follow each other), and the machine's load during the bench; targets (issue 14):
start <= 1.0x bare, idle stop <= bare warm stop, supervisor idle CPU < 0.2 %. Nothing is asserted.
The checkout is byte-compiled first, as an installed worker would be. Results also go
to ``bench/out/lifecycle.json``. The temporary folder (Redis, the hub's storage) is removed however
the bench ends.
"""

from __future__ import annotations

import argparse
import compileall
import dataclasses
import json
import os
import resource
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's morag_worker, not an install

import requests  # noqa: E402

from bench.measure import MachineLoad, Spread, interrupts_deferred, paired_ratios, scratch_folder  # noqa: E402
from morag_worker.core.cli.devstack import Proc, RedisServer, free_port, python_argv, wait_for  # noqa: E402
from morag_worker.core.config.settings import Settings  # noqa: E402
from morag_worker.core.hub_client import HubClient  # noqa: E402
from morag_worker.core.results import TaskRecord  # noqa: E402
from morag_worker.core.server.acl import create_provisioned_key  # noqa: E402
from morag_worker.core.supervisor.child_process import ChildCallbacks, ChildProcess, SubprocessLauncher  # noqa: E402
from morag_worker.core.supervisor.events import StopMode, TaskProgress, WorkerState, WorkerStatus  # noqa: E402
from morag_worker.core.supervisor.prepare import Prepared, prepare  # noqa: E402
from morag_worker.core.supervisor.supervisor import Supervisor, SupervisorOptions  # noqa: E402
from morag_worker.core.supervisor.worker_command import WorkerCommand  # noqa: E402

USER = "bench"


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MORAG_", "REDIS_URL", "CELERY_"))}
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def create_key(redis_url: str) -> str:
    return create_provisioned_key(redis_url, USER, "bench")


class StateWaiter:
    """A listener that lets the bench wait for a state without polling."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.state = WorkerState.STOPPED
        self.status: WorkerStatus | None = None
        self.launched_at: float | None = None  # perf_counter when the child was started
        self.ready_logged_at: float | None = None  # ... when its own ``worker.ready`` line arrived
        self.running_at: float | None = None

    def on_status(self, status: WorkerStatus) -> None:
        now = time.perf_counter()
        with self._cond:
            if status.message.startswith("Starting the worker") and self.launched_at is None:
                self.launched_at = now
            if status.state is WorkerState.RUNNING and self.running_at is None:
                self.running_at = now
            self.state, self.status = status.state, status
            self._cond.notify_all()

    def on_progress(self, progress: TaskProgress) -> None:
        pass

    def on_task_finished(self, record: TaskRecord) -> None:
        pass

    def on_log(self, line: str) -> None:
        if self.ready_logged_at is None and '"worker.ready"' in line:
            self.ready_logged_at = time.perf_counter()

    def wait(self, state: WorkerState, timeout: float = 120) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: self.state in (state, WorkerState.CRASHED), timeout):
                raise TimeoutError(f"no {state.value} within {timeout} s (last: {self.status})")
            if self.state is WorkerState.CRASHED and state is not WorkerState.CRASHED:
                raise RuntimeError(f"the supervisor crashed: {self.status}")


class TimingLauncher(SubprocessLauncher):
    """The real launcher, noting when the child's exit was seen (after its pipes were drained)."""

    def __init__(self) -> None:
        super().__init__()
        self.exited_at: float | None = None

    def launch(self, command: WorkerCommand, callbacks: ChildCallbacks) -> ChildProcess:
        def on_exit(code: int) -> None:
            self.exited_at = time.perf_counter()
            callbacks.on_exit(code)

        return super().launch(command, dataclasses.replace(callbacks, on_exit=on_exit))


def supervisor(
    hub_url: str, key: str, tmp: Path, waiter: StateWaiter, launcher: TimingLauncher | None = None
) -> Supervisor:
    return Supervisor(
        Settings(hub_url=hub_url, temp_dir=str(tmp / "tasks")),
        key_resolver=lambda: key,
        hub_client_factory=HubClient,
        listener=waiter,
        launcher=launcher,
        env=child_env(),
        options=SupervisorOptions(),
    )


Share = tuple[float, float, float]


def time_supervised(
    hub_url: str, key: str, tmp: Path, shares: list[Share], cpu: list[float]
) -> tuple[float, float]:
    waiter = StateWaiter()
    launcher = TimingLauncher()
    sup = supervisor(hub_url, key, tmp, waiter, launcher)
    try:
        began = time.perf_counter()
        sup.start()
        waiter.wait(WorkerState.RUNNING)
        ready = time.perf_counter() - began
        if sup.child_pid is not None:
            cpu.append(cpu_seconds_of(sup.child_pid))
        began_stop = time.perf_counter()
        sup.stop(StopMode.FINISH)
        waiter.wait(WorkerState.STOPPED)
        stopped = time.perf_counter()
        if waiter.launched_at and waiter.ready_logged_at and waiter.running_at and launcher.exited_at:
            # Our own share: key + hub queue-info + GPU probe before the launch; the child's ready
            # line to RUNNING (channel message, parsing, status); the child's exit (seen by the waiter
            # thread, pipes drained) to STOPPED.
            shares.append(
                (
                    waiter.launched_at - began,
                    max(0.0, waiter.running_at - waiter.ready_logged_at),
                    max(0.0, stopped - launcher.exited_at),
                )
            )
        return ready, stopped - began_stop
    finally:
        with interrupts_deferred():
            sup.close()


def time_bare(argv: list[str], env: dict[str, str], cpu: list[float] | None = None) -> tuple[float, float]:
    seen = threading.Event()
    began = time.perf_counter()
    proc = Proc(argv, env=env, name="bare celery", on_line=lambda line: "worker.ready" in line and seen.set())
    try:
        if not seen.wait(120):
            raise TimeoutError("bare celery did not get ready:\n" + proc.output()[-2000:])
        ready = time.perf_counter() - began
        if cpu is not None:
            cpu.append(cpu_seconds_of(proc.pid))
        began = time.perf_counter()
        proc.signal(signal.SIGTERM)
        proc.wait(60)
        return ready, time.perf_counter() - began
    finally:
        with interrupts_deferred():
            proc.kill_group()


def cpu_seconds_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def idle_cpu(hub_url: str, key: str, tmp: Path, seconds: float, blocks: int) -> dict[str, list[float]]:
    """CPU shares of an idle supervised worker, per block of ``seconds / blocks``: one long run."""
    waiter = StateWaiter()
    sup = supervisor(hub_url, key, tmp, waiter)
    try:
        sup.start()
        waiter.wait(WorkerState.RUNNING)
        pid = sup.child_pid
        assert pid is not None
        time.sleep(2)  # let start-up work settle before measuring (this is a benchmark, not a test)
        shares: dict[str, list[float]] = {
            "wall_s": [],
            "supervisor_cpu_percent": [],
            "child_main_cpu_percent": [],
        }
        own0, child0, t0 = _own_cpu(), cpu_seconds_of(pid), time.perf_counter()
        for _ in range(blocks):
            time.sleep(seconds / blocks)
            own1, child1, t1 = _own_cpu(), cpu_seconds_of(pid), time.perf_counter()
            wall = t1 - t0
            shares["wall_s"].append(wall)
            shares["supervisor_cpu_percent"].append(100 * (own1 - own0) / wall)
            shares["child_main_cpu_percent"].append(100 * (child1 - child0) / wall)
            own0, child0, t0 = own1, child1, t1
        sup.stop(StopMode.FINISH)
        waiter.wait(WorkerState.STOPPED)
        return shares
    finally:
        with interrupts_deferred():
            sup.close()


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="start/stop runs of each kind (default 5)")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="the idle run's length (default 60)")
    parser.add_argument(
        "--idle-blocks", type=int, default=6, help="blocks the idle run is cut into (default 6)"
    )
    args = parser.parse_args()
    compile_checkout()
    with scratch_folder(prefix="morag-bench-lifecycle-") as tmp:
        measured = measure(tmp, args.runs, args.idle_seconds, args.idle_blocks)
    report(measured)
    return 0


def compile_checkout() -> None:
    """Byte-compile this checkout's packages (``__pycache__``, git-ignored) before timing starts.

    An installed worker (wheel, bundle) runs from bytecode; a checkout under
    ``PYTHONDONTWRITEBYTECODE`` would otherwise compile its ~100 modules again at every start,
    in both the bare and the supervised runs.
    """
    for folder in ("morag_worker", "core"):
        compileall.compile_dir(ROOT / folder, quiet=1)


Row = tuple[float, float]  # start to ready, idle stop (seconds)


@dataclasses.dataclass
class Measured:
    rows: dict[str, list[Row]]  # "bare" and "supervised", one row per run
    cpu: dict[str, list[float]]  # the worker's main process CPU seconds when it was seen ready, per run
    overheads: list[Share]
    idle: dict[str, list[float]]  # per block of the idle run
    planned: Prepared
    load: MachineLoad


def measure(tmp: Path, runs: int, idle_seconds: float, idle_blocks: int) -> Measured:
    server = RedisServer(tmp / "redis")
    hub: Proc | None = None
    try:
        port = free_port()
        hub = Proc(
            python_argv("-m", "morag_worker", "hub", "--port", str(port), "--storage", str(tmp / "hub")),
            env={**child_env(), "REDIS_URL": server.url},
            name="hub",
        )
        hub_url = f"http://127.0.0.1:{port}"
        wait_for(lambda: requests.get(hub_url + "/healthz", timeout=2).ok, 60, "the hub")
        key = create_key(server.url)
        # The bare worker gets the supervisor's options and env (same queue, pool), through `celery`.
        from morag_worker.core.supervisor.gpu import NvmlProbe

        options = SupervisorOptions()
        planned = prepare(
            Settings(hub_url=hub_url, temp_dir=str(tmp / "tasks")),
            key_resolver=lambda: key,
            hub_client_factory=HubClient,
            gpu_probe=NvmlProbe(),
            env=child_env(),
            options=options,
        )
        bare_env = dict(planned.command.env)
        rows: dict[str, list[Row]] = {"bare": [], "supervised": []}
        cpu: dict[str, list[float]] = {"bare": [], "supervised": []}
        overheads: list[Share] = []
        bare_argv = planned.command.stock_celery_argv()
        time_bare(bare_argv, bare_env)  # warm the page cache; not counted
        with MachineLoad() as load:
            for _ in range(runs):
                rows["bare"].append(time_bare(bare_argv, bare_env, cpu["bare"]))
                rows["supervised"].append(time_supervised(hub_url, key, tmp, overheads, cpu["supervised"]))
            idle = idle_cpu(hub_url, key, tmp, idle_seconds, idle_blocks)
    finally:
        with interrupts_deferred():
            if hub is not None:
                hub.stop()
            server.stop()
    return Measured(rows, cpu, overheads, idle, planned, load)


def report(measured: Measured) -> None:
    rows, overheads, idle, load = measured.rows, measured.overheads, measured.idle, measured.load
    queue, pool = ", ".join(measured.planned.queues), measured.planned.command.pool
    print(f"queues {queue}, pool {pool}, {len(rows['bare'])} runs each (bare and supervised alternate)")
    print("  bare: `celery -A morag_worker.core.worker worker` with the supervisor's options and env")
    for name, done in rows.items():
        ready = Spread.of(r for r, _ in done).scaled(1000).format("ms", digits=0)
        stopped = Spread.of(s for _, s in done).scaled(1000).format("ms", digits=0)
        print(f"  {name:11} start->ready {ready}; idle stop {stopped}")
    for name, seconds in measured.cpu.items():
        print(f"  {name:11} worker CPU to ready {Spread.of(seconds).scaled(1000).format('ms', digits=0)}")
    start_ratio = paired_ratios([r for r, _ in rows["supervised"]], [r for r, _ in rows["bare"]])
    stop_ratio = paired_ratios([s for _, s in rows["supervised"]], [s for _, s in rows["bare"]])
    print(f"start ratio supervised/bare, run by run: {start_ratio.format('×', digits=2)}  (target <= 1.00)")
    if overheads:
        before, after, stop = (Spread.of(share[i] for share in overheads).scaled(1000) for i in range(3))
        print("  supervisor's own share:")
        print(f"    before the launch:                      {before.format('ms', digits=0)}")
        print(f"    from the child's ready line to RUNNING: {after.format('ms', digits=1)}")
        print(f"    from the child's exit to STOPPED:       {stop.format('ms', digits=1)}")
    print(
        f"idle stop ratio supervised/bare, run by run: {stop_ratio.format('×', digits=2)}  (target <= 1.00)"
    )
    seconds = sum(idle["wall_s"])
    blocks = len(idle["wall_s"])
    own = Spread.of(idle["supervisor_cpu_percent"]).format("%", digits=3, of="blocks")
    child = Spread.of(idle["child_main_cpu_percent"]).format("%", digits=2, of="blocks")
    print(f"idle, one run of {seconds:.0f} s in {blocks} blocks:")
    print(f"  supervisor process CPU {own} (target < 0.2 %)")
    print(f"  worker main process CPU {child}")
    print(load.describe())
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "lifecycle.json").write_text(
        json.dumps(
            {
                "runs": rows,
                "medians": {
                    name: (statistics.median(r for r, _ in done), statistics.median(s for _, s in done))
                    for name, done in rows.items()
                },
                "worker_cpu_to_ready_s": measured.cpu,
                "start_ratio": dataclasses.asdict(start_ratio),
                "stop_ratio": dataclasses.asdict(stop_ratio),
                "idle": idle,
                "machine": {
                    "cores": load.cores,
                    "busy_percent": load.busy_percent,
                    "load": [load.load_start, load.load_end],
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
