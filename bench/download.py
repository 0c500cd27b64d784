"""Benchmark: our Downloader against curl on one large file over loopback (a script, not a test).

    python bench/download.py [--size-mib 1024] [--runs 3]

Generates a random file (os.urandom, 1 MiB blocks) in a temporary directory and serves it from a
separate process, with ``sendfile`` (so the server costs little CPU) and then with Python's own
``http.server`` (64 KiB userspace copies: a server that costs CPU; ``--server`` picks one). Then, in
the same run, fetches it with ``curl -s -o FILE URL`` (timed by curl's own ``%{time_total}``), with
our Downloader (on Linux the body is received into buffers of ours, hashed on a second thread and
written around the page cache with O_DIRECT by a third, or, where the disk holds it back and that
proved faster, hashed as it arrives and written through the cache wherever the disk is busy
(``cache_route.py``); elsewhere 1 MiB chunks through the page cache; verified either way), and with
the naive seed approach (``requests`` ``iter_content(8192)``, hash, write, on one thread) as a
baseline. The Python methods run in a child process that reports its own time and peak RSS
(``ru_maxrss``).
Before each timed run the page cache is synced, so one run's writeback does not slow the next, and
the order of the methods rotates between runs. Prints per server and method the median throughput of
``--runs`` runs with the lowest and highest, the ratio ours/curl run by run (median and spread;
target >= 1.0), the ratio to the SHA-256 bound measured in the same run (hashlib over the same
file's bytes in memory, one core; target >= 0.8), the disk's own speed in the same run (the same
bytes written with O_DIRECT, a buffer of ours at a time, one write in flight, as ours writes a large
body; Linux) and the share of ours written that way, our peak RSS over all runs (target < 80 MB),
the CPU time each method and the server spent per GiB (user + system, all threads; Linux), and the
machine's load during the runs. The temporary directory is removed however the bench ends.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import mmap
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's morag_worker and bench, not an install

from bench.measure import MachineLoad, Spread, interrupts_deferred, paired_ratios, scratch_folder  # noqa: E402
from morag_worker.core.transfer.direct_copy import BUFFER_BYTES  # noqa: E402

MiB = 1024 * 1024
METHODS = {
    "curl": "curl -s -o",
    "ours": "ours (sha256 verified)",
    "seed": "seed (requests 8 KiB, sha256)",
}
SHA_BOUND = "SHA-256 bound (hashlib, in memory)"
DIRECT_BLOCK = BUFFER_BYTES  # ours writes a large body's buffers so
DISK_BOUND = f"disk (O_DIRECT {DIRECT_BLOCK // MiB} MiB writes)"
SERVERS = {"sendfile": "sendfile server", "http.server": "Python http.server"}


def serve(path: Path, kind: str) -> None:
    """Serve ``path``: with sendfile at every URL, or with Python's own ``http.server``
    (``SimpleHTTPRequestHandler``: userspace copies of 64 KiB) from its folder; print the port;
    stop when stdin closes."""
    size = path.stat().st_size
    if kind == "http.server":
        handler: Any = functools.partial(_QuietFiles, directory=str(path.parent))
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        print(httpd.server_address[1], flush=True)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        sys.stdin.read()
        httpd.shutdown()
        return

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.send_header("ETag", '"bench"')
            self.end_headers()
            with path.open("rb") as fh:
                self.connection.sendfile(fh)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(httpd.server_address[1], flush=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    sys.stdin.read()  # the parent closes our stdin to stop us
    httpd.shutdown()


class _QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def fetch(url: str, dest: Path, method: str, sha256: str) -> None:
    """Child process: one download by ``method``; print a JSON line of measurements."""
    import requests

    from morag_worker.core.transfer.downloader import Downloader, DownloadLimits

    origin = "/".join(url.split("/", 3)[:3])
    rss_before = _rss_kib()
    cpu_before = _cpu_self()
    started = time.perf_counter()
    around_cache = 0
    if method == "ours":
        import structlog.testing

        limits = DownloadLimits(max_bytes=64 * 1024 * MiB, disk_reserve_bytes=0)
        with (
            Downloader(limits=limits, trusted_origins=[origin]) as downloader,
            structlog.testing.capture_logs() as logs,
        ):
            size = downloader.download(url, dest, expected_sha256=sha256).size
        around_cache = next(e for e in logs if e["event"] == "download.done")["around_cache"]
    else:
        digest, size = hashlib.sha256(), 0
        with (
            requests.get(url, stream=True, timeout=(10, 30)) as response,
            (dest / "input.bin").open("wb") as fh,
        ):
            for chunk in response.iter_content(8192):
                digest.update(chunk)
                fh.write(chunk)
                size += len(chunk)
        if digest.hexdigest() != sha256:
            raise SystemExit("seed download: wrong SHA-256")
    seconds = time.perf_counter() - started
    cpu = _cpu_self() - cpu_before
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    measured = {"seconds": seconds, "cpu": cpu, "bytes": size, "peak_kib": peak, "start_kib": rss_before}
    measured["around_cache"] = around_cache
    print(json.dumps(measured))


def _cpu_self() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def _cpu_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # children waited for
    return usage.ru_utime + usage.ru_stime


def _cpu_of(pid: int) -> float | None:
    """A running process's CPU seconds (user + system) from /proc; None where there is no /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def make_file(path: Path, size_mib: int) -> str:
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        for _ in range(size_mib):
            block = os.urandom(MiB)
            digest.update(block)
            fh.write(block)
    return digest.hexdigest()


