"""Benchmark: the hub under abuse, over loopback (a script, not a test).

    python bench/hub_abuse.py [--seconds 10] [--body-mb 1024] [--burst 1000] [--slow 500]

Starts a private redis-server and the hub (its default bounds, task-creation limits off so that the
legitimate client is never the one limited), then runs four phases of ``--seconds`` each:

- ``idle``: nothing but the legitimate client;
- ``huge body``: unauthenticated ``POST /api/v1/tasks`` bodies of ``--body-mb`` MiB, streamed
  without a Content-Length, one after another from 2 connections;
- ``burst``: ``--burst`` concurrent connections, each sending ``GET /api/v1/workers`` with a bogus
  key again and again;
- ``slow``: ``--slow`` connections trickling header bytes, one every second, reopened when closed.

Attackers connect from a separate process, each phase from its own address (127.0.0.3 to .5);
the legitimate client, from 127.0.0.2 (another address, as in real life), creates tasks
(``POST /api/v1/tasks`` for a URL, queued, no worker) one after another and counts the 201s. For
each phase it prints the hub's peak RSS and its growth over the idle baseline, the attack's answers
by status (500s counted apart), the machine's busy share, and the legitimate throughput as a ratio to
idle. Targets (issue 10): a single abusive request adds < 50 MB, zero 500s, throughput >= 0.5x idle.

Each phase is one run (an attack, then the next): the spread shown is over the phase's one-second
blocks of legitimate throughput (median, lowest, highest), and the ratio to idle is each block's rate
over idle's median rate. A peak RSS is the highest of the phase, not a median. The machine's load is
shown per phase and for the whole bench. Every process is stopped and the temporary folder removed
however the bench ends.

CPU: the hub and its Redis share this machine with the attacker and the legitimate client, and a
real attacker's CPU is not the hub's. So, where there are at least 2 cores (and unless
``--no-pinning``), the hub and Redis run on core 0, the clients on the other cores, and the
attacking process at ``nice 19`` so that it takes the CPU the legitimate client leaves. Every phase,
idle included, runs with the same placement, so the ratios compare like with like.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.measure import MachineLoad, Spread, interrupts_deferred, scratch_folder  # noqa: E402
from morag_worker.core.server.acl import create_provisioned_key  # noqa: E402
from tests.conftest import start_hub  # noqa: E402
from tests.processes import MemoryWatch, RedisServer  # noqa: E402

LEGIT_ADDRESS = "127.0.0.2"


# Each attack comes from its own loopback address, so that one phase's refusals do not carry over.
ATTACK_ADDRESSES = {"huge": "127.0.0.3", "burst": "127.0.0.4", "slow": "127.0.0.5"}


class _SourceAdapter(HTTPAdapter):
    def __init__(self, source: str = LEGIT_ADDRESS) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]


BLOCK_S = 1.0  # the legitimate client's throughput is counted per block of this many seconds


def legit_throughput(url: str, key: str, seconds: float) -> tuple[list[float], Counter[int]]:
    """Tasks created per second by one client creating them one after another, per block of
    ``BLOCK_S`` (the last block may be shorter)."""
    session = requests.Session()
    session.mount("http://", _SourceAdapter())
    codes: Counter[int] = Counter()
    body = {"url": "http://example.org/input.txt", "content_type": "text/plain"}
    blocks = max(1, round(seconds / BLOCK_S))
    created = [0] * blocks
    start = time.monotonic()
    end = start + seconds
    while time.monotonic() < end:
        try:
            response = session.post(url + "/api/v1/tasks", json=body, headers={"X-API-Key": key}, timeout=30)
        except requests.RequestException:
            codes[-1] += 1
            continue
        codes[response.status_code] += 1
        if response.status_code == 201:
            created[min(blocks - 1, int((time.monotonic() - start) / seconds * blocks))] += 1
        elif response.status_code in (429, 503):
            time.sleep(0.05)
    return [n / (seconds / blocks) for n in created], codes


async def _status(reader: asyncio.StreamReader) -> int:
    line = await reader.readline()
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1


async def burst(
    host: str, port: int, source: str, connections: int, stop: threading.Event, codes: Counter[int]
) -> None:
    async def one(n: int) -> None:
        request = (
            f"GET /api/v1/workers HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer bogus-{n}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
                writer.write(request)
                codes[await asyncio.wait_for(_status(reader), 60)] += 1
                writer.close()
            except (OSError, TimeoutError):
                codes[-1] += 1
                await asyncio.sleep(0.05)

    await asyncio.gather(*(one(n) for n in range(connections)))


async def slow(
    host: str, port: int, source: str, connections: int, stop: threading.Event, codes: Counter[int]
) -> None:
    async def one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
                writer.write(b"GET /api/v1/workers HTTP/1.1\r\nHost: hub\r\n")
                while not stop.is_set() and not reader.at_eof():
                    writer.write(b"X-Slow: a\r\n")
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        if await asyncio.wait_for(reader.read(1024), 1.0) == b"":
                            break
                codes[0 if stop.is_set() else -2] += 1  # -2: the hub closed it
                writer.close()
            except OSError:
                codes[-1] += 1
                await asyncio.sleep(0.05)

    await asyncio.gather(*(one() for _ in range(connections)))


ATTACKS = ("huge", "burst", "slow")


def attack_main(kind: str, url: str, size: int) -> int:
    """The attacking process: runs ``kind`` until stdin closes, then prints its answers as JSON."""
    import json
    import os

    with contextlib.suppress(OSError):
        os.nice(19)
    stop = threading.Event()
    codes: Counter[int] = Counter()

    def watch_stdin() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=watch_stdin, daemon=True).start()
    host, port = url.removeprefix("http://").split(":")
    if kind == "huge":
        huge_bodies(url, size, stop, codes)
    else:
        attack = burst if kind == "burst" else slow
        asyncio.run(attack(host, int(port), ATTACK_ADDRESSES[kind], size, stop, codes))
    print(json.dumps({str(code): n for code, n in codes.items()}), flush=True)
    return 0


class AttackProcess:
    """``attack_main`` in its own process, so that its work never holds the legitimate client's GIL."""

    def __init__(self, kind: str, url: str, size: int, cpus: set[int] | None) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--attack", kind, "--url", url, "--size", str(size)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if cpus:
            _pin(self.proc.pid, cpus)

    def stop(self) -> Counter[int]:
        import json

        out, _ = self.proc.communicate("", timeout=180)
        lines = out.strip().splitlines()
        return Counter({int(k): v for k, v in json.loads(lines[-1]).items()}) if lines else Counter()


