"""``morag-worker self-test --json`` against real parts: a real hub and redis-server over loopback,
a real Secret Service, the real CLI spawned as a person runs it. Each broken part fails its own
check with advice, and the exit status says whether anything failed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from morag_worker.core.auth import APIKeyService
from morag_worker.core.naming import acl_username
from tests.conftest import SecretServiceSession, Stack
from tests.media import build_tiny_whisper
from tests.processes import base_env, free_port

pytestmark = pytest.mark.integration

CHECK_FAILED = 9


def cli(*args: str, env: dict[str, str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "morag_worker", *args],
        capture_output=True,
        text=True,
        env=env,
        input=stdin,
        timeout=180,
    )


def self_test(config: Path, hub_url: str, env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    done = cli("self-test", "--json", "--config-dir", str(config), "--hub", hub_url, env=env)
    assert "Traceback" not in done.stderr, done.stderr
    document = json.loads(done.stdout)
    return done.returncode, document


def outcomes(document: dict[str, Any]) -> dict[str, str]:
    return {check["name"]: check["outcome"] for check in document["checks"]}


def check(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in document["checks"] if c["name"] == name)
    return found


def test_everything_passes_after_login_with_a_real_hub_broker_and_keychain(
    stack: Stack, secret_service: SecretServiceSession, tmp_path: Path
) -> None:
    key = stack.key("sally")
    model = build_tiny_whisper(tmp_path / "model")  # a real speech model, built offline
    env = base_env(**secret_service.env, MORAG_WHISPER_MODEL=str(model), MORAG_WHISPER_DEVICE="cpu")
    config = tmp_path / "config"
    login = cli("login", "--hub", stack.hub_url, "--config-dir", str(config), env=env, stdin=key + "\n")
    assert login.returncode == 0, login.stderr
    assert "morag-worker self-test" in login.stderr

    code, document = self_test(config, stack.hub_url, env)
    assert code == 0, document
    assert document["ok"] is True and document["format"] == "morag-worker-self-test"
    found = outcomes(document)
    assert found["keychain"] == found["hub"] == found["broker"] == found["conversion"] == "passed", document
    assert found["transcription"] == "passed", check(document, "transcription")
    assert found["gpu"] in ("passed", "warning")  # warning: no NVIDIA GPU here, documents still convert
    assert "Secret Service" in check(document, "keychain")["summary"]
    assert check(document, "hub")["details"]["user_id"] == "sally"
    assert check(document, "broker")["details"]["username"] == acl_username("sally")
    assert key not in json.dumps(document)

    readable = cli("self-test", "--config-dir", str(config), "--hub", stack.hub_url, env=env)
    assert readable.returncode == 0, readable.stderr
    assert "PASSED   Broker login: Logged in to the broker" in readable.stdout
    assert "Everything needed works." in readable.stdout


def test_the_hub_down_fails_the_hub_check_with_advice(tmp_path: Path) -> None:
    env = base_env(MORAG_API_KEY="k" * 43)
    code, document = self_test(tmp_path / "config", f"http://127.0.0.1:{free_port()}", env)
    assert code == CHECK_FAILED and document["ok"] is False
    hub = check(document, "hub")
    assert hub["outcome"] == "failed" and hub["summary"].startswith("Cannot reach the hub")
    assert "hub address" in hub["advice"]
    assert outcomes(document)["broker"] == "skipped"
    assert outcomes(document)["conversion"] == "passed"  # the local checks still run


def test_a_bad_key_fails_the_hub_check_with_advice(stack: Stack, tmp_path: Path) -> None:
    code, document = self_test(tmp_path / "config", stack.hub_url, base_env(MORAG_API_KEY="y" * 43))
    assert code == CHECK_FAILED
    hub = check(document, "hub")
    assert hub["outcome"] == "failed" and "rejected the API key" in hub["summary"]
    assert "morag-worker login" in hub["advice"]
    assert "y" * 43 not in json.dumps(document)


def test_an_unreachable_broker_fails_the_broker_check_with_advice(stack: Stack, tmp_path: Path) -> None:
    key = stack.key("bert")
    env = base_env(MORAG_API_KEY=key, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    code, document = self_test(tmp_path / "config", stack.hub_url, env)
    assert code == CHECK_FAILED
    assert outcomes(document)["hub"] == "passed"
    broker = check(document, "broker")
    assert broker["outcome"] == "failed" and broker["summary"].startswith("Cannot reach the broker")
    assert "REDIS_URL" in broker["advice"]


def test_no_keychain_fails_the_keychain_check_with_advice(stack: Stack, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = base_env(HOME=str(home), DBUS_SESSION_BUS_ADDRESS=f"unix:path={tmp_path / 'no-bus-here'}")
    for name in ("PYTHON_KEYRING_BACKEND", "XDG_DATA_HOME", "XDG_CONFIG_HOME", "XDG_RUNTIME_DIR"):
        env.pop(name, None)
    code, document = self_test(tmp_path / "config", stack.hub_url, env)
    assert code == CHECK_FAILED
    keychain = check(document, "keychain")
    assert keychain["outcome"] == "failed" and "MORAG_API_KEY" in keychain["advice"]
    assert outcomes(document)["hub"] == outcomes(document)["broker"] == "skipped"

    # With the key in the environment the worker can run: the missing keychain is only a warning.
    key = stack.key("carl")
    code, document = self_test(tmp_path / "config", stack.hub_url, {**env, "MORAG_API_KEY": key})
    assert code == 0, document
    assert outcomes(document)["keychain"] == "warning"
    assert outcomes(document)["hub"] == outcomes(document)["broker"] == "passed"


def test_a_key_the_broker_does_not_know_fails_the_broker_login(stack: Stack, tmp_path: Path) -> None:
    """The hub accepts the key, but the broker has no ACL password for it (created without the hook)."""

    async def create() -> str:
        client = aioredis.Redis.from_url(stack.redis.url)
        try:
            return await APIKeyService(client).create_api_key("gina", "no broker login")
        finally:
            await client.aclose()

    key = asyncio.run(create())
    code, document = self_test(tmp_path / "config", stack.hub_url, base_env(MORAG_API_KEY=key))
    assert code == CHECK_FAILED
    assert outcomes(document)["hub"] == "passed"
    broker = check(document, "broker")
    assert broker["outcome"] == "failed" and "refused the login of worker-gina" in broker["summary"]
    assert "maintenance" in broker["advice"]
