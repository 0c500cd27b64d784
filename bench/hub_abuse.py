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

Attackers connect from 127.0.0.1; the legitimate client, from 127.0.0.2 (another address, as in
real life), creates tasks (``POST /api/v1/tasks`` for a URL, queued, no worker) one after another and
counts the 201s. For each phase it prints the hub's peak RSS and its growth over the idle baseline,
the attack's answers by status (500s counted apart), and the legitimate throughput as a ratio to
idle. Targets (issue 10): a single abusive request adds < 50 MB, zero 500s, throughput >= 0.5x idle.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import requests
from requests.adapters import HTTPAdapter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from morag_worker.core.server.acl import create_provisioned_key  # noqa: E402
from tests.conftest import start_hub  # noqa: E402
from tests.processes import MemoryWatch, RedisServer  # noqa: E402

LEGIT_ADDRESS = "127.0.0.2"


class _SourceAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: object, **kwargs: object) -> None:
        kwargs["source_address"] = (LEGIT_ADDRESS, 0)
        super().init_poolmanager(*args, **kwargs)  # type: ignore[arg-type]


def legit_throughput(url: str, key: str, seconds: float) -> tuple[float, Counter[int]]:
    """Tasks created per second by one client creating them one after another."""
    session = requests.Session()
    session.mount("http://", _SourceAdapter())
    codes: Counter[int] = Counter()
    body = {"url": "http://example.org/input.txt", "content_type": "text/plain"}
    created = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            response = session.post(url + "/api/v1/tasks", json=body, headers={"X-API-Key": key}, timeout=30)
        except requests.RequestException:
            codes[-1] += 1
            continue
        codes[response.status_code] += 1
        if response.status_code == 201:
            created += 1
        elif response.status_code in (429, 503):
            time.sleep(0.05)
    return created / seconds, codes


async def _status(reader: asyncio.StreamReader) -> int:
    line = await reader.readline()
    parts = line.split()
    return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else -1


async def burst(host: str, port: int, connections: int, stop: threading.Event, codes: Counter[int]) -> None:
    async def one(n: int) -> None:
        request = (
            f"GET /api/v1/workers HTTP/1.1\r\nHost: hub\r\nAuthorization: Bearer bogus-{n}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port)
                writer.write(request)
                codes[await asyncio.wait_for(_status(reader), 60)] += 1
                writer.close()
            except (OSError, TimeoutError):
                codes[-1] += 1
                await asyncio.sleep(0.05)

    await asyncio.gather(*(one(n) for n in range(connections)))


async def slow(host: str, port: int, connections: int, stop: threading.Event, codes: Counter[int]) -> None:
    async def one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port)
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


def huge_bodies(url: str, mib: int, stop: threading.Event, codes: Counter[int]) -> None:
    chunk = b"{" + b" " * (1024 * 1024 - 1)

    def body() -> Iterator[bytes]:
        for _ in range(mib):
            if stop.is_set():
                return
            yield chunk

    def sender() -> None:
        while not stop.is_set():
            try:
                codes[requests.post(url + "/api/v1/tasks", data=body(), timeout=120).status_code] += 1
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
    attack: Callable[[threading.Event, Counter[int]], None] | None,
) -> dict[str, object]:
    stop = threading.Event()
    codes: Counter[int] = Counter()
    thread = threading.Thread(target=attack, args=(stop, codes), daemon=True) if attack else None
    with MemoryWatch(hub_pid) as watch:
        if thread:
            thread.start()
            time.sleep(1.0)  # let the attack ramp up before measuring
        rate, legit = legit_throughput(url, key, seconds)
        stop.set()
        if thread:
            thread.join(timeout=180)
    return {"name": name, "watch": watch, "rate": rate, "legit": legit, "attack": codes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--body-mb", type=int, default=1024)
    parser.add_argument("--burst", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=500)
    args = parser.parse_args()

    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))
    tmp = Path(tempfile.mkdtemp(prefix="hub-abuse-"))
    server = RedisServer(tmp / "redis")
    hub = None
    try:
        hub, url = start_hub(tmp, server.url, ("--tasks-per-key", "0", "--tasks-per-address", "0"))
        key = create_provisioned_key(server.url, "abuse-bench", "bench", None)
        host, port = url.removeprefix("http://").split(":")

        def in_loop(coro: Callable[..., object], n: int) -> Callable[[threading.Event, Counter[int]], None]:
            return lambda stop, codes: asyncio.run(coro(host, int(port), n, stop, codes))  # type: ignore[arg-type]

        phases = [
            ("idle", None),
            (f"huge body ({args.body_mb} MiB, no key)", lambda s, c: huge_bodies(url, args.body_mb, s, c)),
            (f"burst ({args.burst} concurrent, bogus keys)", in_loop(burst, args.burst)),
            (f"slow ({args.slow} trickling connections)", in_loop(slow, args.slow)),
        ]
        results = [run_phase(name, hub.pid, url, key, args.seconds, attack) for name, attack in phases]
        idle_rate = float(results[0]["rate"]) or 1e-9  # type: ignore[arg-type]
        baseline = results[0]["watch"].baseline  # type: ignore[attr-defined]
        total_500 = 0
        print(f"\nhub at {url}; idle RSS {baseline:.0f} MiB; legitimate client from {LEGIT_ADDRESS}")
        for result in results:
            watch = result["watch"]
            attack: Counter[int] = result["attack"]  # type: ignore[assignment]
            legit: Counter[int] = result["legit"]  # type: ignore[assignment]
            fives = attack[500] + legit[500]
            total_500 += fives
            print(
                f"- {result['name']}: peak RSS {watch.peak:.0f} MiB (+{watch.peak - baseline:.0f}), "  # type: ignore[attr-defined]
                f"500s {fives}, attack answers {dict(sorted(attack.items()))}, "
                f"legit {result['rate']:.1f} tasks/s = {float(result['rate']) / idle_rate:.2f}x idle "  # type: ignore[arg-type]
                f"{dict(sorted(legit.items()))}"
            )
        print(f"500s in all: {total_500}  (-1: connection error; -2: the hub closed a slow connection)")
    finally:
        if hub is not None:
            hub.stop()
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
