"""What a converter child costs per task, and how much memory real documents add in one.

Usage: ``python bench/converter_child.py [--runs 10] [FILE ...]`` (default: the bundled samples and the
PDFs Debian ships under /usr/share/doc, where present). For each file it prints the median of ``--runs``
runs (after an untimed one), with the spread, of the processor called in-process, in a forked converter
child and in a spawned one (Windows' way, a third of the runs), and the fork's overhead; for PDFs also
pypdfium2 called directly and the forked child's time as a ratio to it, run by run (issue 14's target:
PDF extraction within 3x of pypdfium2, the child's start included). Then the resident memory each
conversion added in its child (its peak, ``VmHWM``, less its RSS at the start):
``MORAG_CONVERTER_MEMORY_MB`` bounds address space, which is at least this. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
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


def timings(fn: Callable[[], Any], repeat: int) -> list[float]:
    """``repeat`` timed runs of ``fn`` after an untimed one (which pays for imports and caches)."""
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


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


def report(path: Path, processor: Any, fork: ConverterSandbox, spawn: ConverterSandbox, runs: int) -> str:
    request = ConversionRequest(path)
    here = timings(lambda: processor.process(path, {}, no_progress), runs)
    forked = timings(lambda: fork.convert(processor, request, no_progress), runs)
    spawned = timings(lambda: spawn.convert(processor, request, no_progress), max(1, runs // 3))
    added = fork.convert(Measured(processor), request, no_progress).metadata["added_mib"]
    lines = [
        f"{path.name}:",
        f"  in-process   {Spread.of(here).scaled(1000).format('ms')}",
        f"  forked child {Spread.of(forked).scaled(1000).format('ms')}",
        f"  overhead     {paired_ratios(forked, here).format('x', 2)} in-process, "
        f"{(Spread.of(forked).median - Spread.of(here).median) * 1000:+.1f} ms on the medians",
        f"  spawned      {Spread.of(spawned).scaled(1000).format('ms', 0)}",
    ]
    if path.suffix == ".pdf":
        direct = timings(lambda: pypdfium2_text(path), runs)
        lines.append(f"  pypdfium2    {Spread.of(direct).scaled(1000).format('ms')}")
        lines.append(
            f"  forked child / pypdfium2 {paired_ratios(forked, direct).format('x', 2)} (target <= 3x)"
        )
    lines.append(f"  memory the conversion added in its child: {added:.0f} MiB")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per way (default 10)")
    parser.add_argument("files", nargs="*", type=Path, help="documents (default: samples and Debian's PDFs)")
    args = parser.parse_args(argv)
    files = args.files or [p for p in DEFAULT_FILES if p.is_file()]
    registry = ProcessorRegistry.default()
    fork = ConverterSandbox(ConverterLimits(), StartMethod.FORK)
    spawn = ConverterSandbox(ConverterLimits(), StartMethod.SPAWN)
    with MachineLoad() as load:
        for path in files:
            print(report(path, registry.resolve(None, None, path), fork, spawn, args.runs), flush=True)
    print(f"pid {os.getpid()}: fork overhead = fork + pipe + reader thread + reaping, per task")
    print(load.describe())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
