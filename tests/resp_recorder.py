"""A TCP proxy in front of redis-server that records every command its clients send.

Pointing a worker's broker URL at the recorder shows exactly which commands (and keys) that worker
sends, with no other client mixed in, which MONITOR cannot do. It parses only the client-to-server
direction (RESP arrays of bulk strings, what redis-py writes); replies pass through untouched.
When either side closes, both are closed, so ``CLIENT KILL`` on the server reaches the worker.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["CONTAINER_COMMANDS", "RecordedCommand", "RespRecorder", "command_name"]

# Redis commands whose ACL rules name a subcommand (``+client|setname``).
CONTAINER_COMMANDS = frozenset(
    {"acl", "client", "cluster", "command", "config", "function", "latency", "memory", "module",
     "object", "pubsub", "script", "slowlog", "xinfo", "xgroup"}
)  # fmt: skip


def command_name(args: list[bytes]) -> str:
    """``client|setname`` for a container command, ``brpop`` otherwise (ACL spelling)."""
    name = args[0].decode("latin-1").lower()
    if name in CONTAINER_COMMANDS and len(args) > 1:
        return f"{name}|{args[1].decode('latin-1').lower()}"
    return name


@dataclass(frozen=True)
class RecordedCommand:
    connection: int
    args: tuple[bytes, ...]

    @property
    def name(self) -> str:
        return command_name(list(self.args))


class _Parser:
    """Incremental parser of RESP arrays of bulk strings."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[list[bytes]]:
        self._buffer += data
        commands = []
        while True:
            parsed = self._one()
            if parsed is None:
                return commands
            commands.append(parsed)

    def _line(self, start: int) -> tuple[bytes, int] | None:
        end = self._buffer.find(b"\r\n", start)
        if end < 0:
            return None
        return bytes(self._buffer[start:end]), end + 2

    def _one(self) -> list[bytes] | None:
        head = self._line(0)
        if head is None:
            return None
        line, pos = head
        if not line.startswith(b"*"):  # an inline command (redis-py never sends one)
            del self._buffer[:pos]
            return line.split()
        args = []
        for _ in range(int(line[1:])):
            size_line = self._line(pos)
            if size_line is None:
                return None
            size, pos = int(size_line[0][1:]), size_line[1]
            if len(self._buffer) < pos + size + 2:
                return None
            args.append(bytes(self._buffer[pos : pos + size]))
            pos += size + 2
        del self._buffer[:pos]
        return args


@dataclass
class RespRecorder:
    """Listen on a free loopback port and relay to ``127.0.0.1:upstream_port``."""

    upstream_port: int
    commands: list[RecordedCommand] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port = int(self._listener.getsockname()[1])
        self._closed = False
        self._sockets: set[socket.socket] = set()
        self._next_id = 0
        threading.Thread(target=self._accept, name="resp-recorder", daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def names(self) -> Counter[str]:
        with self._lock:
            return Counter(c.name for c in self.commands)

    def clear(self) -> None:
        with self._lock:
            self.commands.clear()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._next_id += 1
                conn_id = self._next_id
                self._sockets.update((client, upstream))
            threading.Thread(
                target=self._pump_commands, args=(conn_id, client, upstream), daemon=True
            ).start()
            threading.Thread(target=self._pump_replies, args=(upstream, client), daemon=True).start()

    def _pump_commands(self, conn_id: int, client: socket.socket, upstream: socket.socket) -> None:
        parser = _Parser()
        try:
            while chunk := client.recv(65536):
                recorded = [RecordedCommand(conn_id, tuple(args)) for args in parser.feed(chunk) if args]
                with self._lock:
                    self.commands.extend(recorded)
                upstream.sendall(chunk)
        except OSError:
            pass
        finally:
            self._close_pair(client, upstream)

    def _pump_replies(self, upstream: socket.socket, client: socket.socket) -> None:
        try:
            while chunk := upstream.recv(65536):
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            self._close_pair(client, upstream)

    def _close_pair(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
            with self._lock:
                self._sockets.discard(sock)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            open_sockets = list(self._sockets)
        self._close_pair(*open_sockets)
