"""``morag-worker hub``: serve the HTTP hub with uvicorn over the admin Redis connection
(``--redis-url`` or ``REDIS_URL``; there is no default)."""

from __future__ import annotations

import argparse
import os

from morag_worker import __version__
from morag_worker.core.cli.errors import CliError, ExitCode
from morag_worker.core.cli.redis_url import admin_redis_url
from morag_worker.core.execution.celery_config import time_limits_from_env

__all__ = ["run"]


def run(args: argparse.Namespace) -> int:
    redis_url = admin_redis_url(args)
    import uvicorn

    from morag_worker.core.server.hub import HubConfig, create_app
    from morag_worker.core.server.hub.connections import AddressGate, hub_protocol
    from morag_worker.core.server.hub.guard import HubLimits

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
        worker_version=args.worker_version or os.environ.get("MORAG_HUB_WORKER_VERSION") or __version__,
        maintenance_interval_s=args.maintenance_interval,
        watchdog_interval_s=args.watchdog_interval,
        visibility_timeout_s=visibility,
        models_dir=args.models_dir,
        max_result_bytes=int(args.max_result_mb) * 1024 * 1024,
        limits=HubLimits(
            max_json_bytes=int(args.max_json_kb) * 1024,
            header_timeout_s=args.header_timeout,
            body_idle_timeout_s=args.body_timeout,
            min_body_rate_bps=int(args.min_body_rate_kb) * 1024,
            max_in_flight=args.max_in_flight,
            redis_max_connections=args.redis_max_connections,
            redis_pool_timeout_s=args.redis_pool_timeout,
            rate_window_s=int(args.rate_window),
            auth_failures_per_address=args.auth_failures_per_address,
            auth_failures_per_key=args.auth_failures_per_key,
            tasks_per_key=args.tasks_per_key,
            tasks_per_address=args.tasks_per_address,
        ),
    )
    gate = AddressGate(args.max_connections_per_address, config.limits.retry_after_s)
    uvicorn.run(
        create_app(config, gate),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
        # h11 with the address gate and a header-read deadline (uvicorn has none); idle keep-alive
        # connections close after uvicorn's own timeout_keep_alive; a header block over h11's
        # 16 KiB is a 400.
        http=hub_protocol(args.header_timeout, gate),
        timeout_keep_alive=5,
    )
    return int(ExitCode.OK)
