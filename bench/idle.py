"""What the idle tray app costs: CPU over a window of time, and memory, without the worker child.

    python bench/idle.py [--seconds 60] [--runs 3] [--window] [--display desktop|offscreen]

Each scenario runs ``--runs`` times, each time in its own process (so one cannot warm up
another; the scenarios take turns), and is measured after start-up has settled: CPU time used
during ``--seconds`` of wall time, as a percentage of one core, and the resident set size at the
end (current and peak). Scenarios:

- ``baseline``: a bare QApplication with no widget, idling in its event loop (the floor);
- ``tray``: the live app, ``python -m morag_worker``, as a person runs it: a real redis-server
  and hub on loopback, a key, the real supervisor with its Celery child, worker RUNNING and
  waiting for work, tray icon docked, progress window hidden. Only the tray process is measured
  (from /proc), not its worker child;
- ``window`` (with ``--window``): the same in-process TrayApp on a fake supervisor, window open.

``--display desktop`` (the default where Xvfb, openbox and trayer are installed, as
``scripts/setup.sh`` does) runs everything on a private X server with a real tray (the desktop
tier's session, tests/desktop/xsession.py); ``offscreen`` uses Qt's offscreen platform, where no
tray exists and the live app shows its window instead.

Prints one line per run, then per scenario the median over the runs with the lowest and highest, the
tray app's figures against the baseline run by run, the targets (< 0.2 % CPU, < 150 MB RSS, checked on
the medians) and the machine's load during the runs. Linux only (reads /proc); not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's morag_worker, bench and tests, not an install

from bench.measure import MachineLoad, Spread, paired_ratios, scratch_folder  # noqa: E402

TARGET_CPU_PERCENT = 0.2
TARGET_RSS_MB = 100.0
SETTLE_S = 16.0  # start-up work (icon rendering, the thread pool's idle threads expiring after 15 s)


def _rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _run_scenario(name: str, seconds: float) -> dict[str, float | str]:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    with scratch_folder(prefix="morag-bench-idle-") as tmp:
        return _measure_scenario(name, seconds, tmp)


def _measure_scenario(name: str, seconds: float, tmp: Path) -> dict[str, float | str]:
    from PySide6.QtCore import QEventLoop, QTimer
    from PySide6.QtWidgets import QApplication

    app = QApplication([sys.argv[0]])
    keep: list[object] = []

    def pump(ms: int) -> None:
        loop = QEventLoop()
        QTimer.singleShot(ms, loop.quit)
        loop.exec()

    if name == "window":
        from morag_worker.core.config.credentials import CredentialStore
        from morag_worker.core.config.history import HistoryStore
        from morag_worker.core.config.settings import Settings, SettingsStore
        from morag_worker.core.supervisor.events import WorkerState
        from morag_worker.gui.tray_app import Services, TrayApp
        from tests.fakes import FakeAutostart, FakeGpuProbe, FakeSupervisor, InMemoryKeyring

        hub = "http://127.0.0.1:8700"
        keyring = InMemoryKeyring()
        keyring.passwords[("morag-worker", hub)] = "k" * 43
        store = SettingsStore(tmp / "config")
        store.save(Settings(hub_url=hub, start_working_on_launch=True))
        supervisors: list[FakeSupervisor] = []

        def factory(listener: object) -> FakeSupervisor:
            supervisors.append(FakeSupervisor(listener))  # type: ignore[arg-type]
            return supervisors[-1]

        shell = TrayApp(
            Services(
                settings_store=store,
                credentials=CredentialStore(keyring),
                gpu_probe=FakeGpuProbe(),
                autostart=FakeAutostart(),
                autostart_command=lambda: ["morag-worker"],
                history=HistoryStore(tmp / "history.jsonl"),
                supervisor_factory=factory,
                log_dir=tmp / "logs",
                tray_available=lambda: True,
                open_url=lambda _url: None,
                env={},
            )
        )
        keep.append(shell)
        shell.start()
        deadline = time.monotonic() + 30
        while not (supervisors and supervisors[-1].state is WorkerState.RUNNING):
            if time.monotonic() > deadline:
                raise RuntimeError("the tray app did not reach RUNNING")
            pump(20)
        shell.show_window()
    pump(int(SETTLE_S * 1000))
    cpu_before = time.process_time()
    wall_before = time.monotonic()
    pump(int(seconds * 1000))
    cpu = time.process_time() - cpu_before
    wall = time.monotonic() - wall_before
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result: dict[str, float | str] = {
        "scenario": name,
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 4),
        "cpu_percent": round(100.0 * cpu / wall, 4),
        "rss_mb": round(_rss_mb(), 1),
        "peak_rss_mb": round(peak_kb * 1024 / 1e6, 1),  # ru_maxrss is in KiB on Linux
        "threads": len(os.listdir("/proc/self/task")),
    }
    for obj in keep:
        dispose = getattr(obj, "dispose", None)
        if dispose is not None:
            dispose()
    del app
    return result


def _proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _proc_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


@contextlib.contextmanager
def _live_stack(tmp: Path) -> Iterator[tuple[str, str]]:
    """A redis-server, a hub and a key for the live app: ``(hub_url, key)``."""
    from tests.conftest import create_key, start_hub
    from tests.processes import RedisServer

    redis = RedisServer(tmp / "redis")
    hub = None
    try:
        hub, url = start_hub(tmp, redis.url)
        yield url, create_key(redis.url, "idle-bench")
    finally:
        if hub is not None:
            hub.stop()
        redis.stop()


def _measure_live(
    env: dict[str, str], hub_url: str, key: str, seconds: float, tmp: Path
) -> dict[str, float | str]:
    """Start ``python -m morag_worker`` working, let it settle, measure it from outside, quit it."""
    from morag_worker.core.config.settings import Settings, SettingsStore
    from tests.processes import Proc, base_env, python_argv

    tmp.mkdir(parents=True, exist_ok=True)
    config = tmp / "config"
    SettingsStore(config).save(Settings(hub_url=hub_url, start_working_on_launch=True))
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    app_env = base_env(**{**env, "HOME": str(home), "MORAG_API_KEY": key,
                          "PYTHON_KEYRING_BACKEND": "keyring.backends.null.Keyring"})  # fmt: skip
    app = Proc(python_argv("-m", "morag_worker", "--config-dir", str(config), "--log-format", "json"),
               env=app_env, name="tray app")  # fmt: skip
    try:
        app.wait_output('"state": "running"', timeout=120)
        tray = app.saw('"tray": true')
        time.sleep(SETTLE_S)  # a bench, not a test: it measures a stretch of wall time
        cpu_before, wall_before = _proc_cpu_s(app.pid), time.monotonic()
        time.sleep(seconds)
        cpu, wall = _proc_cpu_s(app.pid) - cpu_before, time.monotonic() - wall_before
        result: dict[str, float | str] = {
            "scenario": "tray" if tray else "tray (no tray: window)",
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 4),
            "cpu_percent": round(100.0 * cpu / wall, 4),
            "rss_mb": round(_proc_kib(app.pid, "VmRSS") * 1024 / 1e6, 1),
            "peak_rss_mb": round(_proc_kib(app.pid, "VmHWM") * 1024 / 1e6, 1),
            "threads": len(os.listdir(f"/proc/{app.pid}/task")),
        }
        app.signal(signal.SIGTERM)
        app.wait(timeout=60)
        return result
    finally:
        app.stop(timeout=10)


@contextlib.contextmanager
def _display(kind: str, tmp: Path) -> Iterator[dict[str, str]]:
    """The environment every scenario runs in: a private X desktop with a tray, or offscreen."""
    if kind == "offscreen":
        yield dict(os.environ, QT_QPA_PLATFORM="offscreen")
        return
    from tests.desktop.xsession import start_x_session

    session = start_x_session(tmp / "x", dict(os.environ))
    try:
        yield session.env
    finally:
        session.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured idle time per scenario")
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario; medians are shown")
    parser.add_argument("--window", action="store_true", help="also measure with the progress window open")
    parser.add_argument(
        "--display",
        choices=("desktop", "offscreen"),
        help="a private X desktop with a tray (default where Xvfb, openbox and trayer are installed) "
        "or Qt's offscreen platform",
    )
    parser.add_argument("--scenario", help=argparse.SUPPRESS)  # internal: run one scenario here
    args = parser.parse_args()
    if args.scenario:
        print(json.dumps(_run_scenario(args.scenario, args.seconds)), flush=True)
        return 0

    from tests.desktop.xsession import missing_tools

    display = args.display or ("offscreen" if missing_tools() else "desktop")
    scenarios = ["baseline", "tray"] + (["window"] if args.window else [])
    results: dict[str, list[dict[str, float | str]]] = {name: [] for name in scenarios}
    print(f"display: {display}")
    with (
        scratch_folder(prefix="morag-bench-idle-") as tmp,
        _display(display, tmp) as env,
        _live_stack(tmp) as (hub_url, key),
        MachineLoad() as load,
    ):
        for run in range(args.runs):
            for name in scenarios:
                if name == "tray":
                    r = _measure_live(env, hub_url, key, args.seconds, tmp / f"live-{run}")
                else:
                    child = subprocess.run(
                        [sys.executable, __file__, "--scenario", name, "--seconds", str(args.seconds)],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    line = [text for text in child.stdout.splitlines() if text.startswith("{")][-1]
                    r = json.loads(line)
                results[name].append(r)
                print(
                    f"run {run + 1}: {str(r['scenario']):9s} cpu {r['cpu_percent']:.3f} % of a core "
                    f"({r['cpu_s']} s in {r['wall_s']} s)  rss {r['rss_mb']} MB "
                    f"(peak {r['peak_rss_mb']} MB)  threads {r['threads']}"
                )

    def values(name: str, field: str) -> list[float]:
        return [float(r[field]) for r in results[name]]

    print(f"\n{args.runs} runs of {args.seconds:.0f} s per scenario:")
    for name in scenarios:
        cpu = Spread.of(values(name, "cpu_percent")).format("%", digits=3, of="runs")
        rss = Spread.of(values(name, "rss_mb")).format("MB", digits=1, of="runs")
        print(f"  {name:9s} cpu {cpu}; rss {rss}")
    extra_cpu = Spread.of(
        t - b for t, b in zip(values("tray", "cpu_percent"), values("baseline", "cpu_percent"), strict=True)
    )
    rss_ratio = paired_ratios(values("tray", "rss_mb"), values("baseline", "rss_mb"))
    print(
        f"tray vs baseline, run by run: cpu +{extra_cpu.format('points', digits=3)}, "
        f"rss {rss_ratio.format('×', digits=2)}"
    )
    tray_cpu = Spread.of(values("tray", "cpu_percent")).median
    tray_rss = Spread.of(values("tray", "rss_mb")).median
    cpu_ok = tray_cpu < TARGET_CPU_PERCENT
    rss_ok = tray_rss < TARGET_RSS_MB
    print(
        f"targets (tray, medians): cpu < {TARGET_CPU_PERCENT} % {'met' if cpu_ok else 'MISSED'}, "
        f"rss < {TARGET_RSS_MB:.0f} MB {'met' if rss_ok else 'MISSED'}"
    )
    print(load.describe())
    return 0 if cpu_ok and rss_ok else 1


if __name__ == "__main__":
    sys.exit(main())