def _pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of ``pid`` to ``cpus``."""
    import os

    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), cpus)


def huge_bodies(url: str, mib: int, stop: threading.Event, codes: Counter[int]) -> None:
    chunk = b"{" + b" " * (1024 * 1024 - 1)

    def body() -> Iterator[bytes]:
        for _ in range(mib):
            if stop.is_set():
                return
            yield chunk

    def sender() -> None:
        session = requests.Session()
        session.mount("http://", _SourceAdapter(ATTACK_ADDRESSES["huge"]))
        while not stop.is_set():
            try:
                codes[session.post(url + "/api/v1/tasks", data=body(), timeout=120).status_code] += 1
            except requests.RequestException:
                codes[-1] += 1

    threads = [threading.Thread(target=sender, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def run_phase(
    name: str,
    hub_pid: int,
    url: str,
    key: str,
    seconds: float,
    attack: str | None,
    size: int,
    cpus: set[int] | None,
) -> dict[str, object]:
    codes: Counter[int] = Counter()
    with MemoryWatch(hub_pid) as watch, MachineLoad() as load:
        process = AttackProcess(attack, url, size, cpus) if attack else None
        if process:
            time.sleep(1.0)  # let the attack ramp up before measuring
        rates, legit = legit_throughput(url, key, seconds)
        if process:
            codes = process.stop()
    return {"name": name, "watch": watch, "rates": rates, "legit": legit, "attack": codes, "load": load}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--body-mb", type=int, default=1024)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=500)
    parser.add_argument("--phases", default="idle,huge,burst,slow", help="which phases, comma-separated")
    parser.add_argument("--no-pinning", action="store_true", help="leave every process on every core")
    parser.add_argument("--attack", choices=ATTACKS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        return attack_main(args.attack, args.url, args.size)

    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    cores = sorted(os.sched_getaffinity(0))
    clients = set(cores[1:]) if len(cores) >= 2 and not args.no_pinning else None
    with scratch_folder(prefix="morag-bench-hub-abuse-") as tmp, MachineLoad() as load:
        results, url = run_phases(args, tmp, cores, clients)
    report(results, url)
    print(load.describe())
    return 0


def run_phases(
    args: argparse.Namespace, tmp: Path, cores: list[int], clients: set[int] | None
) -> tuple[list[dict[str, object]], str]:
    import os

    server = RedisServer(tmp / "redis")
    hub = None
    try:
        hub, url = start_hub(tmp, server.url, ("--tasks-per-key", "0", "--tasks-per-address", "0"))
        key = create_provisioned_key(server.url, "abuse-bench", "bench", None)
        if clients:
            _pin(server.proc.pid, {cores[0]})
            _pin(hub.pid, {cores[0]})
            _pin(os.getpid(), clients)
        wanted = set(args.phases.split(","))
        phases = [
            ("idle", "idle", None, 0),
            ("huge", f"huge body ({args.body_mb} MiB, no key)", "huge", args.body_mb),
            ("burst", f"burst ({args.burst} concurrent, bogus keys)", "burst", args.burst),
            ("slow", f"slow ({args.slow} trickling connections)", "slow", args.slow),
        ]
        results = [
            run_phase(title, hub.pid, url, key, args.seconds, attack, size, clients)
            for short, title, attack, size in phases
            if short == "idle" or short in wanted
        ]
    finally:
        with interrupts_deferred():
            if hub is not None:
                hub.stop()
            server.stop()
    return results, url


def report(results: list[dict[str, object]], url: str) -> None:
    idle_rates: list[float] = results[0]["rates"]  # type: ignore[assignment]
    idle_watch: MemoryWatch = results[0]["watch"]  # type: ignore[assignment]
    idle_rate = Spread.of(idle_rates).median or 1e-9
    baseline = idle_watch.baseline
    total_500 = 0
    print(f"\nhub at {url}; idle RSS {baseline:.0f} MiB; legitimate client from {LEGIT_ADDRESS}")
    for result in results:
        watch: MemoryWatch = result["watch"]  # type: ignore[assignment]
        attack: Counter[int] = result["attack"]  # type: ignore[assignment]
        legit: Counter[int] = result["legit"]  # type: ignore[assignment]
        rates: list[float] = result["rates"]  # type: ignore[assignment]
        load: MachineLoad = result["load"]  # type: ignore[assignment]
        fives = attack[500] + legit[500]
        total_500 += fives
        rate = Spread.of(rates).format("tasks/s", of="blocks")
        ratio = Spread.of(r / idle_rate for r in rates).format("×", digits=2, of="blocks")
        print(
            f"- {result['name']}: peak RSS {watch.peak:.0f} MiB (+{watch.peak - baseline:.0f}), "
            f"500s {fives}, attack answers {dict(sorted(attack.items()))}, "
            f"machine {load.busy_percent:.0f} % busy"
        )
        print(f"    legit {rate} {dict(sorted(legit.items()))}")
        print(f"    legit / idle's median: {ratio}")
    print(f"500s in all: {total_500}  (-1: connection error; -2: the hub closed a slow connection)")


if __name__ == "__main__":
    raise SystemExit(main())
