"""Where a client verb gets the hub URL and the API key from (flags, environment, settings, keychain)."""

from __future__ import annotations

import argparse
import os

from morag_worker.core.cli.errors import CliError, ExitCode
from morag_worker.core.config.credentials import (
    CredentialError,
    CredentialStore,
    ResolvedKey,
    key_file_path,
    resolve_api_key,
)
from morag_worker.core.config.settings import InvalidHubUrl, SettingsError, SettingsStore, normalise_hub_url

__all__ = ["resolve_hub", "resolve_hub_and_key"]


def resolve_hub(args: argparse.Namespace) -> str:
    """--hub, then MAIN_SERVER_URL, then the settings file's hub URL (normalised)."""
    url = getattr(args, "hub", None) or os.environ.get("MAIN_SERVER_URL")
    if not url:
        try:
            url = SettingsStore(getattr(args, "config_dir", None)).load().hub_url
        except SettingsError as exc:
            raise CliError(str(exc), ExitCode.CONFIG) from None
    try:
        return normalise_hub_url(url)
    except InvalidHubUrl as exc:
        raise CliError(f"invalid hub URL: {exc}", ExitCode.USAGE) from None


def resolve_key(args: argparse.Namespace, hub_url: str) -> ResolvedKey:
    """--api-key-file, then MORAG_API_KEY, then the keychain entry for ``hub_url``."""
    try:
        return resolve_api_key(
            env=os.environ,
            api_key_file=getattr(args, "api_key_file", None),
            store=CredentialStore(key_file=key_file_path(getattr(args, "config_dir", None))),
            hub_url=hub_url,
        )
    except CredentialError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from None


def resolve_hub_and_key(args: argparse.Namespace) -> tuple[str, str]:
    hub_url = resolve_hub(args)
    return hub_url, resolve_key(args, hub_url).key
