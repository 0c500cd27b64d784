"""Benchmark: one remote task's round trip through our stack against a bare Celery app (a script, not a test).

    python bench/roundtrip.py [--n 200] [--blocks 10]

Starts, on one machine, a private redis-server (with our ACL users), the hub, and two workers on it:

- **ours**: a contributor's worker for user ``bench`` exactly as the supervisor starts it (prefork,
  concurrency 1, acks late, prefetch 1, the user's key prefix, logged in as the ACL user
  ``worker-bench``, our consumer and transport). Tasks are submitted with
  ``routing.submit_task_for_user(..., use_remote=True)`` and their results read back through the
  user's namespace, as the server does.
- **bare**: a bare Celery app on the same Redis (default user, no prefix, no ACL, Celery's default
  settings but JSON and the same pool: prefork, concurrency 1) whose task returns its argument.

Then it times N sequential round trips (submit, wait for the result) of three kinds, interleaved in
blocks so that a slow moment of the machine hits all of them alike:

- ``bare``: the bare no-op task;
- ``ours, queue only``: ``process_file_task_remote`` whose arguments fail validation (a malformed
  checksum), so the task body returns at once: the same queue, prefix, ACL, consumer, result
  backend and result shape as a real task, without the download and the conversion;
- ``ours, full``: ``process_file_task_remote`` for a 40-byte text file on the hub: the download
  (an HTTP request to the hub with the key, SHA-256 checked), the conversion, the progress states.

Each block is one run: prints per kind the median over blocks of a block's median round trip, with
the lowest and highest (and the 95th percentile of all round trips), the ratios to bare block by
block (median and spread over the blocks), and the machine's load during the timed blocks. Before the
timed blocks it counts the Redis commands per round trip of each kind (``INFO commandstats``
deltas over ``--count-tasks`` round trips, every client included). The
target is ours/bare <= 1.2 for the queue-only kind; the full kind shows what a task's real work adds
on top (it does more, so its ratio is not a queue overhead). Every process is stopped and the
temporary folder removed however the bench ends.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402
from celery import Celery  # noqa: E402

from bench.measure import MachineLoad, Spread, interrupts_deferred, paired_ratios, scratch_folder  # noqa: E402
from morag_worker.core.cli.devstack import RedisServer, free_port, python_argv, wait_for  # noqa: E402
from morag_worker.core.hub_client import HubClient  # noqa: E402
from morag_worker.core.naming import WorkerType  # noqa: E402
from morag_worker.core.routing import submit_task_for_user  # noqa: E402
from morag_worker.core.server.acl import create_provisioned_key  # noqa: E402
from morag_worker.core.supervisor.worker_command import WorkerPlan, build_worker_command  # noqa: E402

USER = "bench"
BARE_APP = textwrap.dedent(
    """
    import os
    from celery import Celery

    app = Celery("bare", broker=os.environ["BARE_REDIS_URL"], backend=os.environ["BARE_REDIS_URL"])
    app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])
    if os.environ.get("BARE_RELIABLE"):  # the delivery settings every MoRAG worker runs with
        app.conf.update(
            task_acks_late=True,
            task_reject_on_worker_lost=True,
            worker_prefetch_multiplier=1,
        )


    @app.task(name="bare.noop")
    def noop(value):
        return {"success": True, "value": value}
    """
)


def child_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MORAG_", "MAIN_SERVER_URL", "REDIS_URL", "CELERY_"))
    }
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), extra.pop("PYTHONPATH", "")]))
    env.update(extra)
    return env


class Child:
    """A process in its own session writing to a log file: its output never competes with the
    timing loop (a pipe read by a thread of this process would)."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> None:
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                argv, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)


def create_key(redis_url: str) -> str:
    return create_provisioned_key(redis_url, USER, "bench")


def timed(n: int, round_trip: Callable[[int], Any]) -> list[float]:
    times = []
    for i in range(n):
        started = time.perf_counter()
        round_trip(i)
        times.append(time.perf_counter() - started)
    return times


