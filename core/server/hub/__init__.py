"""The server-side HTTP hub (DESIGN §4): keys in, files and tasks out, per user."""

from morag_worker.core.server.hub.app import HubConfig, create_app

__all__ = ["HubConfig", "create_app"]
