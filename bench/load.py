"""Benchmark: what per-user isolation costs in throughput (a script, not a test).

    python bench/load.py [--tasks 1000] [--users 2] [--workers 2] [--rounds 3] [--warmup 50] [--no-real]

One private redis-server; every run has ``--users`` users with ``--workers`` prefork workers each
(concurrency 1) and ``--tasks`` small tasks per user, submitted all at once; a run's time is from
the first submission to the last result read back by its submitter. Before it, ``--warmup`` tasks
per user run untimed, so that no worker process is still loading what its first task needs (ours
load the pipeline on a thread once ready: timed, that start-up work on 2 cores was up to a fifth
of a real run). Runs, in this order:

- **bare**: the tiny Celery app below with Celery's defaults (no ACL, no namespace, gossip, mingle
  and heartbeat on, early acks, prefetch 4), one plain queue per user.
- **reliable**: the same app and task with MoRAG's reliability settings (``base_config``: acks
  late, prefetch 1, reject on worker lost, time limits) but no ACL and no namespace.
- **isolated**: the same app and task, configured exactly as a contributor's worker is
  (``remote_worker_config``): logged in as ``worker-{user}`` under the production ACL, every key in
  ``morag:ns:{user}:``, acks late, prefetch 1, no shared channels, the watchdog-restored transport.
  Submitted the way the server does (an app with the user's ``global_keyprefix``).
- **real** (unless ``--no-real``): MoRAG's own workers and task (``process_file_task_remote``: each
  task downloads a tiny file from the hub and converts it), the hub serving the files.

The modes run in turn, ``--rounds`` times. Prints per mode the median throughput over the rounds
with the lowest and highest, the ratios isolated/bare (target >= 0.8), isolated/reliable (what the
ACL and the namespace alone cost) and real/bare (the whole pipeline, for information) round by round
(median and spread), and the machine's load during the rounds. Then the CPU a task cost, over all
processes and by role (pool processes, worker main processes, hub, Redis, and this process, which
submits, reads results and reads the workers' output; from ``/proc``), and bare/real of that
round by round: what the throughput ratio would be with every process CPU-bound, and steadier than
it where the machine's speed drifts between runs. Every worker is stopped and the
temporary folder removed however the bench ends.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from celery import Celery, signals  # noqa: E402
from celery.result import ResultSet  # noqa: E402

from bench.measure import (  # noqa: E402
    MachineLoad,
    RoleCpu,
    Spread,
    children_of,
    interrupts_deferred,
    paired_ratios,
    proc_stats,
    scratch_folder,
)
from morag_worker.core.cli.devstack import Proc, RedisServer, free_port, wait_for  # noqa: E402
from morag_worker.core.execution.celery_config import (  # noqa: E402
    base_config,
    namespaced_config,
    remote_worker_config,
)
from morag_worker.core.naming import queue_name  # noqa: E402

TASK = "bench.small"
TEXT = "input of {user}: a few words to convert\n"


def bench_app(mode: str, user: str, redis_url: str) -> Celery:
    """The bench's tiny app; ``mode`` decides its configuration (see the module docstring)."""
    app = Celery(f"bench-{mode}", set_as_current=False)
    if mode == "bare":
        app.conf.update(
            broker_url=redis_url,
            result_backend=redis_url,
            task_serializer="json",
            result_serializer="json",
            accept_content=["json"],
        )
    elif mode == "reliable":
        app.conf.update(base_config({"REDIS_URL": redis_url}))
    elif mode == "isolated-worker":
        from morag_worker.core.execution.contributor_transport import register

        register()
        app.conf.update(remote_worker_config({**os.environ, "REDIS_URL": redis_url}, user))
    elif mode == "isolated-submitter":
        app.conf.update(namespaced_config({"REDIS_URL": redis_url}, user))
    else:
        raise ValueError(mode)

    @app.task(name=TASK, shared=False)
    def small(text: str) -> dict[str, Any]:
        return {"success": True, "content": text.upper(), "metadata": {}, "user_id": user}

    return app


def serve(mode: str, user: str, name: str, redis_url: str) -> None:
    """Run one bench worker (a child of the driver); prints ``bench.ready`` when consuming."""
    app = bench_app("isolated-worker" if mode == "isolated" else mode, user, redis_url)
    signals.worker_ready.connect(lambda **_: print("bench.ready", flush=True), weak=False)
    argv = ["worker", "-Q", queue_name(user), "-P", "prefork", "-c", "1", "-n", name, "-l", "WARNING"]
    if mode == "isolated":
        argv += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    app.worker_main(argv)


# Where a run's CPU went, in this order (a pid counts under the first role that reaches it).
ROLES = ("pool", "worker main", "hub", "Redis", "this process")


@dataclass
class Run:
    name: str
    tasks: int
    seconds: float
    cpu: dict[str, float]  # CPU seconds of the timed part, by role

    @property
    def rate(self) -> float:
        return self.tasks / self.seconds

    def cpu_ms_per_task(self, role: str | None = None) -> float:
        """One role's CPU per task, or the whole stack's when ``role`` is None, in ms."""
        spent = sum(self.cpu.values()) if role is None else self.cpu.get(role, 0.0)
        return 1000 * spent / self.tasks