def p95(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="timed round trips per kind")
    parser.add_argument("--blocks", type=int, default=10, help="interleaved blocks the N are split into")
    parser.add_argument("--warmup", type=int, default=10, help="untimed round trips per kind first")
    parser.add_argument(
        "--count-tasks",
        type=int,
        default=50,
        help="round trips per kind over which Redis commands are counted",
    )
    parser.add_argument(
        "--log-level", default="INFO", help="of every worker (INFO: as the supervisor runs ours)"
    )
    args = parser.parse_args()

    procs: list[Child] = []
    with scratch_folder(prefix="morag-bench-roundtrip-") as tmp:
        server = RedisServer(tmp / "redis")
        try:
            url = server.url
            os.environ["REDIS_URL"] = url  # submit_task_for_user publishes over the admin connection
            hub_port = free_port()
            hub_url = f"http://127.0.0.1:{hub_port}"
            hub_argv = python_argv(
                "-m", "morag_worker", "hub", "--port", str(hub_port), "--storage", str(tmp / "hub")
            )
            procs.append(Child(hub_argv, child_env(REDIS_URL=url), tmp / "hub.log"))
            import requests

            wait_for(lambda: requests.get(hub_url + "/healthz", timeout=2).ok, 60, "the hub")
            key = create_key(url)
            plan = WorkerPlan(
                user_id=USER,
                hub_url=hub_url,
                broker_url=url,
                api_key=key,
                worker_type=WorkerType.GPU,
                hostname=f"{USER}@bench",
                temp_dir=str(tmp / "worker-tmp"),
                log_level=args.log_level,
            )
            command = build_worker_command(plan, child_env())
            procs.append(Child(command.argv, command.env, tmp / "ours.log"))
            (tmp / "bare_app.py").write_text(BARE_APP)
            bare_argv = python_argv("-m", "celery", "-A", "bare_app", "worker", "-P", "prefork", "-c", "1",
                                    "-l", args.log_level, "-n", "bare@bench")  # fmt: skip
            bare_env = child_env(BARE_REDIS_URL=url, PYTHONPATH=str(tmp))
            procs.append(Child(bare_argv, bare_env, tmp / "bare.log", cwd=tmp))
            reliable_argv = [*bare_argv[:-1], "reliable@bench", "-Q", "bare-reliable"]
            reliable_env = {**bare_env, "BARE_RELIABLE": "1"}
            procs.append(Child(reliable_argv, reliable_env, tmp / "reliable.log", cwd=tmp))

            note = tmp / "note.txt"
            note.write_text("a tiny input, for the round trip bench\n")
            client = HubClient(hub_url, key)
            try:
                uploaded = client.upload(note)
            finally:
                client.close()
            file_url = uploaded["url"]
            good = {"sha256": uploaded["sha256"], "size": uploaded["size"]}
            bad = {"sha256": "not-a-checksum"}

            bare_app = Celery("bare-client", broker=url, backend=url)
            bare_app.conf.update(task_serializer="json", result_serializer="json", accept_content=["json"])

            def bare(queue: str) -> Callable[[int], None]:
                def round_trip(i: int) -> None:
                    result = bare_app.send_task("bare.noop", args=[i], queue=queue).get(timeout=60)
                    assert result["success"] is True

                return round_trip

            def ours(options: dict[str, Any], success: bool) -> Callable[[int], None]:
                def round_trip(_i: int) -> None:
                    result = submit_task_for_user(
                        "morag.worker.process_file_task", [file_url, "text/plain", options],
                        user_id=USER, use_remote=True,
                    ).get(timeout=60)  # fmt: skip
                    assert result["success"] is success, result

                return round_trip

            kinds: dict[str, Callable[[int], None]] = {
                "bare": bare("celery"),
                "bare, our settings": bare("bare-reliable"),
                "ours, queue only": ours(bad, False),
                "ours, full": ours(good, True),
            }
            # Ready when each worker answers; the first round trips also warm both up.
            for kind, round_trip in kinds.items():
                wait_for(lambda rt=round_trip: rt(-1) is None, 120, f"the {kind} worker to answer")
                timed(args.warmup, round_trip)
            admin = redis.Redis.from_url(url)
            commands = {kind: commands_per_task(admin, args.count_tasks, rt) for kind, rt in kinds.items()}
            admin.close()
            times: dict[str, list[float]] = {kind: [] for kind in kinds}
            block_medians: dict[str, list[float]] = {kind: [] for kind in kinds}
            per_block = max(1, args.n // args.blocks)
            with MachineLoad() as load:
                for _block in range(args.blocks):
                    for kind, round_trip in kinds.items():
                        block = timed(per_block, round_trip)
                        times[kind] += block
                        block_medians[kind].append(statistics.median(block))
        finally:
            with interrupts_deferred():
                for proc in reversed(procs):
                    proc.stop()
                server.stop()

    print(f"{per_block} sequential round trips per kind and block, {args.blocks} interleaved blocks")
    print("one round trip: the median over blocks of each block's median (p95 over all round trips)")
    for kind, values in times.items():
        spread = Spread.of(block_medians[kind]).scaled(1000)
        print(f"  {kind:<20} {spread.format('ms', digits=2, of='blocks')}, p95 {p95(values) * 1000:.2f} ms")

    def block_ratio(kind: str, baseline: str) -> str:
        """Block by block: kinds in one block ran at nearly the same moment, so a busy spell of
        the machine cancels out of each ratio."""
        return paired_ratios(block_medians[kind], block_medians[baseline]).format("×", digits=2, of="blocks")

    print("ratios of the block medians, block by block:")
    print(f"  queue overhead, ours/bare: {block_ratio('ours, queue only', 'bare')} (target <= 1.2)")
    settings = block_ratio("bare, our settings", "bare")
    print(f"    Celery's delivery settings alone (acks late, reject on worker lost, prefetch 1): {settings}")
    rest = block_ratio("ours, queue only", "bare, our settings")
    print(f"    the rest (key prefix, ACL user, consumer, transport, task wrapper, JSON logs): {rest}")
    print(f"  a real task (download and conversion), ours/bare: {block_ratio('ours, full', 'bare')}")
    print(f"Redis commands per round trip, all clients (INFO commandstats over {args.count_tasks} tasks):")
    for kind, counts in commands.items():
        total = sum(counts.values())
        top = ", ".join(f"{name} {n:g}" for name, n in counts.most_common())
        print(f"  {kind:<20} {total:5.1f}: {top}")
    print(load.describe())
    return 0


def command_calls(admin: redis.Redis) -> collections.Counter[str]:
    stats = admin.info("commandstats")
    return collections.Counter(
        {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    )


def commands_per_task(
    admin: redis.Redis, n: int, round_trip: Callable[[int], Any]
) -> collections.Counter[str]:
    """Commands Redis ran per round trip of one kind, by name: every client's (the submitter's,
    the worker's, idle workers' polls and the hub's few), less the INFO calls of this count."""
    before = command_calls(admin)
    for i in range(n):
        round_trip(i)
    delta = command_calls(admin) - before
    delta["info"] -= 1
    return collections.Counter({name: round(calls / n, 1) for name, calls in delta.items() if calls > 0})


if __name__ == "__main__":
    raise SystemExit(main())
