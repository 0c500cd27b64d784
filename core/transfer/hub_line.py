"""One kept connection to the hub for small whole files, without requests' and urllib3's layers.

A 40-byte input cost the task 340 µs of CPU through requests, urllib3 and http.client, against
30 µs on a plain socket: a tenth of a small task's whole cost (issue 14). The downloader asks here
first for a hub file whose size the task states and that is at most ``SMALL_BYTES``; every check
of the answer (status, size, SHA-256, the outage watch, retries) stays the downloader's.

The answer must be the simple one the hub gives: a status line, at most ``MAX_HEAD_BYTES`` of
headers, a ``Content-Length`` of at most the caller's cap and no transfer or content coding.
Anything else raises :class:`Unexpected` and the downloader asks again the full way. A kept
connection that the hub closed while idle is found at the next request and replaced once.
Serves one thread at a time, like the downloader that owns it.
"""

from __future__ import annotations

import select
import socket
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["MAX_HEAD_BYTES", "SMALL_BYTES", "HubAnswer", "HubLine", "Unexpected"]

SMALL_BYTES = 64 * 1024  # the hub serves files up to this size from one read (hub/small_files.py)
MAX_HEAD_BYTES = 64 * 1024
_RECV_BYTES = 256 * 1024


class Unexpected(Exception):
    """An answer this client does not read (coded, chunked, too large...): ask the full way."""


class Headers(dict[str, str]):
    """Response headers by lower-case name; ``get`` takes any case, as requests' mapping does."""

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


@dataclass(frozen=True)
class HubAnswer:
    status: int
    headers: Headers
    body: bytes


class HubLine:
    """A kept HTTP/1.1 connection to one origin (``http``, or ``https`` verified by ``tls``)."""

    def __init__(self, scheme: str, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        if scheme not in ("http", "https") or not host:
            raise ValueError(f"not an http(s) origin: {scheme}://{host}:{port}")
        if scheme == "https" and tls is None:
            raise ValueError("an https origin needs a TLS context")
        self.host, self.port = host, port
        bracketed = f"[{host}]" if ":" in host else host
        default_port = port == (443 if scheme == "https" else 80)
        self._host_header = bracketed if default_port else f"{bracketed}:{port}"
        self._tls = tls if scheme == "https" else None
        self._sock: socket.socket | None = None
        self._buffer = b""
        self._ends_at = 0.0  # monotonic: when the answer in progress must be complete

    def close(self) -> None:
        sock, self._sock, self._buffer = self._sock, None, b""
        if sock is not None:
            sock.close()

    def get(
        self,
        target: str,
        headers: Mapping[str, str],
        *,
        connect_timeout: float,
        timeout: float,
        max_body: int,
    ) -> HubAnswer:
        """GET ``target`` (a path and query) with ``headers``.

        The whole answer must arrive within ``timeout`` s. Raises OSError when the hub cannot be
        reached, cuts the connection or is too slow (``TimeoutError``; ``ssl`` errors are OSErrors
        too), :class:`Unexpected` for an answer to fetch the full way. Either way the connection
        is closed; after an answer it stays open unless the hub said otherwise.
        """
        request = _request_bytes(target, self._host_header, headers)
        if self._sock is not None and _readable(self._sock):
            self.close()  # an idle connection has nothing to say but its end (or a 408 before it)
        reused = self._sock is not None
        try:
            try:
                return self._exchange(request, connect_timeout, timeout, max_body)
            except _IdleClosed:
                if not reused:
                    raise
                self.close()  # closed while idle between tasks: one fresh connection
                return self._exchange(request, connect_timeout, timeout, max_body)
        except _IdleClosed:
            self.close()
            raise ConnectionResetError("the hub closed the connection before answering") from None
        except BaseException:
            self.close()
            raise

    def _exchange(self, request: bytes, connect_timeout: float, timeout: float, max_body: int) -> HubAnswer:
        sock = self._sock
        if sock is None:
            sock = self._sock = self._connect(connect_timeout)
            self._buffer = b""
        self._ends_at = time.monotonic() + timeout
        sock.settimeout(timeout)
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            raise _IdleClosed from None
        head = self._read_head()
        status, headers, keep = _parse_head(head)
        length = _plain_length(headers, max_body)
        body = self._read_exactly(length)
        if not keep:
            self.close()
        return HubAnswer(status, headers, body)

    def _connect(self, connect_timeout: float) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                return self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        return sock

    def _recv(self) -> bytes:
        assert self._sock is not None
        left = self._ends_at - time.monotonic()
        if left <= 0:
            raise TimeoutError("the hub did not answer in time")
        self._sock.settimeout(left)
        return self._sock.recv(_RECV_BYTES)

    def _read_head(self) -> bytes:
        received_any = bool(self._buffer)
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end >= 0:
                head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
                return head
            if len(self._buffer) > MAX_HEAD_BYTES:
                raise Unexpected("a header block over 64 KiB")
            if b"\n\n" in self._buffer:
                raise Unexpected("a head with bare line feeds")
            try:
                piece = self._recv()
            except ConnectionResetError:
                if received_any:
                    raise
                raise _IdleClosed from None
            if not piece:
                if received_any:
                    raise ConnectionResetError("the hub closed the connection inside its answer")
                raise _IdleClosed
            received_any = True
            self._buffer += piece

    def _read_exactly(self, length: int) -> bytes:
        while len(self._buffer) < length:
            piece = self._recv()
            if not piece:
                raise ConnectionResetError("the hub closed the connection inside its answer")
            self._buffer += piece
        body, self._buffer = self._buffer[:length], self._buffer[length:]
        if self._buffer:  # bytes past the answer: nothing this client asked for
            raise Unexpected("bytes after the answer")
        return body


def _readable(sock: socket.socket) -> bool:
    """Whether an idle connection has something to read (bytes, or the hub's close)."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _IdleClosed(Exception):
    """The connection was closed before any byte of the answer."""


def _request_bytes(target: str, host: str, headers: Mapping[str, str]) -> bytes:
    if not target.startswith("/") or any(c in target for c in "\r\n "):
        raise ValueError("a request target must be a path without spaces or line breaks")
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"the header {name!r} cannot be sent")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_head(head: bytes) -> tuple[int, Headers, bool]:
    """The status, the headers and whether the connection stays open."""
    try:
        text = head.decode("latin-1")
        status_line, *lines = text.split("\r\n")
        version, code, *_ = status_line.split(" ", 2)
        status = int(code)
    except ValueError:
        raise Unexpected("a malformed status line") from None
    if version not in ("HTTP/1.1", "HTTP/1.0") or not 200 <= status <= 599:
        raise Unexpected(f"status {status_line[:40]!r}")
    headers = Headers()
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[:1] in (" ", "\t"):
            raise Unexpected("a malformed header line")
        key, value = name.lower(), value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    connection = {token.strip().lower() for token in (headers.get("connection") or "").split(",")}
    keep = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    return status, headers, keep


def _plain_length(headers: Headers, max_body: int) -> int:
    """The body's length, for an identity body of at most ``max_body`` bytes."""
    if "transfer-encoding" in headers:
        raise Unexpected("a transfer coding")
    if (headers.get("content-encoding") or "identity").strip().lower() != "identity":
        raise Unexpected("a content coding")
    value = headers.get("content-length")
    if value is None or not (value.isascii() and value.isdigit()):
        raise Unexpected("no single Content-Length")
    length = int(value)
    if length > max_body:
        raise Unexpected("a body over the small-file size")
    return length