def roles(workers: list[Proc], redis: RedisServer, hub: Proc | None = None) -> dict[str, list[int]]:
    """The pids behind each of ``ROLES`` now: the workers' pool processes are their children."""
    mains = [proc.popen.pid for proc in workers]
    found = {
        "pool": children_of(mains, proc_stats()),
        "worker main": mains,
        "hub": [hub.popen.pid] if hub is not None else [],
        "Redis": [redis.proc.popen.pid] if redis.proc is not None else [],
        # Submits, reads results back and reads every child's output (the Proc reader threads).
        "this process": [os.getpid()],
    }
    return {role: found[role] for role in ROLES}


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MORAG_", "CELERY_", "REDIS_URL"))}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def drain(
    name: str,
    submit: Callable[[str, int], Any],
    apps: dict[str, Celery],
    tasks: int,
    warmup: int,
    pids: Callable[[], dict[str, list[int]]],
) -> Run:
    """Submit ``warmup`` tasks per user and wait for them, untimed (every worker process has then
    run a task, so none is still loading what its first task needs); then submit ``tasks`` per
    user (interleaved), read every result back, and time that, with the CPU each role of ``pids()``
    spent meanwhile."""
    if warmup:
        _submit_and_join(name, submit, apps, warmup)
    with RoleCpu(pids()) as cpu:
        started = time.monotonic()
        _submit_and_join(name, submit, apps, tasks)
        seconds = time.monotonic() - started
    return Run(name, tasks * len(apps), seconds, cpu.seconds)


def _submit_and_join(
    name: str, submit: Callable[[str, int], Any], apps: dict[str, Celery], tasks: int
) -> None:
    sent: dict[str, list[Any]] = {user: [] for user in apps}
    for n in range(tasks):
        for user in apps:
            sent[user].append(submit(user, n))
    for user, results in sent.items():
        values = ResultSet(results, app=apps[user]).join_native(timeout=1800, interval=0.2)
        bad = [v for v in values if not (isinstance(v, dict) and v.get("success"))]
        if bad:
            raise SystemExit(f"{name}: {len(bad)} tasks of {user} did not succeed, e.g. {bad[0]!r}")


def start_workers(argvs: list[tuple[list[str], dict[str, str], str]], ready: str) -> list[Proc]:
    """Start every worker and wait until each is ready; if one fails, stop those already started."""
    procs: list[Proc] = []
    try:
        for argv, env, name in argvs:
            procs.append(Proc(argv, env=env, name=name))
        for proc in procs:
            proc.wait_output(ready, timeout=180)
    except BaseException:
        stop(procs)
        raise
    return procs


def stop(procs: list[Proc]) -> None:
    with interrupts_deferred():
        for proc in procs:
            proc.stop(timeout=30)


_keys: dict[tuple[str, str], str] = {}


def create_keys(redis_url: str, users: list[str]) -> dict[str, str]:
    """One key per user and Redis server for the whole bench (the ACL users stay the same)."""
    missing = [user for user in users if (redis_url, user) not in _keys]
    if missing:
        _keys.update({(redis_url, user): key for user, key in _create_keys(redis_url, missing).items()})
    return {user: _keys[(redis_url, user)] for user in users}


def _create_keys(redis_url: str, users: list[str]) -> dict[str, str]:
    from morag_worker.core.server.acl import create_provisioned_key

    return {user: create_provisioned_key(redis_url, user, "bench") for user in users}


def run_bare_or_isolated(
    mode: str, redis: RedisServer, users: list[str], workers: int, tasks: int, warmup: int
) -> Run:
    keys = create_keys(redis.url, users) if mode == "isolated" else {}
    argvs = []
    for user in users:
        env = child_env(MORAG_API_KEY=keys[user]) if keys else child_env()
        for n in range(workers):
            name = f"{mode}{n}@{user}"
            argv = [
                sys.executable,
                __file__,
                "--serve",
                mode,
                "--user",
                user,
                "--name",
                name,
                "--redis",
                redis.url,
            ]
            argvs.append((argv, env, name))
    procs = start_workers(argvs, "bench.ready")
    try:
        kind = "isolated-submitter" if mode == "isolated" else mode
        apps = {user: bench_app(kind, user, redis.url) for user in users}

        def submit(user: str, n: int) -> Any:
            return apps[user].send_task(TASK, args=[TEXT.format(user=user)], queue=queue_name(user))

        return drain(mode, submit, apps, tasks, warmup, lambda: roles(procs, redis))
    finally:
        stop(procs)