def run_curl(url: str, work: Path, size: int) -> dict[str, Any]:
    out = work / "curl.bin"
    # curl's own transfer time, so that neither side counts its process start-up.
    command = ["curl", "-s", "-o", str(out), "-w", "%{time_total}", url]
    cpu_before = _cpu_children()
    seconds = float(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    cpu = _cpu_children() - cpu_before
    if out.stat().st_size != size:
        raise SystemExit("curl fetched the wrong size")
    out.unlink()
    return {"seconds": seconds, "cpu": cpu}


def sha_bound(source: Path) -> None:
    """Child process: hashlib over the file's bytes already in memory (16 MiB at a time, read
    before the clock runs), on one core; print a JSON line. A child, so that neither its memory
    nor the bench's own counts in the downloads' peak RSS (Linux keeps ``ru_maxrss`` across exec)."""
    digest, seconds = hashlib.sha256(), 0.0
    with source.open("rb") as fh:
        while block := fh.read(16 * MiB):
            started = time.perf_counter()
            digest.update(block)
            seconds += time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "cpu": seconds}))  # one thread, busy all along


def disk_bound(source: Path, dest: Path) -> None:
    """Child process: the source's bytes written to ``dest`` with O_DIRECT, a buffer of ours at a time
    and one write in flight, as ours writes a large body; only the writes are timed (each block is read
    before its clock runs). Print a JSON line."""
    buffer = mmap.mmap(-1, DIRECT_BLOCK)  # page-aligned, as O_DIRECT needs
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_DIRECT, 0o600)
    seconds = cpu = 0.0
    offset = 0
    try:
        with source.open("rb", buffering=0) as fh:
            while count := fh.readinto(buffer):
                started, cpu_started = time.perf_counter(), time.process_time()
                os.pwrite(fd, memoryview(buffer)[:count], offset)
                seconds += time.perf_counter() - started
                cpu += time.process_time() - cpu_started
                offset += count
    finally:
        os.close(fd)
        dest.unlink()
    print(json.dumps({"seconds": seconds, "cpu": cpu}))


def run_disk_bound(source: Path, work: Path) -> dict[str, Any] | None:
    """How fast the disk takes what ours writes around the page cache; None where there is no O_DIRECT."""
    if not hasattr(os, "O_DIRECT"):
        return None
    os.sync()
    command = [sys.executable, __file__, "--disk-bound", str(source), "--dest", str(work / "disk.bin")]
    try:
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    except subprocess.CalledProcessError:  # a file system without O_DIRECT (tmpfs before Linux 6.6)
        return None
    measured: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return measured


