"""What a converter child costs per task, and how much memory real documents add in one.

Usage: ``python bench/converter_child.py [--runs 10] [--gap-ms 20] [FILE ...]`` (default: the bundled
samples and the PDFs Debian ships under /usr/share/doc, where present). For each file it prints the
median of ``--runs`` rounds (after an untimed one), with the spread, of the processor called
in-process, in a forked converter child started on demand, and in the waiting spare child (what the
worker does, issue 14); each round runs every way once, ``--gap-ms`` after the previous one (a worker
stores a result and fetches the next task between two conversions; the spare gets that time to be
ready). Then the spare's and the on-demand child's overhead over in-process, round by round, and the
CPU time per task of the worker and its children together, each way. For PDFs also pypdfium2 called
directly and each child's time as a ratio to it, round by round (issue 14's target: PDF extraction
within 3x of pypdfium2, the child's start included). Spawned children (Windows' way), a third of the
rounds: on demand, and from a spare given ``--spawn-gap-ms`` to import. Last, the resident memory each
conversion added in its child (its peak, ``VmHWM``, less its RSS at the start):
``MORAG_CONVERTER_MEMORY_MB`` bounds address space, which is at least this. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's morag_worker, not an install

from bench.measure import MachineLoad, Spread, paired_ratios  # noqa: E402
from morag_worker.core.config.settings import ConverterLimits  # noqa: E402
from morag_worker.core.processing import ProcessedContent, ProcessorRegistry, no_progress  # noqa: E402
from morag_worker.core.processing.sandbox import ConversionRequest, ConverterSandbox, StartMethod  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "resources" / "samples"
DEFAULT_FILES = [
    *(SAMPLES / name for name in ("sample.txt", "sample.pdf", "sample.docx", "sample.xlsx", "sample.html")),
    Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
    Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
]


Way = tuple[Callable[[], Any], Callable[[], Any]]  # (prepare, run)


def timings(ways: dict[str, Way], rounds: int) -> dict[str, list[float]]:
    """``rounds`` timed rounds after an untimed one; each round runs every way's ``(prepare, run)``
    once, timing ``run`` only, so the ways are measured side by side."""
    for prepare, run in ways.values():
        prepare()
        run()  # pays for imports and caches
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(rounds):
        for name, (prepare, run) in ways.items():
            prepare()
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return times


def cpu_seconds() -> float:
    """CPU time of this process and of its children reaped so far."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cpu_per_task(prepare: Callable[[], Any], run: Callable[[], Any], rounds: int) -> float:
    """CPU seconds per ``run`` of this process and its children, preparing included (a spare is
    started and a used child reaped then); a child reaped after the last run is not counted."""
    before = cpu_seconds()
    for _ in range(rounds):
        prepare()
        run()
    prepare()
    return (cpu_seconds() - before) / rounds


def pypdfium2_text(path: Path) -> str:
    import pypdfium2

    document = pypdfium2.PdfDocument(path)
    try:
        return "\n".join(page.get_textpage().get_text_range() for page in document)
    finally:
        document.close()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Measured:
    """Wraps a processor; in the child, reports the address space the conversion added as metadata."""

    def __init__(self, processor: Any) -> None:
        self.name = processor.name
        self._processor = processor

    def process(self, path: Path, options: Any, progress: Any) -> ProcessedContent:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM restarts from the present RSS
        start = _status_kib("VmRSS")
        result = self._processor.process(path, options, progress)
        return ProcessedContent(result.markdown, {"added_mib": (_status_kib("VmHWM") - start) / 1024})


@dataclass
class Sandboxes:
    """The four ways a conversion runs in a child: forked or spawned, on demand or from a spare."""

    fork: ConverterSandbox
    fork_spare: ConverterSandbox
    spawn: ConverterSandbox
    spawn_spare: ConverterSandbox
    gap_s: float
    spawn_gap_s: float

    @classmethod
    def make(cls, gap_s: float, spawn_gap_s: float) -> Sandboxes:
        limits = ConverterLimits()
        return cls(
            ConverterSandbox(limits, StartMethod.FORK),
            ConverterSandbox(limits, StartMethod.FORK, spare=True),
            ConverterSandbox(limits, StartMethod.SPAWN),
            ConverterSandbox(limits, StartMethod.SPAWN, spare=True),
            gap_s,
            spawn_gap_s,
        )

    def pause(self) -> None:
        time.sleep(self.gap_s)

    def spare_waiting(self) -> None:
        self.fork_spare.spare_ready(timeout=30)
        time.sleep(self.gap_s)

    def spawned_spare_waiting(self) -> None:
        self.spawn_spare.start_spare()
        self.spawn_spare.spare_ready(timeout=30)
        time.sleep(self.spawn_gap_s)

    def close(self) -> None:
        for sandbox in (self.fork, self.fork_spare, self.spawn, self.spawn_spare):
            sandbox.close()


