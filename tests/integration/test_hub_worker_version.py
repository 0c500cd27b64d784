"""The hub advertises the current worker release in queue-info: its own version by default,
``--worker-version`` or ``MORAG_HUB_WORKER_VERSION`` when set (the option wins)."""

from __future__ import annotations

from pathlib import Path

import pytest

from morag_worker import __version__
from morag_worker.core.hub_client import HubClient, newer_version
from tests.conftest import create_key, start_hub
from tests.processes import RedisServer

pytestmark = pytest.mark.integration


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, __version__),
        ((), {"MORAG_HUB_WORKER_VERSION": "7.1.0"}, "7.1.0"),
        (("--worker-version", "9.0.0"), {"MORAG_HUB_WORKER_VERSION": "7.1.0"}, "9.0.0"),
    ],
    ids=["default", "env", "option-wins"],
)
def test_queue_info_advertises_the_worker_version(
    tmp_path: Path, args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    server = RedisServer(tmp_path / "redis")
    hub = None
    try:
        hub, url = start_hub(tmp_path, server.url, args, **env)
        client = HubClient(url, create_key(server.url, "vera"))
        try:
            info = client.queue_info()
        finally:
            client.close()
        assert info.worker_version == expected
        assert newer_version(info.worker_version, __version__) == (
            None if expected == __version__ else expected
        )
    finally:
        if hub is not None:
            hub.stop()
        server.stop()