def run_real(redis: RedisServer, tmp: Path, users: list[str], workers: int, tasks: int, warmup: int) -> Run:
    import requests

    from morag_worker.core.hub_client import HubClient
    from morag_worker.core.naming import WorkerType
    from morag_worker.core.routing import app_for_user, submit_task_for_user
    from morag_worker.core.supervisor.worker_command import WorkerPlan, build_worker_command

    port = free_port()
    hub_url = f"http://127.0.0.1:{port}"
    hub = Proc(
        [sys.executable, "-m", "morag_worker", "hub", "--port", str(port), "--storage", str(tmp / "hub")],
        env=child_env(REDIS_URL=redis.url),
        name="hub",
    )
    procs: list[Proc] = []
    try:
        wait_for(lambda: requests.get(hub_url + "/healthz", timeout=2).ok, 60, "the hub")
        keys = create_keys(redis.url, users)
        argvs = []
        for user in users:
            for n in range(workers):
                plan = WorkerPlan(
                    user_id=user,
                    hub_url=hub_url,
                    broker_url=redis.url,
                    api_key=keys[user],
                    worker_type=WorkerType.GPU,
                    hostname=f"real{n}@{user}",
                    temp_dir=str(tmp / "worker-tmp"),
                )
                command = build_worker_command(plan, child_env())
                argvs.append((command.argv, command.env, plan.hostname or user))
        procs = start_workers(argvs, "worker.ready")
        inputs = {}
        for user in users:
            path = tmp / f"{user}.txt"
            path.write_text(TEXT.format(user=user))
            client = HubClient(hub_url, keys[user])
            try:
                inputs[user] = client.upload(path)
            finally:
                client.close()
        os.environ["REDIS_URL"] = redis.url  # what a MoRAG server's submitter has
        apps = {user: app_for_user(user) for user in users}

        def submit(user: str, n: int) -> Any:
            item = inputs[user]
            options = {"sha256": item["sha256"], "size": item["size"]}
            return submit_task_for_user(
                "morag.worker.process_file_task", [item["url"], "text/plain", options], None, user, True
            )

        return drain("real", submit, apps, tasks, warmup, lambda: roles(procs, redis, hub))
    finally:
        with interrupts_deferred():
            stop(procs)
            hub.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per user")
    parser.add_argument("--users", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2, help="workers per user")
    parser.add_argument("--no-real", action="store_true", help="skip the run with MoRAG's own task")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of all runs; medians are shown")
    parser.add_argument(
        "--warmup", type=int, default=50, help="untimed tasks per user first, in every run (default 50)"
    )
    parser.add_argument("--serve", choices=("bare", "reliable", "isolated"), help=argparse.SUPPRESS)
    parser.add_argument("--user", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--redis", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.user, args.name, args.redis)
        return 0
    users = [f"bench-u{n}" for n in range(args.users)]
    modes = ["bare", "reliable", "isolated"] + ([] if args.no_real else ["real"])
    runs: dict[str, list[Run]] = {mode: [] for mode in modes}
    with scratch_folder(prefix="morag-bench-load-") as tmp:
        redis = RedisServer(tmp / "redis")
        try:
            # Rounds interleave the modes, so that a busy moment on a shared machine hits all.
            with MachineLoad() as load:
                for round_no in range(args.rounds):
                    for mode in modes:
                        if mode == "real":
                            real_tmp = tmp / f"real{round_no}"
                            run = run_real(redis, real_tmp, users, args.workers, args.tasks, args.warmup)
                        else:
                            run = run_bare_or_isolated(
                                mode, redis, users, args.workers, args.tasks, args.warmup
                            )
                        runs[mode].append(run)
                        print(f"round {round_no + 1}: {mode:8} {run.rate:7.1f} tasks/s", file=sys.stderr)
            acl_log = redis.client().execute_command("ACL", "LOG")
        finally:
            with interrupts_deferred():
                redis.stop()
    rates = {mode: [r.rate for r in done] for mode, done in runs.items()}
    print(
        f"\n{args.users} users x {args.workers} workers x {args.tasks} tasks per user, {args.rounds} rounds"
    )
    for mode in modes:
        print(f"  {mode:9} {Spread.of(rates[mode]).format('tasks/s', of='rounds')}")

    def ratio(mode: str, baseline: str) -> str:
        """Round by round: the modes of one round ran one after another."""
        return paired_ratios(rates[mode], rates[baseline]).format("×", digits=2, of="rounds")

    print(f"  isolated / bare     = {ratio('isolated', 'bare')}  (target >= 0.8)")
    print(f"  isolated / reliable = {ratio('isolated', 'reliable')}  (ACL + namespace alone)")
    if "real" in rates:
        print(f"  real / bare         = {ratio('real', 'bare')}  (MoRAG's task: download, convert)")
    print("CPU per task, all processes (median over rounds), and by role:")
    for mode in modes:
        total = Spread.of(run.cpu_ms_per_task() for run in runs[mode])
        parts = ", ".join(
            f"{role} {Spread.of(run.cpu_ms_per_task(role) for run in runs[mode]).median:.2f}"
            for role in ROLES
            if any(run.cpu.get(role) for run in runs[mode])
        )
        print(f"  {mode:9} {total.format('ms', digits=2, of='rounds')}: {parts}")
    if "real" in rates:
        cpu_ratio = paired_ratios(
            [run.cpu_ms_per_task() for run in runs["bare"]], [run.cpu_ms_per_task() for run in runs["real"]]
        )
        print(f"  CPU per task, bare / real = {cpu_ratio.format('×', digits=2, of='rounds')}")
    print(f"  ACL LOG entries: {len(acl_log)}")
    print(load.describe())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
