"""The real ``morag-worker`` command line, spawned as a user would run it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import morag_worker
from morag_worker.core.naming import WorkerType
from tests.conftest import SAMPLES, SecretServiceSession, Stack
from tests.processes import RedisServer, base_env, free_port, wait_for

pytestmark = pytest.mark.smoke

CORE_MODULES_SCRIPT = """
import importlib, pkgutil, sys
import morag_worker.core as core
for info in pkgutil.walk_packages(core.__path__, "morag_worker.core."):
    importlib.import_module(info.name)
bad = sorted(m for m in sys.modules if m.startswith(("PySide6", "shiboken6")))
print("IMPORTED", len([m for m in sys.modules if m.startswith("morag_worker.core")]))
print("QT", bad)
"""


def cli(
    *args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "morag_worker", *args],
        capture_output=True,
        text=True,
        env=env if env is not None else base_env(),
        input=stdin,
        timeout=timeout,
    )


def headless_env(**extra: str) -> dict[str, str]:
    env = base_env(**extra)
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "QT_QPA_PLATFORM"):
        env.pop(name, None)
    return env


def test_core_imports_no_qt() -> None:
    done = subprocess.run(
        [sys.executable, "-c", CORE_MODULES_SCRIPT],
        capture_output=True,
        text=True,
        env=headless_env(),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "QT []" in done.stdout
    assert int(done.stdout.split("IMPORTED ")[1].split()[0]) > 20


def test_version_and_help_without_a_display() -> None:
    version = cli("--version", env=headless_env())
    assert version.returncode == 0 and morag_worker.__version__ in version.stdout
    for args in (("--help",), ("--no-gui", "--help"), ("keys", "--help"), ("submit", "--help")):
        shown = cli(*args, env=headless_env())
        assert shown.returncode == 0, shown.stderr
        assert "usage: morag-worker" in shown.stdout


def test_keys_verbs(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    try:
        env = base_env(REDIS_URL=server.url)
        created = cli("keys", "create", "--user", "dave", "--description", "smoke", env=env)
        assert created.returncode == 0, created.stderr
        key = created.stdout.strip()
        assert created.stdout == key + "\n" and len(key) >= 43
        assert key not in created.stderr
        nobody = cli("keys", "list", "--user", "nobody", env=env)
        assert nobody.returncode == 0 and nobody.stdout == ""
        assert nobody.stderr == "User 'nobody' has no keys.\n"
        server_key = cli("keys", "create", "--user", "dave", "--role", "server", env=env)
        assert server_key.returncode == 0 and "a server key" in server_key.stderr, server_key.stderr
        listed = cli("keys", "list", "--user", "dave", env=env)
        assert listed.returncode == 0 and "smoke" in listed.stdout and key not in listed.stdout
        roles = sorted(line.split("  role ")[1].split()[0] for line in listed.stdout.splitlines())
        assert roles == ["server", "user"], listed.stdout
        assert cli("keys", "create", "--user", "dave", "--role", "admin", env=env).returncode == 2
        revoked = cli("keys", "revoke", "-", env=env, stdin=key + "\n")
        assert revoked.returncode == 0, revoked.stderr
        assert cli("keys", "revoke", "-", env=env, stdin=key + "\n").returncode == 2
        assert cli("keys", "sweep", env=env).returncode == 0
        bad_user = cli("keys", "create", "--user", "da*ve", env=env)
        assert bad_user.returncode == 2 and "Invalid user id" in bad_user.stderr
        assert "Traceback" not in bad_user.stderr
        for dots in (".", ".."):
            dotted = cli("keys", "create", "--user", dots, env=env)
            assert dotted.returncode == 2 and "not only dots" in dotted.stderr, dotted.stderr
    finally:
        server.stop()
    unreachable = cli(
        "keys", "list", "--user", "dave", env=base_env(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    )
    assert unreachable.returncode == 6 and "Cannot reach Redis" in unreachable.stderr
    assert "Traceback" not in unreachable.stderr and len(unreachable.stderr.strip().splitlines()) == 1


def test_submit_wait_prints_markdown_and_json(stack: Stack, tmp_path: Path) -> None:
    key = stack.key("erin")
    stack.start_worker("erin", key)
    env = base_env(MORAG_API_KEY=key, MAIN_SERVER_URL=stack.hub_url)
    done = cli("submit", str(SAMPLES / "sample.html"), "--wait", env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("# MoRAG Worker")
    assert "queued on gpu-tasks-erin" in done.stderr
    as_json = cli("submit", str(SAMPLES / "sample.txt"), "--wait", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    result = json.loads(as_json.stdout)
    assert result["success"] is True and result["user_id"] == "erin"
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 this is not really a pdf")
    failed = cli("submit", str(broken), "--wait", env=env)
    # The task itself ends in Celery's SUCCESS state; its result says success: false.
    assert failed.returncode == 1 and "morag-worker: Processing failed: " in failed.stderr
    assert "success" not in failed.stderr.lower() and "converted" not in failed.stderr.lower()
    assert failed.stderr.rstrip().endswith(".") and failed.stdout == ""
    failed_json = cli("submit", str(broken), "--wait", "--json", env=env)
    assert failed_json.returncode == 1 and "Processing failed: " in failed_json.stderr
    assert json.loads(failed_json.stdout)["success"] is False
    queued = cli("submit", str(SAMPLES / "sample.txt"), env=env)
    assert queued.returncode == 0 and len(queued.stdout.strip()) == 36


def test_submit_wait_says_when_no_worker_serves_the_queue(stack: Stack) -> None:
    key = stack.key("frank")
    env = base_env(MORAG_API_KEY=key, MAIN_SERVER_URL=stack.hub_url)
    alone = cli("submit", str(SAMPLES / "sample.txt"), "--wait", env=env, timeout=60)
    assert alone.returncode == 8, alone.stderr
    assert "No worker of yours is online for gpu-tasks-frank." in alone.stderr
    assert "stays queued" in alone.stderr and "--keep-waiting" in alone.stderr
    task_id = alone.stderr.split("Task ", 1)[1].split()[0]
    assert stack.client(key).task(task_id).state == "PENDING"  # nothing lost

    stack.start_worker("frank", key, name="cpu-only-frank@test", worker_type=WorkerType.CPU)
    gpu = cli("submit", str(SAMPLES / "sample.txt"), "--wait", env=env, timeout=60)
    assert gpu.returncode == 8 and "for gpu-tasks-frank" in gpu.stderr
    cpu = cli("submit", str(SAMPLES / "sample.txt"), "--wait", "--worker-type", "cpu", env=env)
    assert cpu.returncode == 0, cpu.stderr

    waiting = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "morag_worker",
            "submit",
            str(SAMPLES / "sample.txt"),
            "--wait",
            "--keep-waiting",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stack.start_worker("frank", key, name="gpu-frank@test")
        out, err = waiting.communicate(timeout=120)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    assert out.startswith("MoRAG Worker")
    wait_for(lambda: stack.client(key).task(task_id).done, timeout=120, what="the first task to run")


def test_submit_names_each_mistake_before_asking_the_hub(tmp_path: Path) -> None:
    env = base_env()  # no hub and no key: the source is checked first
    mistakes = {
        str(tmp_path): f"morag-worker: Cannot submit the directory {tmp_path}; submit one file at a time.",
        "ftp://example.org/report.pdf": "morag-worker: Only http:// and https:// URLs can be submitted",
        str(tmp_path / "missing.pdf"): f"morag-worker: No such file: {tmp_path / 'missing.pdf'}.",
    }
    for source, message in mistakes.items():
        done = cli("submit", source, "--wait", env=env)
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(message) and len(done.stderr.strip().splitlines()) == 1
        assert done.stdout == ""


def _port_6379_listener() -> socket.socket | None:
    """A listener on the port the CLI used to assume, to see that nothing connects; None if taken."""
    sock = socket.socket()
    try:
        sock.bind(("127.0.0.1", 6379))
    except OSError:
        sock.close()
        return None
    sock.listen(8)
    sock.setblocking(False)
    return sock


def test_keys_and_hub_refuse_to_start_without_a_redis_url(tmp_path: Path) -> None:
    listener = _port_6379_listener()
    try:
        for args in (
            ("keys", "list", "--user", "dave"),
            ("keys", "sweep"),
            ("hub", "--port", str(free_port())),
        ):
            done = cli(*args, "--storage", str(tmp_path / "hub")) if args[0] == "hub" else cli(*args)
            assert done.returncode == 3, (args, done.stderr)
            assert done.stderr.startswith("morag-worker: No Redis connection given.")
            assert "set REDIS_URL" in done.stderr and "--redis-url" in done.stderr
            assert done.stdout == "" and "Traceback" not in done.stderr
        if listener is not None:
            with pytest.raises(BlockingIOError):
                listener.accept()  # nobody tried the old default
    finally:
        if listener is not None:
            listener.close()
    assert not (tmp_path / "hub").exists()
    secret = cli("keys", "list", "--user", "dave", "--redis-url", "redis://:hunter2@127.0.0.1:1/0")
    assert secret.returncode == 2 and "must not contain a password" in secret.stderr
    assert "hunter2" not in secret.stderr


def test_redis_url_option(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    try:
        created = cli("keys", "create", "--user", "ida", "--redis-url", server.url)
        assert created.returncode == 0, created.stderr
        listed = cli("keys", "--redis-url", server.url, "list", "--user", "ida")
        assert listed.returncode == 0 and len(listed.stdout.strip().splitlines()) == 1
    finally:
        server.stop()


@pytest.mark.skipif(sys.platform in ("win32", "darwin"), reason="Windows and macOS always have a display")
def test_tray_app_without_a_display_says_how_to_run_headless() -> None:
    for extra in ({}, {"QT_QPA_PLATFORM": "xcb"}):
        done = cli(env={**headless_env(), **extra}, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "No display was found" in done.stderr and "morag-worker --no-gui" in done.stderr
        assert "Reinstalling" not in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_client_errors_are_one_clear_line(stack: Stack) -> None:
    bad_key = cli(
        "submit",
        str(SAMPLES / "sample.txt"),
        env=base_env(MORAG_API_KEY="x" * 43, MAIN_SERVER_URL=stack.hub_url),
    )
    assert bad_key.returncode == 4 and "rejected the API key" in bad_key.stderr
    no_hub = cli(
        "submit",
        str(SAMPLES / "sample.txt"),
        env=base_env(MORAG_API_KEY="x" * 43, MAIN_SERVER_URL=f"http://127.0.0.1:{free_port()}"),
    )
    assert no_hub.returncode == 5 and "Cannot reach the hub" in no_hub.stderr
    for done in (bad_key, no_hub):
        assert "Traceback" not in done.stderr and "x" * 43 not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_login_logout_with_a_real_keychain(
    stack: Stack, secret_service: SecretServiceSession, tmp_path: Path
) -> None:
    key = stack.key("frank")
    env = base_env(**secret_service.env)
    config = str(tmp_path / "config")
    wrong = cli("login", "--hub", stack.hub_url, "--config-dir", config, env=env, stdin="y" * 43 + "\n")
    assert wrong.returncode == 4 and "nothing was stored" in wrong.stderr
    login = cli("--config-dir", config, "login", "--hub", stack.hub_url, env=env, stdin=key + "\n")
    assert login.returncode == 0, login.stderr
    assert "user 'frank'" in login.stderr and "Secret Service" in login.stderr
    assert key not in login.stderr + login.stdout
    for path in Path(config).rglob("*"):
        if path.is_file():
            assert key not in path.read_text(errors="replace")
    # The key now comes from the keychain and the hub URL from the settings.
    queued = cli("--config-dir", config, "submit", str(SAMPLES / "sample.txt"), env=env)
    assert queued.returncode == 0, queued.stderr
    logout = cli("--config-dir", config, "logout", env=env)
    assert logout.returncode == 0 and "Removed" in logout.stderr
    after = cli("--config-dir", config, "submit", str(SAMPLES / "sample.txt"), env=env)
    assert after.returncode == 3 and "login" in after.stderr


def test_login_without_a_keychain_keeps_the_key_in_a_private_file_when_asked(
    stack: Stack, tmp_path: Path
) -> None:
    key = stack.key("grace")
    home = tmp_path / "home"
    home.mkdir()
    env = base_env(HOME=str(home), DBUS_SESSION_BUS_ADDRESS=f"unix:path={tmp_path / 'no-bus'}")
    config = tmp_path / "config"
    refused = cli("--config-dir", str(config), "login", "--hub", stack.hub_url, env=env, stdin=key + "\n")
    assert refused.returncode != 0 and "--keep-key-in-file" in refused.stderr  # never a file on its own
    assert not (config / "api-keys.json").exists()
    login = cli(
        "--config-dir",
        str(config),
        "login",
        "--keep-key-in-file",
        "--hub",
        stack.hub_url,
        env=env,
        stdin=key + "\n",
    )
    assert login.returncode == 0, login.stderr
    assert "a file only you can read" in login.stderr and key not in login.stderr
    assert oct((config / "api-keys.json").stat().st_mode & 0o777) == oct(0o600)
    queued = cli("--config-dir", str(config), "submit", str(SAMPLES / "sample.txt"), env=env)
    assert queued.returncode == 0, queued.stderr  # the key came from the file, without a keychain
    logout = cli("--config-dir", str(config), "logout", env=env)
    assert logout.returncode == 0 and "Removed" in logout.stderr
    assert not (config / "api-keys.json").exists()


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        if text.encode() in blob:
            found.append(int(entry.name))
    return found


def test_demo_runs_the_whole_loop_and_leaves_nothing_behind(tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    done = cli("demo", env=base_env(TMPDIR=str(scratch)), timeout=600)
    samples = sorted(p.name for p in SAMPLES.glob("sample.*") if p.suffix != ".py")
    assert len(samples) >= 4
    last_line = done.stdout.rstrip("\n").splitlines()[-1]
    assert last_line == f"{len(samples)} of {len(samples)} converted", done.stdout[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    for name in samples:
        assert f"===== {name}: converted" in done.stdout
        assert f"demo: {name}: converted" in done.stderr
    assert "FAILED" not in done.stdout and "success" not in done.stderr
    assert "# MoRAG Worker" in done.stdout
    assert _processes_mentioning(str(scratch)) == []
    # The demo's own folder is gone (onnxruntime, via markitdown's file-type detection, may leave its
    # telemetry session file ``.ses`` in TMPDIR; that is not ours).
    assert [p.name for p in scratch.iterdir() if p.name.startswith("morag-demo-")] == []


def test_demo_says_which_samples_failed_and_exits_non_zero(tmp_path: Path) -> None:
    own = tmp_path / "own"
    own.mkdir()
    (own / "good.txt").write_text("hello from the demo\n")
    (own / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    done = cli("demo", "--samples", str(own), timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "===== good.txt: converted" in done.stdout and "===== broken.pdf: FAILED" in done.stdout
    assert "demo: broken.pdf: failed" in done.stderr and "success" not in done.stderr
    last_line = done.stdout.rstrip("\n").splitlines()[-1]
    assert last_line.startswith("1 of 2 converted; failed: broken.pdf (the PDF file is damaged"), last_line