def run_sha_bound(source: Path) -> dict[str, Any]:
    """The SHA-256 bound: no download that verifies its bytes can go faster on one core."""
    command = [sys.executable, __file__, "--sha-bound", str(source)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    measured: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return measured


def run_python(url: str, dest: Path, method: str, sha256: str) -> dict[str, Any]:
    dest.mkdir()
    command = [sys.executable, __file__, "--fetch", url, "--dest", str(dest), "--method", method]
    output = subprocess.run([*command, "--sha", sha256], check=True, capture_output=True, text=True).stdout
    shutil.rmtree(dest)
    measured: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return measured


def measure(
    url: str, work: Path, sha256: str, size_mib: int, runs: int, kind: str, server_pid: int
) -> dict[str, list[dict[str, Any]]]:
    names = list(METHODS)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in [*names, "sha"]}
    for run in range(runs):
        for name in names[run % 3 :] + names[: run % 3]:
            os.sync()  # start every timed run without the previous run's dirty pages
            server_before = _cpu_of(server_pid)
            if name == "curl":
                measured = run_curl(url, work, size_mib * MiB)
            else:
                measured = run_python(url, work / name, name, sha256)
            server_after = _cpu_of(server_pid)
            if server_before is not None and server_after is not None:
                measured["server_cpu"] = server_after - server_before
            results[name].append(measured)
        results["sha"].append(run_sha_bound(work / "source.bin"))
        if (disk := run_disk_bound(work / "source.bin", work)) is not None:
            results.setdefault("disk", []).append(disk)
        last = {name: done[-1] for name, done in results.items()}
        timings = ", ".join(f"{k} {v['seconds']:.2f} s (cpu {v['cpu']:.2f} s)" for k, v in last.items())
        print(f"{kind} run {run + 1}/{runs}: {timings}")
    return results


def report(results: dict[str, list[dict[str, Any]]], size_mib: int, kind: str) -> None:
    runs = len(results["curl"])
    print(f"\n{size_mib} MiB over loopback from a {SERVERS[kind]}, {runs} runs per method")
    for name, done in results.items():
        rate = Spread.of(size_mib / run["seconds"] for run in done)
        label = METHODS.get(name, DISK_BOUND if name == "disk" else SHA_BOUND)
        line = f"  {label:<34} {rate.format('MiB/s', digits=0)}"
        if "peak_kib" in done[0]:
            peak = max(r["peak_kib"] for r in done) / 1024
            start = Spread.of(r["start_kib"] / 1024 for r in done).median
            line += f"   peak RSS {peak:5.1f} MiB (after imports {start:.1f} MiB)"
        print(line)
    curl = [run["seconds"] for run in results["curl"]]
    ours = [run["seconds"] for run in results["ours"]]
    seed = [run["seconds"] for run in results["seed"]]
    # Run by run: the methods of one run ran one after another, so a busy spell hits them alike.
    print(f"  throughput ours/curl: {paired_ratios(curl, ours).format('×', digits=2)} (target >= 1.0)")
    print(f"  throughput ours/seed: {paired_ratios(seed, ours).format('×', digits=2)}")
    sha = [run["seconds"] for run in results["sha"]]
    to_bound = paired_ratios(sha, ours)
    print(f"  throughput ours/SHA-256 bound: {to_bound.format('×', digits=2)} (target >= 0.8)")
    if results.get("disk"):
        disk = paired_ratios(sha, [run["seconds"] for run in results["disk"]])
        print(f"  the disk alone, O_DIRECT writes / SHA-256 bound: {disk.format('×', digits=2)}")
    print("  (ours and seed hash SHA-256 on the fly; curl only writes the file)")
    print(f"  CPU s/GiB, median (user + system): {cpu_per_gib(results, size_mib)}")
    why = "why under 0.8× the bound: " if to_bound.median < 0.8 else ""
    print(f"  {why}{cpu_ceiling(results, size_mib)}")


def _median_cpu(done: list[dict[str, Any]], key: str, gib: float) -> float:
    return Spread.of(run.get(key, 0.0) / gib for run in done).median


