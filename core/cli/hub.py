"""``morag-worker hub``: serve the HTTP hub with uvicorn over the admin Redis connection
(``--redis-url`` or ``REDIS_URL``; there is no default)."""

from __future__ import annotations

import argparse
import os

from morag_worker.core.celery_config import time_limits_from_env

from .errors import CliError, ExitCode
from .redis_url import admin_redis_url

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    redis_url = admin_redis_url(args)
    import uvicorn

    from morag_worker.core.hub import HubConfig, create_app

    try:
        visibility = args.visibility_timeout or float(time_limits_from_env(os.environ).visibility)
    except ValueError as exc:
        raise CliError(str(exc), ExitCode.CONFIG) from None
    config = HubConfig(
        redis_url=redis_url,
        storage_dir=args.storage,
        max_upload_bytes=args.max_upload_mb * 1024 * 1024,
        public_url=args.public_url or os.environ.get("MORAG_HUB_PUBLIC_URL"),
        worker_broker_url=args.worker_broker_url or os.environ.get("MORAG_WORKER_BROKER_URL"),
        maintenance_interval_s=args.maintenance_interval,
        visibility_timeout_s=visibility,
    )
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return int(ExitCode.OK)
