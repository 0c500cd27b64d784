"""Where a client verb gets the hub URL and the API key from (flags, environment, keychain)."""

from __future__ import annotations

import argparse
import os

from .errors import CliError, ExitCode

__all__ = ["resolve_hub_and_key"]

DEFAULT_HUB_URL = "http://127.0.0.1:8700"


def resolve_hub_and_key(args: argparse.Namespace) -> tuple[str, str]:
    """``(hub_url, api_key)``: --hub / MAIN_SERVER_URL, then --api-key-file / MORAG_API_KEY / keychain."""
    hub_url = getattr(args, "hub", None) or os.environ.get("MAIN_SERVER_URL") or DEFAULT_HUB_URL
    from morag_worker.core.credentials import (
        ApiKeyFileError,
        CredentialStore,
        KeychainUnavailable,
        NoApiKey,
        resolve_api_key,
    )

    try:
        resolved = resolve_api_key(
            env=os.environ,
            api_key_file=getattr(args, "api_key_file", None),
            store=CredentialStore(),
            hub_url=hub_url,
        )
    except (ApiKeyFileError, NoApiKey, KeychainUnavailable) as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from None
    return hub_url, resolved.key
