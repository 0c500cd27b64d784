"""Writing around the page cache on its own: whole blocks direct, the rest cached, any file system."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path
from typing import Any

import pytest

from morag_worker.core.transfer import direct_copy

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not direct_copy.DIRECT_AVAILABLE, reason="O_DIRECT is Linux's"),
]

BLOCK = direct_copy.BLOCK


def written(path: Path, pieces: list[tuple[int, bytes]]) -> bytes:
    """Write ``pieces`` (offset, bytes) the way the download's disk thread does; the file's bytes."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        direct_fd = direct_copy.open_direct(fd)
        if direct_fd is None:
            pytest.skip("this file system has no O_DIRECT")
        disk = direct_copy.DirectFile(fd, direct_fd)
        buffer = direct_copy.new_buffer()
        try:
            for offset, data in pieces:
                buffer[: len(data)] = data
                with memoryview(buffer) as view:
                    disk.write(view[: len(data)], offset)
        finally:
            disk.close()
            buffer.close()
    finally:
        os.close(fd)
    return path.read_bytes()


def test_blocks_and_ragged_ends_land_where_they_belong(tmp_path: Path) -> None:
    body = random.Random(7).randbytes(3 * BLOCK + 5 + 2 * BLOCK + 123)
    head = 3 * BLOCK + 5  # a piece that ends mid-block, then one that starts there (a resume)
    align = -head % BLOCK
    pieces = [(0, body[:head]), (head, body[head : head + align]), (head + align, body[head + align :])]
    assert written(tmp_path / "f.bin", pieces) == body


def test_a_file_system_refusing_direct_writes_gets_cached_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwrite
    direct_calls: list[int] = []

    def refusing(fd: int, data: Any, offset: int) -> int:
        if _is_direct(fd):
            direct_calls.append(offset)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real(fd, data, offset)

    monkeypatch.setattr(direct_copy.os, "pwrite", refusing)
    body = random.Random(8).randbytes(4 * BLOCK + 17)
    assert written(tmp_path / "f.bin", [(0, body[: 2 * BLOCK]), (2 * BLOCK, body[2 * BLOCK :])]) == body
    assert direct_calls == [0]  # refused once, then never asked again


def _is_direct(fd: int) -> bool:
    import fcntl  # not on Windows, where this module is skipped

    return bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
