"""A small HTTP-aware TCP proxy for fault tests: cuts or slows responses, records requests.

One request per connection (it forces ``Connection: close``), so every request head is seen and
every response can be cut after a chosen number of body bytes, as a dropped connection would be.
``down`` plays a hub that went away: responses under way are cut, and each new request is read
and then answered by closing the connection.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field


@dataclass
class SeenRequest:
    method: str
    path: str
    headers: dict[str, str]
    relayed: int = 0  # response bytes (headers included) passed on to the client
    upstream_down: bool = False  # the upstream refused the connection; the client got nothing


@dataclass
class ProxyRules:
    cut_downloads: int = 0  # cut this many file downloads (GET /api/v1/files/...)
    cut_after_bytes: int = 0  # ... after this many response bytes (headers included)
    rate_bps: float | None = None  # throttle responses to this many bytes per second
    down: bool = False  # the hub is gone: cut responses under way, close new connections unanswered
    seen: list[SeenRequest] = field(default_factory=list)


class CuttingProxy:
    def __init__(self, upstream_port: int, rules: ProxyRules | None = None) -> None:
        self.rules = rules or ProxyRules()
        self.upstream_port = upstream_port
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(32)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(65536)
                if not chunk:
                    return
                head += chunk
            raw_head, _, rest = head.partition(b"\r\n\r\n")
            lines = raw_head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            cut = False
            seen = SeenRequest(method, path, headers)
            with self._lock:
                self.rules.seen.append(seen)
                if method == "GET" and path.startswith("/api/v1/files/") and self.rules.cut_downloads > 0:
                    self.rules.cut_downloads -= 1
                    cut = True
            if self.rules.down:
                seen.upstream_down = True
                return
            kept = [line for line in lines[1:] if not line.lower().startswith("connection:")]
            new_head = "\r\n".join([lines[0], *kept, "Connection: close"]).encode("latin-1")
            body_len = int(headers.get("content-length", "0") or 0)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the upstream is down (restarting): the client sees the connection close
                seen.upstream_down = True
                return
            with upstream:
                try:
                    upstream.sendall(new_head + b"\r\n\r\n" + rest)
                    remaining = body_len - len(rest)
                    while remaining > 0:
                        chunk = client.recv(min(65536, remaining))
                        if not chunk:
                            return
                        upstream.sendall(chunk)
                        remaining -= len(chunk)
                    self._relay(upstream, client, cut, seen)
                except OSError:  # either side went away mid-response (a killed upstream)
                    return

    def _relay(self, upstream: socket.socket, client: socket.socket, cut: bool, seen: SeenRequest) -> None:
        sent = 0
        started = time.monotonic()
        while True:
            chunk = upstream.recv(16384)
            if not chunk:
                return
            if self.rules.down:
                client.shutdown(socket.SHUT_RDWR)
                return
            if cut and sent + len(chunk) >= self.rules.cut_after_bytes:
                last = chunk[: max(0, self.rules.cut_after_bytes - sent)]
                client.sendall(last)
                seen.relayed += len(last)
                client.shutdown(socket.SHUT_RDWR)
                return
            try:
                client.sendall(chunk)
            except OSError:
                return
            sent += len(chunk)
            seen.relayed += len(chunk)
            rate = self.rules.rate_bps
            if rate:
                ahead = sent / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)  # throttling the stream, not synchronising the test

    @classmethod
    def in_front_of(cls, hub_url: str, rules: ProxyRules | None = None) -> CuttingProxy:
        """A proxy to the hub at ``hub_url`` (``http://127.0.0.1:PORT``)."""
        return cls(int(hub_url.rsplit(":", 1)[1]), rules)

    def __enter__(self) -> CuttingProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