def report(path: Path, processor: Any, boxes: Sandboxes, runs: int) -> str:
    request = ConversionRequest(path)
    ways: dict[str, Way] = {
        "here": (boxes.pause, lambda: processor.process(path, {}, no_progress)),
        "on demand": (boxes.pause, lambda: boxes.fork.convert(processor, request, no_progress)),
        "spare": (boxes.spare_waiting, lambda: boxes.fork_spare.convert(processor, request, no_progress)),
    }
    if path.suffix == ".pdf":
        ways["pypdfium2"] = (boxes.pause, lambda: pypdfium2_text(path))
    times = timings(ways, runs)
    cpu = {name: cpu_per_task(*ways[name], runs) * 1000 for name in ("on demand", "spare")}
    spawned = timings(
        {
            "on demand": (boxes.pause, lambda: boxes.spawn.convert(processor, request, no_progress)),
            "spare": (
                boxes.spawned_spare_waiting,
                lambda: boxes.spawn_spare.convert(processor, request, no_progress),
            ),
        },
        max(1, runs // 3),
    )
    added = boxes.fork.convert(Measured(processor), request, no_progress).metadata["added_mib"]
    here, demand, spare = times["here"], times["on demand"], times["spare"]
    lines = [
        f"{path.name}:",
        f"  in-process         {Spread.of(here).scaled(1000).format('ms')}",
        f"  forked on demand   {Spread.of(demand).scaled(1000).format('ms')}",
        f"  forked spare       {Spread.of(spare).scaled(1000).format('ms')}",
        f"  overhead           spare {(Spread.of(spare).median - Spread.of(here).median) * 1000:+.1f} ms, "
        f"on demand {(Spread.of(demand).median - Spread.of(here).median) * 1000:+.1f} ms on the medians; "
        f"spare / on demand {paired_ratios(spare, demand).format('x', 2)}",
        f"  cpu per task       spare {cpu['spare']:.1f} ms, on demand {cpu['on demand']:.1f} ms "
        "(worker and children)",
        f"  spawned on demand  {Spread.of(spawned['on demand']).scaled(1000).format('ms', 0)}",
        f"  spawned spare      {Spread.of(spawned['spare']).scaled(1000).format('ms', 0)} "
        f"(given {boxes.spawn_gap_s * 1000:.0f} ms to start)",
    ]
    if path.suffix == ".pdf":
        direct = times["pypdfium2"]
        lines.append(f"  pypdfium2          {Spread.of(direct).scaled(1000).format('ms')}")
        lines.append(f"  spare / pypdfium2      {paired_ratios(spare, direct).format('x', 2)} (target <= 3x)")
        lines.append(f"  on demand / pypdfium2  {paired_ratios(demand, direct).format('x', 2)}")
    lines.append(f"  memory the conversion added in its child: {added:.0f} MiB")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed rounds (default 10)")
    parser.add_argument("--gap-ms", type=float, default=20, help="pause before each run (default 20)")
    parser.add_argument(
        "--spawn-gap-ms", type=float, default=1000, help="a spawned spare's time to start (default 1000)"
    )
    parser.add_argument("files", nargs="*", type=Path, help="documents (default: samples and Debian's PDFs)")
    args = parser.parse_args(argv)
    files = args.files or [p for p in DEFAULT_FILES if p.is_file()]
    registry = ProcessorRegistry.default()
    boxes = Sandboxes.make(args.gap_ms / 1000, args.spawn_gap_ms / 1000)
    try:
        with MachineLoad() as load:
            for path in files:
                print(report(path, registry.resolve(None, None, path), boxes, args.runs), flush=True)
    finally:
        boxes.close()
    print(
        f"pid {os.getpid()}: on demand = fork + limits + pipe + reader thread + reaping, per task; "
        f"a spare is forked and reaped off the task's path; {args.gap_ms:g} ms between runs"
    )
    print(load.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
