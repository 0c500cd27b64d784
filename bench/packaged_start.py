"""Start-up of the PyInstaller bundle against the same app run from the virtual environment.

    .venv/bin/python bench/packaged_start.py [--runs 5] [--bundle dist/morag-worker/morag-worker]

Two figures, each as the bundle's time over the venv's, paired run by run (the two take turns, so a
busy moment slows both):

- ``tray``: from spawning ``morag-worker`` (offscreen, a fresh config folder) to its ``gui.ready``
  log line, the tray app up with its icon; then SIGTERM, and the clean exit is awaited.
- ``headless``: from spawning ``morag-worker --no-gui`` to its first ``worker.status`` line with
  state ``running``: the supervisor has checked the key with the hub, started the Celery worker
  child and seen it ready. A private redis-server and hub (from the venv) serve both.

Target: the bundle's start to ready within 1.3x the venv's. The venv is ``.venv`` (scripts/setup.sh),
the bundle ``packaging/build.sh bundle``. Prints every run, the medians with their spread, the ratios
and the machine's load; leaves no folder or process behind. Linux only; not a test.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's morag_worker, bench and tests, not an install

import requests  # noqa: E402

from bench.measure import MachineLoad, Spread, interrupts_deferred, paired_ratios, scratch_folder  # noqa: E402
from morag_worker.core.server.acl import create_provisioned_key  # noqa: E402
from tests.processes import Proc, RedisServer, base_env, free_port, wait_for  # noqa: E402

TARGET_RATIO = 1.3
VENV = [str(ROOT / ".venv" / "bin" / "python"), "-m", "morag_worker"]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = base_env(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_STATE_HOME=str(home / ".local" / "state"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring",
    )
    env.update(extra)
    return env


def time_until(argv: list[str], env: dict[str, str], ready: str, name: str) -> float:
    """Seconds from spawning ``argv`` to the first output line containing every part of ``ready``."""
    parts = ready.split("|")
    began = time.perf_counter()
    seen: list[float] = []

    def on_line(line: str) -> None:
        if not seen and all(p in line for p in parts):
            seen.append(time.perf_counter())

    proc = Proc(argv, env=env, name=name, on_line=on_line)
    try:
        wait_for(lambda: seen or proc.popen.poll() is not None, 180, f"{name} to get ready")
        if not seen:
            raise RuntimeError(f"{name} exited {proc.popen.returncode}:\n{proc.output()[-2000:]}")
        proc.signal(signal.SIGTERM)
        code = proc.wait(timeout=120)
        if code != 0:
            raise RuntimeError(f"{name} exited {code} after SIGTERM:\n{proc.output()[-2000:]}")
        return seen[0] - began
    finally:
        with interrupts_deferred():
            proc.stop(timeout=30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bundle", type=Path, default=ROOT / "dist" / "morag-worker" / "morag-worker")
    args = parser.parse_args(argv)
    if not args.bundle.exists():
        print(f"no bundle at {args.bundle}; build it with packaging/build.sh bundle", file=sys.stderr)
        return 2
    commands = {"venv": VENV, "bundle": [str(args.bundle)]}
    times: dict[tuple[str, str], list[float]] = {}
    with scratch_folder(prefix="morag-bench-packaged-") as tmp, MachineLoad() as load:
        redis = RedisServer(tmp / "redis")
        hub = None
        try:
            port = free_port()
            hub_url = f"http://127.0.0.1:{port}"
            hub = Proc(
                [*VENV, "hub", "--port", str(port), "--storage", str(tmp / "hub")],
                env=base_env(REDIS_URL=redis.url),
                name="hub",
            )
            wait_for(lambda: requests.get(hub_url + "/healthz", timeout=2).ok, 60, "the hub to start")
            key = create_provisioned_key(redis.url, "bench", "packaged start bench")
            for run in range(1, args.runs + 1):
                for kind, command in commands.items():
                    home = tmp / f"{kind}-{run}"
                    home.mkdir()
                    tray = time_until(
                        [*command, "--config-dir", str(home / "tray"), "--log-format", "json"],
                        _env(home, QT_QPA_PLATFORM="offscreen"),
                        '"event": "gui.ready"',
                        f"{kind} tray app",
                    )
                    headless = time_until(
                        [
                            *command,
                            "--no-gui",
                            "--config-dir",
                            str(home / "headless"),
                            "--log-format",
                            "json",
                        ],
                        _env(home, MORAG_API_KEY=key, MAIN_SERVER_URL=hub_url, TEMP_DIR=str(home / "work")),
                        '"worker.status"|"state": "running"',
                        f"{kind} headless worker",
                    )
                    times.setdefault((kind, "tray"), []).append(tray)
                    times.setdefault((kind, "headless"), []).append(headless)
                    print(f"run {run} {kind:6}: tray {tray:.2f} s, --no-gui {headless:.2f} s", flush=True)
        finally:
            with interrupts_deferred():
                if hub is not None:
                    hub.stop(timeout=30)
                redis.stop()
    print()
    for what, label in (("tray", "start to tray"), ("headless", "--no-gui start to ready")):
        venv, bundle = times[("venv", what)], times[("bundle", what)]
        ratio = paired_ratios(bundle, venv)
        verdict = "within" if ratio.median <= TARGET_RATIO else "OVER"
        print(f"{label}: venv {Spread.of(venv).format('s', 2, 'runs')}")
        print(f"{label}: bundle {Spread.of(bundle).format('s', 2, 'runs')}")
        print(f"{label}: bundle/venv {ratio.format('×', 2, 'runs')} ({verdict} the {TARGET_RATIO}× target)")
    print(load.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
