"""What the idle tray app costs: CPU over a window of time, and memory, without the worker child.

    QT_QPA_PLATFORM=offscreen python bench/idle.py [--seconds 60] [--runs 3] [--window]

Each scenario runs ``--runs`` times, each time in its own child process (so one cannot warm up
another; the scenarios take turns), and measures itself
after start-up has settled: CPU time used during ``--seconds`` of wall time, as a percentage of
one core, and the resident set size at the end (current and peak). Scenarios:

- ``baseline``: a bare QApplication with no widget, idling in its event loop (the floor);
- ``tray``: the real TrayApp, worker RUNNING and waiting for work (a fake supervisor: no child),
  tray icon shown, progress window hidden: the state the app spends its life in;
- ``window`` (with ``--window``): the same with the progress window open.

Prints one line per run, then per scenario the median over the runs with the lowest and highest, the
tray app's figures against the baseline run by run, the targets (< 0.2 % CPU, < 150 MB RSS, checked on
the medians) and the machine's load during the runs. Linux only (reads /proc); not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's morag_worker, bench and tests, not an install

from bench.measure import MachineLoad, Spread, paired_ratios, scratch_folder  # noqa: E402

TARGET_CPU_PERCENT = 0.2
TARGET_RSS_MB = 150.0


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

    if name != "baseline":
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
        if name == "window":
            shell.show_window()
    # Let start-up work (icon rendering, background threads' expiry after 15 s) settle first.
    pump(16_000)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="measured idle time per scenario")
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario; medians are shown")
    parser.add_argument("--window", action="store_true", help="also measure with the progress window open")
    parser.add_argument("--scenario", help=argparse.SUPPRESS)  # internal: run one scenario here
    args = parser.parse_args()
    if args.scenario:
        print(json.dumps(_run_scenario(args.scenario, args.seconds)), flush=True)
        return 0

    scenarios = ["baseline", "tray"] + (["window"] if args.window else [])
    env = dict(os.environ, QT_QPA_PLATFORM=os.environ.get("QT_QPA_PLATFORM", "offscreen"))
    results: dict[str, list[dict[str, float | str]]] = {name: [] for name in scenarios}
    with MachineLoad() as load:
        for run in range(args.runs):
            for name in scenarios:
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
                    f"run {run + 1}: {name:9s} cpu {r['cpu_percent']:.3f} % of a core "
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
