"""A real HTTP server on 127.0.0.1, in a thread, whose misbehaviour a test scripts route by route.

Usage::

    with HTTPTestServer() as server:
        server.route("/f", Route(body=data, cut_after=1000, cut_times=1))
        ...download server.url("/f")...
        assert server.requests("/f")[1].headers["range"] == "bytes=1000-"

A route can serve bytes with or without ``Range`` support and ``ETag``, drop the connection after
N body bytes for its first K responses, trickle, send a gzip body whatever the client asked for,
redirect, or answer scripted statuses (``Reply``) before behaving. ``tls=(cert, key)`` serves
HTTPS. The server records every request it saw (headers lower-cased) and how many body bytes it
sent. Stopping shuts down every open connection, so no handler thread outlives the ``with`` block;
pacing waits on a stop event, never ``time.sleep``.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import re
import socket
import ssl
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["HTTPTestServer", "Reply", "Route", "SeenRequest"]

_RANGE = re.compile(r"bytes=(\d+)-$")


@dataclass
class Reply:
    """A scripted response, served once, before the route's normal behaviour."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class Route:
    """How a path behaves. Defaults: 200 with the body, Content-Length, a strong ETag, Range support."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    etag: str | None = '"v1"'
    ranges: bool = True
    refuse_ranges: bool = False  # answer every Range request with 416
    max_range: int | None = None  # answer a Range with at most this many bytes (a legal short 206)
    send_length: bool = True  # False: chunked transfer encoding
    gzip: bool = False  # send the body gzip-encoded, whatever Accept-Encoding says
    cut_after: int | None = None  # drop the connection after this many body bytes...
    cut_times: int = 0  # ...in this many of the first body responses
    trickle: tuple[int, float] | None = None  # (bytes per step, seconds between steps)
    redirect_to: str | None = None
    redirect_status: int = 302
    replies: list[Reply] = field(default_factory=list)
    body_responses: int = 0

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


@dataclass(frozen=True)
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]


class HTTPTestServer:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> serving scripted routes (see module docstring)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        """Args: tls: ``(certificate, key)`` PEM files to serve HTTPS instead of HTTP."""
        self.routes: dict[str, Route] = {}
        self.seen: list[SeenRequest] = []
        self.errors: list[BaseException] = []
        self.body_bytes_sent = 0
        self.connections_accepted = 0  # TCP connections (keep-alive reuse shows as fewer)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            # The handshake happens in the handler thread, on first read, not in the accept loop.
            self._httpd.socket = context.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
            self.scheme = "https"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="http-test-server",
            daemon=True,
        )

    @property
    def origin(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return self.origin + path

    def route(self, path: str, route: Route) -> Route:
        with self._lock:
            self.routes[path] = route
        return route

    def requests(self, path: str | None = None) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.seen if path is None or r.path == path]

    def __enter__(self) -> HTTPTestServer:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        self.stopping.set()
        self._httpd.shutdown()
        with self._lock:
            for conn in list(self._connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()  # joins every handler thread (daemon_threads is off)
        self._thread.join(timeout=30)
        assert not self._thread.is_alive(), "test HTTP server thread did not stop"
        if self.errors:
            raise RuntimeError("the test HTTP server failed while handling a request") from self.errors[0]

    # Called by handler threads.
    def _record(self, request: SeenRequest) -> Route | None:
        with self._lock:
            self.seen.append(request)
            return self.routes.get(request.path)

    def each_connection(self, act: Callable[[socket.socket], None]) -> None:
        """Call ``act`` on every connection open now (a hub dropping idle keep-alive ones, say)."""
        with self._lock:
            for conn in list(self._connections):
                act(conn)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
                self.connections_accepted += 1
            else:
                self._connections.discard(conn)


class _Server(ThreadingHTTPServer):
    daemon_threads = False
    block_on_close = True
    owner: HTTPTestServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up (reset, broken pipe, idle timeout) is normal here; anything else is a
        # bug in this helper and is raised when the server stops.
        error = sys.exc_info()[1]
        if error is not None and not isinstance(error, OSError):
            with self.owner._lock:
                self.owner.errors.append(error)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    timeout = 30  # an idle keep-alive connection never blocks shutdown for longer than this

    def setup(self) -> None:
        super().setup()
        self.server.owner._track(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner._track(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        owner = self.server.owner
        headers = {k.lower(): v for k, v in self.headers.items()}
        route = owner._record(SeenRequest("GET", self.path.split("?", 1)[0], headers))
        if route is None:
            return self._reply(Reply(404, body=b"no such route"))
        if route.replies:
            return self._reply(route.replies.pop(0))
        if route.status != 200:
            return self._reply(Reply(route.status, dict(route.headers)))
        if route.redirect_to is not None:
            return self._reply(Reply(route.redirect_status, {"Location": route.redirect_to}))
        self._serve_body(route, headers)

    def _reply(self, reply: Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def _serve_body(self, route: Route, headers: dict[str, str]) -> None:
        body, status, extra = route.body, 200, dict(route.headers)
        requested = _RANGE.match(headers.get("range", ""))
        if route.gzip:
            body = gzip.compress(body, compresslevel=6)
            extra["Content-Encoding"] = "gzip"
        elif requested and route.refuse_ranges:
            return self._reply(Reply(416, {"Content-Range": f"bytes */{len(body)}"}))
        elif requested and route.ranges:
            if_range = headers.get("if-range")
            start = int(requested.group(1))
            if if_range is None or if_range == route.etag:
                if start >= len(body):
                    return self._reply(Reply(416, {"Content-Range": f"bytes */{len(body)}"}))
                end = len(body) if route.max_range is None else min(len(body), start + route.max_range)
                extra["Content-Range"] = f"bytes {start}-{end - 1}/{len(body)}"
                body, status = body[start:end], 206
        with self.server.owner._lock:
            cut = route.cut_after if route.body_responses < route.cut_times else None
            route.body_responses += 1
        self.send_response(status)
        if route.etag:
            self.send_header("ETag", route.etag)
        if route.ranges:
            self.send_header("Accept-Ranges", "bytes")
        for name, value in extra.items():
            self.send_header(name, value)
        if route.send_length:
            self.send_header("Content-Length", str(len(body)))
        else:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self._send(route, body, cut)

    def _send(self, route: Route, body: bytes, cut: int | None) -> None:
        owner = self.server.owner
        limit = len(body) if cut is None else min(cut, len(body))
        step, pause = route.trickle if route.trickle else (64 * 1024, 0.0)
        sent = 0
        try:
            while sent < limit:
                if pause and owner.stopping.wait(pause):
                    break
                piece = body[sent : min(sent + step, limit)]
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if not route.send_length else piece)
                sent += len(piece)
                with owner._lock:
                    owner.body_bytes_sent += len(piece)
            if cut is None and not route.send_length and not owner.stopping.is_set():
                self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the client went away: that is its right
            cut = sent
        if cut is not None or owner.stopping.is_set():
            self.close_connection = True
