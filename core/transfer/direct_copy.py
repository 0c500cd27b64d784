"""Linux: a large body received into our own buffers and written around the page cache (O_DIRECT).

Filling the page cache is, after SHA-256, the dearest part of a download: a copy into new pages
of cache, which on the bench's VM may each fault in the host (0.4-2 CPU s/GiB in the writing
thread, at random). With ``O_DIRECT`` the disk reads our buffer itself, so a body costs one copy
(the socket's into the buffer) plus SHA-256, which the download's helper thread computes from the
same buffer meanwhile, while a writer thread waits on the disk. After a curl download, 3 runs
each: 994-1173 MiB/s at 0.94-1.05 CPU s/GiB, against 748-955 MiB/s at 1.75-2.0 for splicing the
body into the page cache (``splice(2)``) and hashing it there.

What is written so is then not in the page cache: whoever reads it next reads the disk. Used
for a body of known length over plain TCP or TLS where :func:`open_direct` gets a descriptor
(Linux, a file system with ``O_DIRECT``); everything else is copied the portable way
(``download_state.py``). :meth:`DirectFile.write` runs on the disk thread, and with ``cached``
on the download's helper thread.

The trade holds while the disk takes bytes about as fast as SHA-256 hashes them. On a VM whose
disk took O_DIRECT writes at 450-730 MiB/s, direct writes alone held a 512 MiB download from
Python's ``http.server`` to 421 MiB/s (median of 8 runs; curl, into the page cache: 631). Where
the disk holds a download back and that proves faster (``cache_route.py``), it hashes each piece
on the receiving thread as it arrives and writes a buffer through the cache whenever the disk is
still busy with the last one (``download_state.py``): 633 MiB/s in the same runs. Hashing on the
helper thread instead, with those writes on a third one, gave 485: the helper then reads each
buffer after another core wrote it.
"""

from __future__ import annotations

import errno
import http.client
import mmap
import os
import socket
import sys

from urllib3.response import HTTPResponse

__all__ = [
    "BLOCK",
    "BUFFERS",
    "BUFFER_BYTES",
    "DIRECT_AVAILABLE",
    "DirectFile",
    "body_socket",
    "new_buffer",
    "open_direct",
]

MiB = 1024 * 1024
DIRECT_AVAILABLE = sys.platform == "linux" and hasattr(os, "O_DIRECT")
BLOCK = 4096  # offsets and lengths of direct writes are whole blocks of this (any disk's block fits)
# One receive buffer; BUFFERS of them are a download's own memory (16 MiB). Each buffer costs a
# hand-off to the hashing thread and one to the disk thread, and a wait for both: on a 2-vCPU VM
# such wake-ups are dear. Same-batch comparisons there (8-10 runs each, 512 MiB over loopback,
# a disk taking O_DIRECT writes at 1,000-1,800 MiB/s), 4 MiB buffers against 1 MiB ones: from a
# sendfile server 970-1,216 against 857-1,076 MiB/s in four batches, at 1.01-1.22 against
# 1.24-1.55 CPU s/GiB and a third of the context switches; from Python's http.server 964-1,101
# against 893-943 in two. 2 MiB fell between; 8 MiB x 2 matched 4 MiB x 4 with no buffer to
# spare. Where the disk was the bound (0.6-0.85x the SHA-256 bound, bench/download.py in three
# alternations) neither size won; with direct writes held to 450 MiB/s (a sleep after each,
# cache_route.py's case) 4 MiB received at 636-694 MiB/s against 707-708. An earlier VM had
# favoured 1 MiB over 2 MiB (by 5-18 %, and 44 % with the slow disk).
BUFFER_BYTES = 4 * MiB
BUFFERS = 4
# How a file system that opened the file O_DIRECT may still refuse a direct write.
_REFUSED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)})


def body_socket(raw: HTTPResponse) -> socket.socket | None:
    """The socket (plain or TLS) a body of known length can be received from directly; None otherwise.

    Only once a first ``read1`` of at least ``io.DEFAULT_BUFFER_SIZE`` bytes has emptied what
    ``http.client`` buffered past the headers is every byte left in the socket.
    """
    if not DIRECT_AVAILABLE or raw.chunked or raw.length_remaining is None:
        return None
    # The socket the body is read from: under http.client's response, its buffered reader and that
    # reader's SocketIO (the connection's own ``sock`` is None once a response will close it).
    # Once the body is received to its end, the downloader's response.close() closes this
    # http.client response (not the connection, already back in its pool), as reading it would.
    fp = getattr(raw, "_fp", None)
    if not isinstance(fp, http.client.HTTPResponse):
        return None
    sock = getattr(getattr(getattr(fp, "fp", None), "raw", None), "_sock", None)
    if not isinstance(sock, socket.socket):  # ssl.SSLSocket is one; urllib3's SSLTransport is not
        return None
    if sock.gettimeout() is None:  # a blocking socket: nothing would bound a wait for it
        return None
    return sock


def open_direct(fd: int) -> int | None:
    """A second descriptor of ``fd``'s file, for O_DIRECT writes; None where there is none."""
    if not DIRECT_AVAILABLE:
        return None
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:  # no /proc, or a file system without O_DIRECT (tmpfs before Linux 6.6)
        return None


def new_buffer() -> mmap.mmap:
    """A receive buffer, page-aligned as O_DIRECT needs (anonymous memory, freed when closed)."""
    buffer = mmap.mmap(-1, BUFFER_BYTES)
    # Not into a converter child forked while a download runs (the spare keeper's): the child
    # would keep this shared memory mapped, and the bytes in it, after the download is over.
    if hasattr(mmap, "MADV_DONTFORK"):
        buffer.madvise(mmap.MADV_DONTFORK)
    return buffer


class DirectFile:
    """Writes at given offsets: whole blocks around the page cache, the rest through it (all of it
    where asked to, or once the file system refuses a direct write). Cached writes touch neither
    the direct descriptor nor the count, so they may run on another thread than direct ones."""

    def __init__(self, fd: int, direct_fd: int) -> None:
        self._fd = fd
        self._direct_fd: int | None = direct_fd
        self.around_cache = 0  # bytes written around the page cache; read it once writes are over

    def close(self) -> None:
        if self._direct_fd is not None:
            os.close(self._direct_fd)
            self._direct_fd = None

    def write(self, data: memoryview, offset: int, *, cached: bool = False) -> None:
        """Write ``data`` (from the start of a buffer of :func:`new_buffer`) at ``offset``; all of
        it through the page cache if ``cached``."""
        whole = len(data) - len(data) % BLOCK if offset % BLOCK == 0 and not cached else 0
        if whole and self._direct_fd is not None:
            try:
                done = 0
                while done < whole:
                    done += os.pwrite(self._direct_fd, data[done:whole], offset + done)
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                self.close()  # the file system refuses direct writes after all: cached from now on
                whole = 0
            else:
                self.around_cache += whole
                data, offset = data[whole:], offset + whole
        while data:
            written = os.pwrite(self._fd, data, offset)
            data, offset = data[written:], offset + written
