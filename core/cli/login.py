"""``morag-worker login`` / ``logout``: check a key against the hub, keep it in the OS keychain.

The key is read from a prompt (hidden), from stdin when it is not a terminal, or from
``--api-key-file``; never from argv. Only after the hub accepted it is it stored.
"""

from __future__ import annotations

import argparse
import getpass
import sys
from dataclasses import replace

from morag_worker.core.cli.errors import CliError, ExitCode
from morag_worker.core.cli.keysource import resolve_hub
from morag_worker.core.config.credentials import (
    CredentialError,
    CredentialStore,
    KeyPlace,
    key_file_path,
    read_api_key_file,
)
from morag_worker.core.config.settings import SettingsError, SettingsStore
from morag_worker.core.hub_client import HubClient, HubError, HubUnreachable, KeyRejected
from morag_worker.core.logging import register_secret
from morag_worker.core.wording import sentence

__all__ = ["run_login", "run_logout"]


def _read_key(args: argparse.Namespace) -> str:
    if args.api_key_file is not None:
        try:
            return read_api_key_file(args.api_key_file)
        except CredentialError as exc:
            raise CliError(str(exc), ExitCode.CONFIG) from None
    interactive = sys.stdin.isatty()
    key = (getpass.getpass("API key (input hidden): ") if interactive else sys.stdin.readline()).strip()
    if not key:
        raise CliError("no API key given", ExitCode.USAGE)
    return key


def run_login(args: argparse.Namespace) -> int:
    hub_url = resolve_hub(args)
    key_file = key_file_path(args.config_dir)
    in_file = bool(getattr(args, "keep_key_in_file", False))
    try:
        store = CredentialStore(key_file=key_file)
        backend = f"a file only you can read ({key_file})" if in_file else store.backend_description
    except CredentialError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from None
    key = _read_key(args)
    register_secret(key)
    client = HubClient(hub_url, key)
    try:
        info = client.queue_info()
    except KeyRejected as exc:
        raise CliError(f"{exc}; nothing was stored", ExitCode.KEY_REJECTED) from None
    except HubUnreachable as exc:
        raise CliError(
            f"{exc}; check the hub URL (--hub) and your network", ExitCode.HUB_UNREACHABLE
        ) from None
    except HubError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from None
    finally:
        client.close()
    try:
        store.set(hub_url, key, KeyPlace.FILE if in_file else KeyPlace.KEYCHAIN)
    except CredentialError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from None
    settings_store = SettingsStore(args.config_dir)
    try:
        settings = settings_store.load()
        if settings.hub_url != hub_url:
            settings_store.save(replace(settings, hub_url=hub_url))
    except SettingsError as exc:
        print(f"morag-worker: {sentence(f'warning: could not save the hub URL: {exc}')}", file=sys.stderr)
    expiry = f", expires {info.expires_at}" if info.expires_at else ""
    print(
        f"Logged in to {hub_url} as user {info.user_id!r} (queues {info.gpu_queue} / "
        f"{info.cpu_queue}{expiry}).",
        file=sys.stderr,
    )
    print(f"The key is stored in: {backend}.", file=sys.stderr)
    print("To check everything a worker needs, run `morag-worker self-test`.", file=sys.stderr)
    return int(ExitCode.OK)


def run_logout(args: argparse.Namespace) -> int:
    hub_url = resolve_hub(args)
    try:
        # The keychain, and the key file a computer without one may have been given.
        removed = CredentialStore(key_file=key_file_path(args.config_dir)).delete(hub_url)
    except CredentialError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from None
    if removed:
        print(f"Removed the API key for {hub_url}.", file=sys.stderr)
    else:
        print(f"No API key for {hub_url} was stored.", file=sys.stderr)
    return int(ExitCode.OK)