def cpu_ceiling(results: dict[str, list[dict[str, Any]]], size_mib: int) -> str:
    """The fastest ours could have gone in this run's CPU figures, on an otherwise idle machine:
    no faster than its hashing thread (the bound's CPU per GiB), and no faster than the cores can
    supply its CPU and the server's together."""
    gib, cores = size_mib / 1024, os.cpu_count() or 1
    ours, bound = _median_cpu(results["ours"], "cpu", gib), _median_cpu(results["sha"], "cpu", gib)
    server = _median_cpu(results["ours"], "server_cpu", gib)
    floor = max((ours + server) / cores, bound)  # wall seconds per GiB, at best
    ceiling = (
        f"ours needs {ours:.2f} CPU s/GiB (SHA-256 alone {bound:.2f}) and the server {server:.2f}; "
        f"on {cores} cores that allows at most {1024 / floor:.0f} MiB/s, {bound / floor:.2f}× the bound, "
        f"if nothing else ran (curl, which does not hash, needs "
        f"{_median_cpu(results['curl'], 'cpu', gib):.2f})"
    )
    if results.get("disk"):
        disk = Spread.of(run["seconds"] / gib for run in results["disk"]).median
        share = Spread.of(run["around_cache"] / run["bytes"] for run in results["ours"]).median
        ceiling += (
            f"; the disk took the bytes at {1024 / disk:.0f} MiB/s ({bound / disk:.2f}× the bound) "
            f"written around the page cache, as ours wrote {share:.0%} of them (median; the rest "
            "through the cache, while trying it or where it was measured faster)"
        )
    return ceiling


def cpu_per_gib(results: dict[str, list[dict[str, Any]]], size_mib: int) -> str:
    """What each method cost the machine per GiB: its own CPU time (all threads) and the server's.
    A download that hashes cannot need less than the bound's CPU, and on 2 cores the client's and
    the server's together bound the wall time from below."""
    gib = size_mib / 1024
    parts = []
    for name in ("curl", "ours", "seed", "sha"):
        done = results[name]
        own = Spread.of(run["cpu"] / gib for run in done).median
        label = "bound" if name == "sha" else name
        if all("server_cpu" in run for run in done):
            server = Spread.of(run["server_cpu"] / gib for run in done).median
            parts.append(f"{label} {own:.2f} + server {server:.2f}")
        else:
            parts.append(f"{label} {own:.2f}")
    return "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the test file (default 1024)")
    parser.add_argument("--runs", type=int, default=3, help="runs per method; medians are shown (default 3)")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the files (default: a temp dir)")
    parser.add_argument(
        "--server",
        choices=[*SERVERS, "both"],
        default="both",
        help="which server(s) to fetch from (default both)",
    )
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sha-bound", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--disk-bound", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--fetch", help=argparse.SUPPRESS)
    parser.add_argument("--dest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--method", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--sha", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.server)
        return 0
    if args.sha_bound:
        sha_bound(args.sha_bound)
        return 0
    if args.disk_bound:
        disk_bound(args.disk_bound, args.dest)
        return 0
    if args.fetch:
        fetch(args.fetch, args.dest, args.method, args.sha)
        return 0
    if shutil.which("curl") is None:
        print("curl is not installed", file=sys.stderr)
        return 2

    with scratch_folder(prefix="morag-bench-download-", parent=args.dir) as work:
        source = work / "source.bin"
        started = time.perf_counter()
        sha256 = make_file(source, args.size_mib)
        print(f"generated {args.size_mib} MiB of random data in {time.perf_counter() - started:.1f} s")
        kinds = list(SERVERS) if args.server == "both" else [args.server]
        results: dict[str, dict[str, list[dict[str, Any]]]] = {}
        with MachineLoad() as load:
            for kind in kinds:
                results[kind] = serve_and_measure(source, work, sha256, args.size_mib, args.runs, kind)
    for kind, measured in results.items():
        report(measured, args.size_mib, kind)
    print(load.describe())
    return 0


def serve_and_measure(
    source: Path, work: Path, sha256: str, size_mib: int, runs: int, kind: str
) -> dict[str, list[dict[str, Any]]]:
    command = [sys.executable, __file__, "--serve", str(source), "--server", kind]
    server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdin is not None
        url = f"http://127.0.0.1:{server.stdout.readline().strip()}/source.bin"
        return measure(url, work, sha256, size_mib, runs, kind, server.pid)
    finally:
        with interrupts_deferred():
            assert server.stdin is not None
            server.stdin.close()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
