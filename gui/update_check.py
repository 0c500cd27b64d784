"""Whether a newer worker release is out: the hub advertises one in queue-info (``worker_version``).

``latest_release`` asks the hub with the user's key and compares (``core.hub_client.newer_version``);
it blocks on the network, so ``TrayApp`` runs it through its background helper once per session,
when the worker first runs. ``update_notice`` is what the tray then says. A hub that does not
advertise a version, or answers with an error, means no notice: nobody is told to update because
the check failed.
"""

from __future__ import annotations

from collections.abc import Callable

from morag_worker import DISPLAY_NAME, __version__
from morag_worker.core.hub_client import HubClientLike, newer_version

from .notifications import Level, Notice

__all__ = ["latest_release", "update_notice"]


def latest_release(
    client_factory: Callable[[str, str], HubClientLike], hub_url: str, api_key: str, own: str = __version__
) -> str | None:
    """The release the hub advertises when it is newer than ``own``; None otherwise. Blocks."""
    client = client_factory(hub_url, api_key)
    try:
        info = client.queue_info()
    finally:
        client.close()
    return newer_version(getattr(info, "worker_version", None), own)


def update_notice(version: str, own: str = __version__) -> Notice:
    """The tray's notice that ``version`` is available."""
    return Notice(
        f"{DISPLAY_NAME} {version} is available",
        f"This computer runs version {own}. Your hub's administrator can tell you where to get the "
        "new version; this one keeps working meanwhile.",
        Level.INFO,
    )
