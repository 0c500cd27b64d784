"""A worker reaches Redis over TLS (``rediss://``) only with a certificate it can verify.

The private redis-server listens on a plain port (the hub and the tests, as admin) and on a TLS
port with a certificate from a throw-away CA. A worker given that CA (``REDIS_CA_CERTS``) serves
tasks; one without it refuses the connection instead of falling back to an unverified one (which
is what kombu does for ``rediss://`` unless told otherwise).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from morag_worker.core.cli.devstack import free_port
from tests.conftest import Stack
from tests.processes import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command"),
]


def make_certs(folder: Path) -> dict[str, Path]:
    """A CA and a server certificate for localhost / 127.0.0.1, made with the openssl command."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in ("ca.pem", "ca.key", "server.pem", "server.key")}

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60, cwd=folder)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=morag-test-ca")  # fmt: skip
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost")  # fmt: skip
    (folder / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return paths


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_certs(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def redis_args(certs: dict[str, Path], tls_port: int) -> tuple[str, ...]:
    return (
        "--tls-port", str(tls_port), "--tls-cert-file", str(certs["server.pem"]),
        "--tls-key-file", str(certs["server.key"]), "--tls-ca-cert-file", str(certs["ca.pem"]),
        "--tls-auth-clients", "no",
    )  # fmt: skip


@pytest.fixture(scope="module")
def tls_url(stack: Stack, tls_port: int) -> str:
    return f"rediss://localhost:{tls_port}/0"


def test_a_worker_with_the_ca_serves_tasks_over_tls(
    stack: Stack, tls_url: str, certs: dict[str, Path], tmp_path: Path
) -> None:
    key = stack.key("tls")
    stack.start_worker("tls", key, name="w@tls", broker_url=tls_url, REDIS_CA_CERTS=str(certs["ca.pem"]))
    client = stack.client(key)
    note = tmp_path / "note.txt"
    note.write_text("carried over TLS\n")
    task_id = client.create_task(file_id=client.upload(note)["file_id"])["task_id"]
    view = wait_for(lambda: (v := client.task(task_id)).done and v, 120, "the task to finish")
    assert view.result is not None and view.result["success"] and "over TLS" in view.result["content"]
    assert view.result["metadata"]["worker_hostname"] == "w@tls"


def test_a_worker_that_cannot_verify_the_certificate_does_not_connect(stack: Stack, tls_url: str) -> None:
    key = stack.key("tls-nocert")
    worker = stack.start_worker("tls-nocert", key, name="w@tls-nocert", broker_url=tls_url, wait_ready=False)
    worker.wait_output("CERTIFICATE_VERIFY_FAILED", timeout=120)
    assert not worker.saw("worker.ready")
    with stack.redis.client() as admin:
        assert not [c for c in admin.client_list() if c.get("user") == "worker-tls-nocert"]
    worker.stop()
