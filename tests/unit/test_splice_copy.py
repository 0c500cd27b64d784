"""The zero-copy pieces on their own: a socket's bytes through a pipe into a file, and hashing them back."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from morag_worker.core.transfer import splice_copy

pytestmark = [
    pytest.mark.unit,
    pytest.mark.skipif(not splice_copy.SPLICE_AVAILABLE, reason="splice(2) is Linux's"),
]

KiB = 1024


def send_all_then_close(sock: socket.socket, body: bytes) -> threading.Thread:
    def run() -> None:
        with sock:
            sock.sendall(body)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def pump(source: socket.socket, fd: int, pipe: splice_copy.SplicePipe) -> int:
    moved = 0
    while count := pipe.fill(source, 1 << 30, timeout=10):
        pipe.drain(fd, count)
        moved += count
    return moved


@pytest.mark.parametrize("file_splice", [True, False], ids=["splice", "no-file-splice"])
def test_a_socket_s_bytes_reach_the_file_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_splice: bool
) -> None:
    body = random.Random(3).randbytes(3 * 1024 * KiB + 7)
    if not file_splice:  # a file system without splice_write: the pipe is emptied by copying
        real = os.splice

        def no_file_splice(src: int, dst: int, count: int, *args: Any, **kwargs: Any) -> int:
            if os.path.isfile(f"/proc/self/fd/{dst}"):
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
            return real(src, dst, count, *args, **kwargs)

        monkeypatch.setattr(splice_copy.os, "splice", no_file_splice)
    ours, theirs = socket.socketpair()
    ours.settimeout(10)  # as requests leaves it: non-blocking underneath, so fill waits with poll
    sender = send_all_then_close(theirs, body)
    target = tmp_path / "out.bin"
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with ours, splice_copy.SplicePipe() as pipe:
            assert pump(ours, fd, pipe) == len(body)
    finally:
        os.close(fd)
        sender.join(timeout=10)
    assert target.read_bytes() == body


def test_a_silent_socket_times_out() -> None:
    ours, theirs = socket.socketpair()
    ours.settimeout(10)
    with ours, theirs, splice_copy.SplicePipe() as pipe, pytest.raises(TimeoutError):
        pipe.fill(ours, 100, timeout=0.05)


def test_hashing_file_ranges_in_place_matches_hashlib(tmp_path: Path) -> None:
    body = random.Random(5).randbytes(1024 * KiB + 3)
    target = tmp_path / "f.bin"
    target.write_bytes(body)
    fd = os.open(target, os.O_RDONLY)
    try:
        digest = hashlib.sha256()
        # Ranges that start and end off the page boundaries, as the helper thread gets them.
        for start, end in ((0, 1000), (1000, 70_001), (70_001, len(body))):
            splice_copy.hash_file_range(digest, fd, start, end)
    finally:
        os.close(fd)
    assert digest.hexdigest() == hashlib.sha256(body).hexdigest()
