"""One tray app per user and config folder: a second launch asks the first to show its window.

The first instance listens on a ``QLocalServer`` (a Unix socket only the user can connect to, or a
named pipe on Windows) whose name is derived from the user and the config folder. A later launch
connects, writes ``show``, and exits; the first emits ``show_requested``. A socket left behind by
a crashed instance answers nobody, so it is removed before listening.

GUI thread only.
"""

from __future__ import annotations

import getpass
import hashlib
from pathlib import Path

import structlog
from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtNetwork import QLocalServer, QLocalSocket

from .qt_emit import emit

__all__ = ["SHOW_MESSAGE", "SingleInstance", "server_name"]

SHOW_MESSAGE = b"show\n"
log = structlog.get_logger(__name__)


def server_name(config_dir: Path | None, user: str | None = None) -> str:
    """The local server name for ``user`` (the current one by default) and ``config_dir``; pure."""
    try:
        who = user or getpass.getuser()
    except Exception:  # no user name (a container without passwd entry): share one name
        who = "user"
    where = str(config_dir.resolve()) if config_dir is not None else "default"
    digest = hashlib.sha256(f"{who}\0{where}".encode()).hexdigest()[:16]
    return f"morag-worker-{digest}"


class SingleInstance(QObject):
    """The first instance's server, or a later instance's hand-off.

    Args:
        name: The local server name (``server_name(...)``).
    """

    #: Another launch asked this instance to show its window.
    show_requested = Signal()

    def __init__(self, name: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.name = name
        self._server: QLocalServer | None = None
        self._clients: set[QLocalSocket] = set()

    def hand_off(self, timeout_ms: int = 1000) -> bool:
        """Ask a running instance to show itself; True when one answered (then exit)."""
        socket = QLocalSocket()
        socket.connectToServer(self.name)
        if not socket.waitForConnected(timeout_ms):
            return False
        socket.write(SHOW_MESSAGE)
        socket.flush()
        sent = socket.waitForBytesWritten(timeout_ms) or socket.bytesToWrite() == 0
        socket.disconnectFromServer()
        log.info("gui.handed_off", delivered=bool(sent))
        return True

    def listen(self) -> bool:
        """Become the first instance; False (logged) when the server cannot be created."""
        QLocalServer.removeServer(self.name)  # a stale socket of a crashed instance
        server = QLocalServer(self)
        server.setSocketOptions(QLocalServer.SocketOption.UserAccessOption)
        if not server.listen(self.name):
            log.warning("gui.single_instance_unavailable", error=server.errorString())
            return False
        server.newConnection.connect(self._on_connection)
        self._server = server
        return True

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.isListening()

    @Slot()
    def _on_connection(self) -> None:
        assert self._server is not None
        while (socket := self._server.nextPendingConnection()) is not None:
            # The server owns its sockets; they go when it does. No deleteLater: with PySide6 6.12
            # that crashed in ~QLocalSocket at the next event-loop pass (seen in the tests).
            self._clients.add(socket)
            socket.readyRead.connect(self._on_ready_read)
            socket.disconnected.connect(self._on_disconnected)
            if socket.bytesAvailable():
                self._read(socket)

    @Slot()
    def _on_ready_read(self) -> None:
        socket = self.sender()
        if isinstance(socket, QLocalSocket):
            self._read(socket)

    @Slot()
    def _on_disconnected(self) -> None:
        socket = self.sender()
        if isinstance(socket, QLocalSocket):
            self._read(socket)
            self._clients.discard(socket)

    def _read(self, socket: QLocalSocket) -> None:
        data = bytes(socket.readAll().data())
        if SHOW_MESSAGE.strip() in data:
            log.info("gui.show_requested")
            emit(self.show_requested)

    def close(self) -> None:
        """Stop listening (the socket file is removed)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self._clients.clear()
