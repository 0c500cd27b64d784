"""Linux's zero-copy body copy: socket -> pipe -> file with ``splice(2)``, hashed in the page cache.

Copying a body through user space costs two copies per byte (``recv`` into a buffer, ``write`` out
of it) and the copy out of user memory is the dearest part of a download after SHA-256. ``splice``
moves a plain-TCP body into the page cache with one copy made by the kernel. The bytes are then
hashed where they lie, through a map of the page cache (:func:`hash_file_range`), on the
download's helper thread, where hashlib releases the GIL, so hashing overlaps receiving on a
second core.

:func:`body_socket` says when this path applies: Linux, a plain TCP socket (not TLS), an identity
body of known length. Everything else (Windows, macOS, TLS, encoded or chunked bodies) takes the
portable copy in ``download_state.py``, which the downloader's ``zero_copy=False`` also forces.
:class:`SplicePipe` runs on the downloading thread; :func:`hash_file_range` on the helper thread.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import mmap
import os
import select
import socket
import sys
from types import TracebackType

from urllib3.response import HTTPResponse

__all__ = [
    "PIPE_BYTES",
    "SPLICE_AVAILABLE",
    "SplicePipe",
    "body_socket",
    "hash_file_range",
]

SPLICE_AVAILABLE = sys.platform == "linux" and hasattr(os, "splice")
# The pipe's default size. Larger pipes (F_SETPIPE_SZ, 1 MiB) make larger writes into the page
# cache, which the kernel backs with large folios; on the bench's VM those come from memory the
# host has taken back and cost twice the CPU: 1 MiB pipes ran at 305-637 MiB/s, 64 KiB ones at
# 556-915 MiB/s, in alternating runs after a curl download.
PIPE_BYTES = 64 * 1024
_NO_FILE_SPLICE = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP)  # a file system without splice_write


def body_socket(raw: HTTPResponse) -> socket.socket | None:
    """The plain TCP socket a body of known length can be spliced from; None where it cannot.

    Call it before reading the body; only the first ``read1`` of at least
    ``io.DEFAULT_BUFFER_SIZE`` bytes empties what ``http.client`` buffered past the headers.
    """
    if not SPLICE_AVAILABLE or raw.chunked or raw.length_remaining is None:
        return None
    # The socket the body is read from: under http.client's response, its buffered reader and that
    # reader's SocketIO (the connection's own ``sock`` is None once a response will close it).
    fp = getattr(raw, "_fp", None)
    if not isinstance(fp, http.client.HTTPResponse):
        return None
    # Once the body is spliced to its end, the downloader's response.close() closes this
    # http.client response (not the connection, already back in its pool), as reading it would.
    sock = getattr(getattr(getattr(fp, "fp", None), "raw", None), "_sock", None)
    if type(sock) is not socket.socket:  # TLS (ssl.SSLSocket) and anything wrapped are copied
        return None
    if sock.gettimeout() is None:  # a blocking socket: a splice from it could wait for ever
        return None
    return sock


class SplicePipe:
    """A pipe that bodies pass through on their way from a socket to a file, without user space."""

    def __init__(self) -> None:
        self._read, self._write = os.pipe()  # Linux's default size, PIPE_BYTES
        self._file_splice = True

    def close(self) -> None:
        os.close(self._read)
        os.close(self._write)

    def __enter__(self) -> SplicePipe:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def fill(self, sock: socket.socket, most: int, timeout: float) -> int:
        """Move up to ``most`` bytes (at most :data:`PIPE_BYTES`) from ``sock`` into the pipe; 0 at
        the end of the stream.

        Raises:
            TimeoutError: Nothing arrived for ``timeout`` seconds.
            OSError: The connection failed.
        """
        fd = sock.fileno()
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        while True:
            try:
                return os.splice(fd, self._write, min(most, PIPE_BYTES), flags=flags)
            except BlockingIOError:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
                if not poller.poll(max(timeout, 0.001) * 1000):
                    raise TimeoutError("the socket stayed silent") from None

    def drain(self, fd: int, count: int) -> None:
        """Move ``count`` bytes from the pipe to ``fd`` at its offset (all that ``fill`` put in)."""
        while count:
            if self._file_splice:
                try:
                    count -= os.splice(self._read, fd, count, flags=os.SPLICE_F_MOVE)
                    continue
                except OSError as exc:
                    if exc.errno not in _NO_FILE_SPLICE:
                        raise
                    self._file_splice = False  # this file system cannot splice: copy from now on
            count -= _copy_from_pipe(self._read, fd, count)


def _copy_from_pipe(pipe: int, fd: int, count: int) -> int:
    data = os.read(pipe, count)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return len(data)


def hash_file_range(hasher: hashlib._Hash, fd: int, start: int, end: int) -> None:
    """Hash the file's bytes ``[start, end)`` where they lie, in the page cache: through a read-only
    map, which costs page-table work instead of a copy of every byte into a buffer.

    Only for a file no one else shortens meanwhile (a mapped page past the end is a SIGBUS): the
    download's own, in its private folder, which it truncates only after hashing has settled.
    """
    base = start - start % mmap.ALLOCATIONGRANULARITY
    with (
        mmap.mmap(fd, end - base, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=base) as mapped,
        memoryview(mapped) as view,
    ):
        hasher.update(view[start - base :])
