"""Shared fixtures: a private redis-server, the hub over loopback, users with keys, worker children,
and a private Secret Service for keychain tests. Fakes live in ``tests.fakes``.

Integration fixtures are module-scoped where starting a process is slow; every process is torn down
with its whole process group.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import keyring.backend
import keyring.core
import pytest

from morag_worker.core.acl import create_provisioned_key
from morag_worker.core.celery_config import broker_url_with_credentials
from morag_worker.core.hub_client import HubClient
from morag_worker.core.naming import WorkerType
from morag_worker.core.worker_command import WorkerPlan, build_worker_command
from tests.keychain import SecretServiceSession, skip_reason, start_secret_service
from tests.processes import Proc, RedisServer, base_env, free_port, python_argv, wait_for

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
SAMPLES = RESOURCES / "samples"


def create_key(redis_url: str, user_id: str, expires_days: int | None = None) -> str:
    return create_provisioned_key(redis_url, user_id, "test", expires_days)


@dataclass
class Stack:
    """redis-server + hub for one test module, and the workers started in it."""

    tmp: Path
    redis: RedisServer
    hub: Proc
    hub_url: str
    workers: list[Proc] = field(default_factory=list)

    def key(self, user_id: str, expires_days: int | None = None) -> str:
        return create_key(self.redis.url, user_id, expires_days)

    def client(self, api_key: str) -> HubClient:
        return HubClient(self.hub_url, api_key)

    def start_worker(
        self,
        user_id: str,
        api_key: str,
        *,
        name: str | None = None,
        wait_ready: bool = True,
        broker_url: str | None = None,
        hub_url: str | None = None,
        temp_dir: Path | None = None,
        worker_type: WorkerType = WorkerType.GPU,
        **env: str,
    ) -> Proc:
        """A worker child for ``user_id``; ``broker_url`` / ``hub_url`` default to the stack's own."""
        plan = WorkerPlan(
            user_id=user_id,
            hub_url=hub_url or self.hub_url,
            broker_url=broker_url or self.redis.url,
            api_key=api_key,
            worker_type=worker_type,
            hostname=name or f"w{len(self.workers)}-{user_id}@test",
            temp_dir=str(temp_dir or self.tmp / "worker-tmp"),
        )
        command = build_worker_command(plan, base_env(**env))
        proc = Proc(command.argv, env=command.env, name=f"worker {plan.hostname}")
        self.workers.append(proc)
        if wait_ready:
            proc.wait_output("worker.ready", timeout=120)
        return proc

    def close(self) -> None:
        for proc in self.workers:
            proc.stop(timeout=30)
        self.hub.stop()
        self.redis.stop()


def start_hub(
    tmp: Path, redis_url: str, extra_args: tuple[str, ...] = (), *, port: int | None = None, **env: str
) -> tuple[Proc, str]:
    """The hub as a child process on ``port`` (a free one by default), storing under ``tmp/hub``."""
    port = port or free_port()
    hub = Proc(
        python_argv(
            "-m", "morag_worker", "hub", "--port", str(port), "--storage", str(tmp / "hub"), *extra_args
        ),
        env=base_env(REDIS_URL=redis_url, **env),
        name="hub",
    )
    url = f"http://127.0.0.1:{port}"
    import requests

    wait_for(lambda: requests.get(url + "/healthz", timeout=2).ok, what="the hub to answer /healthz")
    return hub, url


@pytest.fixture(scope="module")
def hub_args() -> tuple[str, ...]:
    """Extra ``morag-worker hub`` arguments for the module's stack; a module overrides this."""
    return ()


@pytest.fixture(scope="module")
def redis_args() -> tuple[str, ...]:
    """Extra ``redis-server`` arguments for the module's stack; a module overrides this."""
    return ()


@pytest.fixture(scope="module")
def hub_redis_login() -> tuple[str, str] | None:
    """``(user, password)`` the module's hub logs in to Redis with; None: the default user."""
    return None


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory,
    hub_args: tuple[str, ...],
    redis_args: tuple[str, ...],
    hub_redis_login: tuple[str, str] | None,
) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    server = RedisServer(tmp / "redis", extra=redis_args)
    hub_url = server.url
    if hub_redis_login is not None:
        hub_url = broker_url_with_credentials(server.url, *hub_redis_login)
    hub, url = start_hub(tmp, hub_url, hub_args)
    result = Stack(tmp=tmp, redis=server, hub=hub, hub_url=url)
    try:
        yield result
    finally:
        result.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis")
    try:
        yield server
    finally:
        server.stop()


# Variables that steer keyring's backend choice or point at a real session; keychain tests
# start from none of them.
_KEYRING_ENV = (
    "PYTHON_KEYRING_BACKEND",
    "DBUS_SESSION_BUS_ADDRESS",
    "HOME",
    "XDG_DATA_HOME",
    "XDG_CONFIG_HOME",
    "XDG_CACHE_HOME",
    "XDG_RUNTIME_DIR",
)


@pytest.fixture(scope="session")
def secret_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretServiceSession]:
    """A private D-Bus session bus with an unlocked gnome-keyring-daemon, for the whole session.

    Skips when not on Linux or when ``dbus-daemon`` / ``gnome-keyring-daemon`` are missing
    (CI installs the ``dbus-daemon`` and ``gnome-keyring`` packages).
    """
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    session = start_secret_service(tmp_path_factory.mktemp("secret-service"))
    try:
        yield session
    finally:
        session.stop()


@pytest.fixture
def fresh_keyring_detection(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make keyring detect its backend again under this test's environment, and forget it after.

    keyring caches both the chosen backend and the list of viable ones for the process.
    """
    get_all = keyring.backend.get_all_keyring
    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    monkeypatch.setattr(keyring.backend, "_limit", None)
    monkeypatch.delattr(get_all, "saved_result", raising=False)
    yield
    vars(get_all).pop("saved_result", None)  # monkeypatch then restores the earlier cache, if any


def use_secret_service(session: SecretServiceSession, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point this process's environment at ``session`` for the rest of the test."""
    for name in _KEYRING_ENV:
        monkeypatch.delenv(name, raising=False)
        if name in session.env:
            monkeypatch.setenv(name, session.env[name])


@pytest.fixture
def keychain_env(
    secret_service: SecretServiceSession, monkeypatch: pytest.MonkeyPatch, fresh_keyring_detection: None
) -> Path:
    """Point this process (and keyring's detection) at the private Secret Service; returns HOME."""
    use_secret_service(secret_service, monkeypatch)
    return secret_service.home


@pytest.fixture
def own_secret_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_keyring_detection: None
) -> Iterator[SecretServiceSession]:
    """A private Secret Service for one test that may break it (lock it, stop it...)."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    session = start_secret_service(tmp_path / "secret-service")
    try:
        use_secret_service(session, monkeypatch)
        yield session
    finally:
        session.stop()


@pytest.fixture
def no_keychain_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fresh_keyring_detection: None) -> Path:
    """An environment with no usable keychain: a dead session bus address and an empty HOME."""
    for name in _KEYRING_ENV:
        monkeypatch.delenv(name, raising=False)
    for name in ("HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", f"unix:path={tmp_path / 'no-bus-here'}")
    return tmp_path
