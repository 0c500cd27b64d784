"""``morag-worker diagnostics -o FILE.zip`` leaves no API key in the bundle, in any form.

A key is generated for the test, logged in to a real keychain, and planted in the settings file,
the environment and the log files as itself, in URL passwords, Bearer and Basic headers,
percent-encoded, in base64 and in hex. The real CLI writes the bundle; every byte of every file in
it (and of the zip itself) is then searched for every form of the key."""

from __future__ import annotations

import base64
import json
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import SecretServiceSession, Stack
from tests.processes import base_env

pytestmark = pytest.mark.integration


def forms_of(key: str) -> dict[str, bytes]:
    """What a leaked key could look like, worked out here independently of the scrubber."""
    raw = key.encode()
    forms = {
        "plain": raw,
        "url-quoted": quote(key, safe="").encode(),
        "percent-every-byte": "".join(f"%{b:02X}" for b in raw).encode(),
        "percent-every-byte-lower": "".join(f"%{b:02x}" for b in raw).encode(),
        "hex": raw.hex().encode(),
    }
    for offset in range(3):
        for label, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            # The groups of 4 that hold only the key's bytes, wherever the key sits in the input.
            forms[f"{label}@{offset}"] = encode(b"\0" * offset + raw)[4:-4]
    return forms


def planted(key: str, user: str) -> list[str]:
    basic = base64.b64encode(f"worker-{user}:{key}".encode()).decode()
    return [
        f"api_key={key}",
        f"Authorization: Bearer {key}",
        f"Authorization: Basic {basic}",
        f"broker redis://worker-{user}:{key}@10.0.0.5:6379/0",
        f"https://{user}:{quote(key, safe='')}@hub.example/api",
        "escaped=" + "".join(f"%{b:02X}" for b in key.encode()),
        "b64=" + base64.b64encode(key.encode()).decode(),
        "b64url=" + base64.urlsafe_b64encode(b"x" + key.encode()).decode(),
        "hex=" + key.encode().hex(),
        json.dumps({"event": "debug", "headers": {"X-API-Key": key}}),
    ]


def test_no_form_of_the_key_survives_in_the_bundle(
    stack: Stack, secret_service: SecretServiceSession, tmp_path: Path
) -> None:
    user = "dora"
    key = stack.key(user)  # secrets.token_urlsafe(32), made for this test and accepted by the hub
    config = tmp_path / "config"
    env = base_env(**secret_service.env)
    login = subprocess.run(
        [sys.executable, "-m", "morag_worker", "login", "--hub", stack.hub_url, "--config-dir", str(config)],
        input=key + "\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert login.returncode == 0, login.stderr
    lines = planted(key, user)

    settings = json.loads((config / "settings.json").read_text())
    settings.update({"note": lines[0], "proxy": lines[4], "basic": lines[2]})
    (config / "settings.json").write_text(json.dumps(settings))
    logs = config / "logs"
    logs.mkdir()
    # A long log whose tail (--log-kb 4) starts in the middle of lines that hold the key.
    body = "".join(f"{i:05d} {lines[i % len(lines)]} {'.' * (i % 37)}\n" for i in range(400))
    (logs / "tray.log").write_text(body)
    (logs / "tray.log.1").write_text("\n".join(lines) + "\n")
    (logs / "worker.log").write_bytes(b"\xff\xfe broken bytes " + key.encode() + b"\n")
    env.update(
        {
            "REDIS_URL": f"redis://worker-{user}:{key}@{stack.redis.url.split('://', 1)[1]}",
            "CELERY_NOTE": lines[1],
            "WORKER_DEBUG": lines[2],
            "QT_NOTE": lines[5],
            "MORAG_EXTRA": lines[7],
            "MORAG_HUB_TOKEN": key,
        }
    )

    bundle = tmp_path / "out" / "diagnostics.zip"
    bundle.parent.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "morag_worker", "diagnostics", "-o", str(bundle), "--config-dir", str(config)]
        + ["--hub", stack.hub_url, "--log-kb", "4"],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and key not in done.stderr + done.stdout
    assert stat.S_IMODE(bundle.stat().st_mode) == 0o600
    assert [p.name for p in bundle.parent.iterdir()] == ["diagnostics.zip"]  # no partial file left

    forms = forms_of(key)
    raw_zip = bundle.read_bytes()
    with zipfile.ZipFile(bundle) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    for name, data in [("the zip itself", raw_zip), *members.items()]:
        for label, form in forms.items():
            assert form not in data, f"{label} form of the key found in {name}"
        assert key.encode() not in name.encode()

    names = set(members)
    assert {"manifest.json", "versions.json", "settings.json", "gpu.json", "self-test.json"} <= names
    logged = {name.split("-", 1)[1] for name in names if name.startswith("logs/")}
    assert logged == {"worker.log", "tray.log.1", "tray.log"}
    versions = json.loads(members["versions.json"])
    assert versions["packages"]["celery"] and versions["packages"]["kombu"] and versions["packages"]["redis"]
    assert "PySide6" in versions["packages"] and versions["os"] and versions["python"]
    settings_facts = json.loads(members["settings.json"])
    assert settings_facts["file"]["settings"]["hub_url"] == stack.hub_url
    assert settings_facts["environment"]["MORAG_HUB_TOKEN"] == "(set; value removed)"
    assert "[REDACTED]" in settings_facts["file"]["raw"]
    report = json.loads(members["self-test.json"])
    assert report["ok"] is True, report  # the self-test ran with the keychain's key and passed
    assert {c["name"] for c in report["checks"]} >= {"keychain", "hub", "broker", "gpu"}
    tray_tail = next(data for name, data in members.items() if name.endswith("-tray.log"))
    assert 0 < len(tray_tail) <= 4096 + 2048 and tray_tail[:5].isdigit()  # whole lines only
    assert "gpus" in json.loads(members["gpu.json"])


def test_without_the_self_test_the_bundle_says_so(tmp_path: Path) -> None:
    bundle = tmp_path / "d.zip"
    done = subprocess.run(
        [sys.executable, "-m", "morag_worker", "diagnostics", "-o", str(bundle), "--no-self-test"]
        + ["--config-dir", str(tmp_path / "config")],
        capture_output=True,
        text=True,
        env=base_env(MORAG_API_KEY="z" * 43),
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    with zipfile.ZipFile(bundle) as archive:
        assert json.loads(archive.read("self-test.json")) == {"skipped": "--no-self-test was given"}
        assert b"z" * 43 not in b"".join(archive.read(n) for n in archive.namelist())
