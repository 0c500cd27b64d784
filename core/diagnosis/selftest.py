"""Runs the self-test's checks in order, each guarded, and gathers them into one report.

The collaborators come in through ``SelfTestSetup`` (a keychain, a hub client factory, a GPU probe,
a transcriber factory), so tests drive real parts and fake only NVML. Blocks for seconds (keychain,
HTTP, Redis, a conversion, possibly a speech model): run it off any GUI thread.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import structlog

from morag_worker import __version__
from morag_worker.core.config.credentials import CredentialStore
from morag_worker.core.config.settings import Settings
from morag_worker.core.diagnosis.local_checks import (
    TranscriberFactory,
    check_conversion,
    check_gpu,
    check_transcription,
    default_transcriber,
)
from morag_worker.core.diagnosis.remote_checks import check_broker, check_hub, check_keychain
from morag_worker.core.diagnosis.report import CheckName, CheckResult, Outcome, SelfTestReport
from morag_worker.core.hub_client import HubClient, HubClientFactory
from morag_worker.core.supervisor.gpu import GpuProbe, NvmlProbe

__all__ = ["SelfTestSetup", "run_self_test"]

log = structlog.get_logger(__name__)


def _hub_client(hub_url: str, api_key: str) -> HubClient:
    """A hub client with short timeouts: a person is waiting for the answer."""
    return HubClient(hub_url, api_key, timeout=(5.0, 15.0))


@dataclass
class SelfTestSetup:
    """What the self-test checks with; production defaults except ``settings`` and ``env``."""

    settings: Settings
    env: Mapping[str, str]
    api_key_file: Path | None = None
    credentials: CredentialStore = field(default_factory=CredentialStore)
    hub_client_factory: HubClientFactory = _hub_client
    gpu_probe: GpuProbe = field(default_factory=NvmlProbe)
    transcriber_factory: TranscriberFactory = default_transcriber


def _guarded(name: CheckName, run: Callable[[], CheckResult]) -> CheckResult:
    started = time.monotonic()
    try:
        result = run()
    except Exception as exc:  # noqa: BLE001 - one broken check must not hide the others
        log.exception("selftest.check_crashed", check=name.value)
        result = CheckResult(
            name,
            Outcome.FAILED,
            f"the check itself failed ({type(exc).__name__}: {exc})",
            "send `morag-worker diagnostics -o diagnostics.zip` to the hub's operator",
        )
    return replace(result, seconds=time.monotonic() - started)


def run_self_test(setup: SelfTestSetup) -> SelfTestReport:
    """Every check, in the order a worker needs them; a check that needs an earlier one's result is
    skipped when that one failed."""
    hub_url = setup.settings.hub_url
    checks: list[CheckResult] = []
    found = None
    info = None

    def keychain() -> CheckResult:
        nonlocal found
        result, found = check_keychain(setup.credentials, hub_url, setup.env, setup.api_key_file)
        return result

    def hub() -> CheckResult:
        nonlocal info
        result, info = check_hub(setup.hub_client_factory, hub_url, found)
        return result

    checks.append(_guarded(CheckName.KEYCHAIN, keychain))
    checks.append(_guarded(CheckName.HUB, hub))
    checks.append(_guarded(CheckName.BROKER, lambda: check_broker(info, found, setup.env)))
    with tempfile.TemporaryDirectory(prefix="morag-self-test-") as folder:
        work = Path(folder)
        checks.append(_guarded(CheckName.CONVERSION, lambda: check_conversion(work)))
        checks.append(
            _guarded(
                CheckName.TRANSCRIPTION,
                lambda: check_transcription(work, setup.env, setup.transcriber_factory),
            )
        )
    checks.append(_guarded(CheckName.GPU, lambda: check_gpu(setup.gpu_probe, setup.settings)))
    report = SelfTestReport(app_version=__version__, hub_url=hub_url, checks=checks)
    log.info("selftest.done", ok=report.ok, **report.counts())
    return report
