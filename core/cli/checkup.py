"""``morag-worker self-test`` and ``morag-worker diagnostics``: check this machine, or pack what
support needs into a zip with every secret removed. The work is in ``core.diagnosis``; this module
reads the arguments and prints."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from morag_worker.core.cli.errors import CliError, ExitCode
from morag_worker.core.cli.keysource import resolve_hub
from morag_worker.core.config.credentials import (
    API_KEY_ENV,
    CredentialError,
    CredentialStore,
    key_file_path,
    read_api_key_file,
)
from morag_worker.core.config.settings import (
    Settings,
    SettingsError,
    SettingsStore,
    apply_env,
    default_log_dir,
)
from morag_worker.core.diagnosis.bundle import BundleContents, write_bundle
from morag_worker.core.diagnosis.report import SelfTestReport, render_text
from morag_worker.core.diagnosis.selftest import SelfTestSetup, run_self_test
from morag_worker.core.logging import redact
from morag_worker.core.supervisor.gpu import NvmlProbe
from morag_worker.core.wording import sentence

__all__ = ["log_dirs", "run_diagnostics", "run_self_test_command"]


def _settings(args: argparse.Namespace) -> Settings:
    """The settings a worker would run with: the file, the environment, then ``--hub``."""
    try:
        settings = apply_env(SettingsStore(getattr(args, "config_dir", None)).load(), os.environ)
    except SettingsError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from None
    return replace(settings, hub_url=resolve_hub(args))


def log_dirs(config_dir: Path | None) -> list[Path]:
    """Where the app writes its log files: ``CONFIG_DIR/logs`` with ``--config-dir``, else the
    platform's per-user log folder (the tray app's rule, ``gui.entry.AppPaths``)."""
    return [config_dir / "logs"] if config_dir is not None else [default_log_dir()]


def _store(args: argparse.Namespace) -> CredentialStore:
    """The keychain and key file the other verbs read (``keysource.resolve_key``, ``login``)."""
    return CredentialStore(key_file=key_file_path(getattr(args, "config_dir", None)))


def _self_test(args: argparse.Namespace, settings: Settings) -> SelfTestReport:
    return run_self_test(
        SelfTestSetup(
            settings=settings,
            env=os.environ,
            api_key_file=getattr(args, "api_key_file", None),
            credentials=_store(args),
        )
    )


def run_self_test_command(args: argparse.Namespace) -> int:
    report = _self_test(args, _settings(args))
    if args.json:
        print(redact(json.dumps(report.to_json(), indent=2, ensure_ascii=False)))
    else:
        sys.stdout.write(redact(render_text(report)))
    return int(ExitCode.OK if report.ok else ExitCode.CHECK_FAILED)


def _known_secrets(args: argparse.Namespace, hub_url: str) -> list[str]:
    """Every API key this machine could use, from every source, so that none reaches the bundle."""
    found = [os.environ.get(API_KEY_ENV, "").strip()]
    # A file that cannot be used holds no key the worker sends; without a keychain nothing is stored.
    if getattr(args, "api_key_file", None) is not None:
        with contextlib.suppress(CredentialError):
            found.append(read_api_key_file(args.api_key_file))
    with contextlib.suppress(CredentialError):
        found.append(_store(args).get(hub_url) or "")
    return [key for key in found if key]


def run_diagnostics(args: argparse.Namespace) -> int:
    settings = _settings(args)
    target: Path = args.output
    if target.suffix.lower() != ".zip":
        raise CliError(f"the bundle must be a .zip file, not {target.name!r}", ExitCode.USAGE)
    report = None if args.no_self_test else _self_test(args, settings)
    contents = BundleContents(
        settings_store=SettingsStore(getattr(args, "config_dir", None)),
        env=os.environ,
        log_dirs=log_dirs(getattr(args, "config_dir", None)),
        gpus=NvmlProbe().list_gpus(),
        report=report,
        secrets=_known_secrets(args, settings.hub_url),
        log_kb=args.log_kb,
    )
    try:
        names = write_bundle(target, contents)
    except OSError as exc:
        raise CliError(f"cannot write {target}: {exc.strerror or exc}", ExitCode.CONFIG) from None
    print(
        sentence(
            f"wrote {target} ({len(names)} files: versions, settings, logs, self-test, GPU); API keys and "
            "passwords were removed from it"
        ),
        file=sys.stderr,
    )
    if report is not None and not report.ok:
        failed = ", ".join(c.title for c in report.failed)
        print(sentence(f"the self-test found problems: {failed}; see self-test.json in it"), file=sys.stderr)
    return int(ExitCode.OK)
