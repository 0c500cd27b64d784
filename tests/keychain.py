"""A private, real Secret Service for integration tests: its own D-Bus session bus and an
unlocked ``gnome-keyring-daemon``, under a throw-away HOME.

Needs (Debian/Ubuntu packages): ``dbus-daemon`` (``dbus-daemon``/``dbus``), ``gnome-keyring``,
and optionally ``libsecret-tools`` for ``secret-tool``. No display and no running session are
needed. The bus has no service directories, so nothing is D-Bus-activated behind our back: the
only processes are the two children started here, and ``stop()`` checks that none is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import stop_processes

__all__ = ["REQUIRED_TOOLS", "SecretServiceSession", "missing_tools", "skip_reason", "start_secret_service"]

REQUIRED_TOOLS = ("dbus-daemon", "gnome-keyring-daemon")
SECRETS_NAME = "org.freedesktop.secrets"
UNLOCK_PASSWORD = b"morag-test-unlock"
_MARKER = "MORAG_TEST_KEYCHAIN_ID"
_START_TIMEOUT_S = 20.0

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={socket_dir}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


def missing_tools() -> list[str]:
    """The executables this fixture needs that are not on PATH."""
    return [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]


def skip_reason() -> str | None:
    """Why a private Secret Service cannot run here, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "the private Secret Service fixture needs Linux (/proc, Unix sockets)"
    missing = missing_tools()
    if missing:
        return (
            f"no Secret Service available: {', '.join(missing)} not found "
            "(apt-get install dbus-daemon gnome-keyring libsecret-tools)"
        )
    return None


@dataclass
class SecretServiceSession:
    """A running private bus + keyring daemon, and the environment that points to them."""

    root: Path
    address: str
    env: dict[str, str]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    marker: str = ""

    @property
    def home(self) -> Path:
        return Path(self.env["HOME"])

    def stop(self) -> None:
        """Terminate both daemons (keyring first), reap them, and fail if any process is left."""
        stop_processes(self.processes)
        leftovers = _processes_with_marker(self.marker)
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"processes left behind by the keychain fixture: {leftovers}"


def _processes_with_marker(marker: str) -> list[int]:
    """Pids of live processes whose environment carries our marker (children of our daemons)."""
    needle = f"{_MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _wait_for_name(address: str, name: str, timeout: float) -> None:
    """Block until ``name`` has an owner on the bus (signal-driven, with a deadline)."""
    # jeepney comes with keyring on Linux only; importing it here keeps conftest importable elsewhere.
    from jeepney import MatchRule, message_bus
    from jeepney.io.blocking import open_dbus_connection

    with open_dbus_connection(bus=address) as conn:
        rule = MatchRule(
            type="signal",
            sender=message_bus.bus_name,
            interface=message_bus.interface,
            member="NameOwnerChanged",
            path=message_bus.object_path,
        )
        rule.add_arg_condition(0, name)
        conn.send_and_get_reply(message_bus.AddMatch(rule), timeout=timeout)
        with conn.filter(rule) as queue:
            if conn.send_and_get_reply(message_bus.NameHasOwner(name), timeout=timeout).body[0]:
                return
            while True:  # each NameOwnerChanged for this name; the new owner is body[2]
                if conn.recv_until_filtered(queue, timeout=timeout).body[2]:
                    return


def start_secret_service(root: Path) -> SecretServiceSession:
    """Start a private bus and an unlocked gnome-keyring-daemon (secrets only) under ``root``.

    Raises:
        RuntimeError: A daemon did not start; the message carries its output.
    """
    dirs = {name: root / name for name in ("home", "data", "config", "cache", "runtime", "bus")}
    for path in dirs.values():
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    config = root / "bus.conf"
    config.write_text(_BUS_CONFIG.format(socket_dir=dirs["bus"]))
    marker = uuid.uuid4().hex
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(dirs["home"]),
        "XDG_DATA_HOME": str(dirs["data"]),
        "XDG_CONFIG_HOME": str(dirs["config"]),
        "XDG_CACHE_HOME": str(dirs["cache"]),
        "XDG_RUNTIME_DIR": str(dirs["runtime"]),
        "LANG": "C.UTF-8",
        _MARKER: marker,
    }
    session = SecretServiceSession(root=root, address="", env=env, marker=marker)
    try:
        bus = subprocess.Popen(
            ["dbus-daemon", f"--config-file={config}", "--nofork", "--print-address=1"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        session.processes.append(bus)
        assert bus.stdout is not None
        address = bus.stdout.readline().decode().strip()  # printed once the bus listens
        bus.stdout.close()
        if not address:
            raise RuntimeError(f"dbus-daemon printed no address (exit code {bus.poll()})")
        session.address = address
        env["DBUS_SESSION_BUS_ADDRESS"] = address
        log_path = root / "gnome-keyring-daemon.log"
        with log_path.open("wb") as log_file:
            keyring_daemon = subprocess.Popen(
                ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
                stdin=subprocess.PIPE,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
            )
        session.processes.append(keyring_daemon)
        assert keyring_daemon.stdin is not None
        keyring_daemon.stdin.write(UNLOCK_PASSWORD)  # --unlock reads the password to EOF
        keyring_daemon.stdin.close()
        try:
            _wait_for_name(address, SECRETS_NAME, _START_TIMEOUT_S)
        except TimeoutError as exc:
            output = log_path.read_text(errors="replace")
            raise RuntimeError(f"gnome-keyring-daemon did not take {SECRETS_NAME}: {output}") from exc
    except BaseException:
        session.stop()
        raise
    return session
