"""What a converter child costs per task, and how much memory real documents add in one.

Usage: ``python bench/converter_child.py [FILE ...]`` (default: the bundled samples and the PDFs Debian
ships under /usr/share/doc, where present). For each file it prints the best of 10 runs (after an
untimed one) of the processor called in-process, in a forked converter child and in a spawned one
(Windows' way), the fork's overhead in milliseconds and as a ratio; for PDFs also pypdfium2 called
directly (issue 14's baseline: PDF extraction within 3x of it, the child's start included). Then the
resident memory each conversion added in its child (its peak, ``VmHWM``, less its RSS at the start):
``MORAG_CONVERTER_MEMORY_MB`` bounds address space, which is at least this. Nothing is asserted.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's morag_worker, not an install

from morag_worker.core.config.settings import ConverterLimits  # noqa: E402
from morag_worker.core.processing import ProcessedContent, ProcessorRegistry, no_progress  # noqa: E402
from morag_worker.core.processing.sandbox import ConversionRequest, ConverterSandbox, StartMethod  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[1] / "resources" / "samples"
DEFAULT_FILES = [
    *(SAMPLES / name for name in ("sample.txt", "sample.pdf", "sample.docx", "sample.xlsx", "sample.html")),
    Path("/usr/share/doc/shared-mime-info/shared-mime-info-spec.pdf"),
    Path("/usr/share/doc/libtasn1-doc/libtasn1.pdf"),
]


def best(fn: Callable[[], Any], repeat: int = 10) -> float:
    fn()
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


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


def row(path: Path, processor: Any, fork: ConverterSandbox, spawn: ConverterSandbox) -> str:
    request = ConversionRequest(path)
    here = best(lambda: processor.process(path, {}, no_progress))
    forked = best(lambda: fork.convert(processor, request, no_progress))
    spawned = best(lambda: spawn.convert(processor, request, no_progress), repeat=3)
    direct = f"{best(lambda: pypdfium2_text(path)) * 1000:8.1f}ms" if path.suffix == ".pdf" else " " * 10
    added = fork.convert(Measured(processor), request, no_progress).metadata["added_mib"]
    return (
        f"{path.name[:34]:<34} {here * 1000:8.1f}ms {forked * 1000:7.1f}ms "
        f"{(forked - here) * 1000:+7.1f}ms {spawned * 1000:7.0f}ms {direct} {added:7.0f}MiB"
    )


def main(argv: list[str]) -> int:
    files = [Path(a) for a in argv] or [p for p in DEFAULT_FILES if p.is_file()]
    registry = ProcessorRegistry.default()
    fork = ConverterSandbox(ConverterLimits(), StartMethod.FORK)
    spawn = ConverterSandbox(ConverterLimits(), StartMethod.SPAWN)
    header = ("file", "in-process", "fork", "overhead", "spawn", "pypdfium2", "added")
    print("{:<34} {:>10} {:>9} {:>9} {:>9} {:>10} {:>9}".format(*header))
    for path in files:
        print(row(path, registry.resolve(None, None, path), fork, spawn))
    print(f"pid {os.getpid()}: fork overhead = fork + pipe + reader thread + reaping, per task")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
