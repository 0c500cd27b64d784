"""Celery configuration for every role: local workers, remote (contributor) workers, submitters.

Pure functions from an environment mapping to configuration dicts, so they are tested without a
broker. The per-user namespace is kombu's ``global_keyprefix`` on broker *and* result backend
(DESIGN §3); a remote worker additionally logs in as the ACL user ``worker-{user_id}`` with its
API key as the password, taken from the environment (never from argv).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit, urlunsplit

from morag_worker.core.naming import DEFAULT_QUEUE, acl_username, namespace_prefix

# ``core/remote_transport.py``'s alias (registered by the worker before it connects); not imported
# from there, which would load kombu's Redis transport with this module.
REMOTE_TRANSPORT = "morag-redis"

__all__ = [
    "BROKER_TRANSPORT",
    "DEFAULT_REDIS_URL",
    "TimeLimits",
    "base_config",
    "broker_url_with_credentials",
    "namespaced_config",
    "reliability_summary",
    "remote_worker_config",
    "strip_credentials",
    "time_limits_from_env",
    "tls_options",
]

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
BROKER_TRANSPORT = "morag_worker.core.execution.broker_transport:Transport"


@dataclass(frozen=True)
class TimeLimits:
    """Soft and hard task limits and the broker visibility timeout, all in seconds."""

    soft: int = 7200
    hard: int = 7800
    visibility: int = 10800


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number of seconds, not {raw!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {value}")
    return value


def time_limits_from_env(env: Mapping[str, str]) -> TimeLimits:
    """CELERY_SOFT_TIME_LIMIT / CELERY_TIME_LIMIT / CELERY_VISIBILITY_TIMEOUT, consistent."""
    soft = _int_env(env, "CELERY_SOFT_TIME_LIMIT", TimeLimits.soft)
    hard = _int_env(env, "CELERY_TIME_LIMIT", max(TimeLimits.hard, soft + 60))
    if hard <= soft:
        raise ValueError("CELERY_TIME_LIMIT must be larger than CELERY_SOFT_TIME_LIMIT")
    # The visibility timeout normally exceeds the longest task, or a task still running would be
    # delivered a second time; tests set it low on purpose to see redelivery quickly.
    visibility = _int_env(env, "CELERY_VISIBILITY_TIMEOUT", max(TimeLimits.visibility, hard + 600))
    return TimeLimits(soft=soft, hard=hard, visibility=visibility)


def strip_credentials(url: str) -> str:
    """``url`` without user name or password (what the hub advertises and what may be logged)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def broker_url_with_credentials(url: str, username: str, password: str) -> str:
    """``url`` with ``username:password`` as its user info (built in-process, never put in argv)."""
    bare = urlsplit(strip_credentials(url))
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{bare.netloc}"
    return urlunsplit((bare.scheme, netloc, bare.path, bare.query, bare.fragment))


def _socket_options(health_check: int = 25) -> dict[str, Any]:
    return {
        "socket_timeout": 30,
        "socket_connect_timeout": 10,
        "socket_keepalive": True,
        "health_check_interval": health_check,
        "retry_on_timeout": True,
    }


def tls_options(url: str, env: Mapping[str, str]) -> dict[str, Any] | None:
    """For a ``rediss://`` URL: verify the server's certificate and host name (None otherwise).

    Without this kombu connects to ``rediss://`` *without* verifying the certificate (it only
    warns), and a worker's password is its API key. ``REDIS_CA_CERTS`` names a CA bundle when the
    server's certificate is not signed by one the system trusts.
    """
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return None  # plain Redis, or the URL says how to check the certificate itself
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if env.get("REDIS_CA_CERTS"):
        options["ssl_ca_certs"] = env["REDIS_CA_CERTS"]
    return options


def _redis_transport(broker: str) -> dict[str, Any]:
    """Our hardened Redis transport (``broker_transport``: queue garbage is dropped, not fatal)."""
    if urlsplit(broker).scheme not in ("redis", "rediss"):
        return {}
    return {"broker_transport": BROKER_TRANSPORT}


def base_config(env: Mapping[str, str]) -> dict[str, Any]:
    """Settings every role shares: JSON only, the default ``celery`` queue, reliability options."""
    broker = env.get("REDIS_URL") or DEFAULT_REDIS_URL
    limits = time_limits_from_env(env)
    transport = {**_socket_options(), "visibility_timeout": limits.visibility}
    config = {
        **_redis_transport(broker),
        "broker_url": broker,
        "result_backend": broker,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "task_default_queue": DEFAULT_QUEUE,
        "task_default_exchange": DEFAULT_QUEUE,
        "task_default_exchange_type": "direct",
        "task_default_routing_key": DEFAULT_QUEUE,
        "task_create_missing_queues": True,
        # No STARTED write per task (a GET, SETEX and PUBLISH): a task's first progress state says
        # it started, once it has lasted long enough for a person to see it (SettledStates).
        "task_track_started": False,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_hijack_root_logger": False,
        "worker_consumer": "morag_worker.core.execution.consumer:MoragConsumer",
        "worker_redirect_stdouts": False,
        "task_soft_time_limit": limits.soft,
        "task_time_limit": limits.hard,
        "visibility_timeout": limits.visibility,
        "broker_transport_options": transport,
        "result_backend_transport_options": dict(transport),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "broker_heartbeat": 0,
        "redis_socket_timeout": 30,
        "redis_socket_connect_timeout": 10,
        "redis_retry_on_timeout": True,
        "redis_socket_keepalive": True,
        "redis_backend_health_check_interval": 25,
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        "result_expires": 7 * 24 * 3600,
        "result_extended": False,
        "broker_pool_limit": 4,
    }
    tls = tls_options(broker, env)
    if tls is not None:
        config.update(broker_use_ssl=tls, redis_backend_use_ssl=dict(tls))
    return config


def namespaced_config(env: Mapping[str, str], user_id: str) -> dict[str, Any]:
    """``base_config`` with every broker and result key under ``morag:ns:{user_id}:``.

    The server side publishes a user's remote tasks and reads their results with this.
    """
    config = base_config(env)
    prefix = namespace_prefix(user_id)
    config["broker_transport_options"] = {
        **config["broker_transport_options"],
        "global_keyprefix": prefix,
    }
    config["result_backend_transport_options"] = {
        **config["result_backend_transport_options"],
        "global_keyprefix": prefix,
    }
    return config


def remote_worker_config(env: Mapping[str, str], user_id: str) -> dict[str, Any]:
    """A contributor's worker: namespaced, logged in as ``worker-{user_id}``, exposing nothing shared.

    Remote control, task events, gossip, mingle and heartbeat are off, so nobody can broadcast to
    the worker and it leaks nothing to a shared event stream. Its transport leaves the restore of
    stale deliveries to the hub's watchdog, so its ACL needs no Lua (``core/remote_transport.py``).
    """
    config = namespaced_config(env, user_id)
    api_key = env.get("MORAG_API_KEY")
    if api_key:
        url = broker_url_with_credentials(config["broker_url"], acl_username(user_id), api_key)
        config["broker_url"] = url
        config["result_backend"] = url
    config.update(
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_consumer="morag_worker.core.execution.consumer:RemoteConsumer",
        broker_transport=REMOTE_TRANSPORT,
    )
    return config


def reliability_summary(conf: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a worker's reliability rests on, as it runs (no URLs, no secrets).

    Sent in the worker's ``ready`` message so that the supervisor and tests see what reached the
    remote role after ``celeryd_init`` switched it.
    """
    transport = conf.get("broker_transport_options") or {}
    backend = conf.get("result_backend_transport_options") or {}
    return {
        "task_acks_late": conf.get("task_acks_late"),
        "task_reject_on_worker_lost": conf.get("task_reject_on_worker_lost"),
        "worker_prefetch_multiplier": conf.get("worker_prefetch_multiplier"),
        "worker_cancel_long_running_tasks_on_connection_loss": conf.get(
            "worker_cancel_long_running_tasks_on_connection_loss"
        ),
        "visibility_timeout": transport.get("visibility_timeout"),
        "result_visibility_timeout": backend.get("visibility_timeout"),
        "app_visibility_timeout": conf.get("visibility_timeout"),
        "task_soft_time_limit": conf.get("task_soft_time_limit"),
        "task_time_limit": conf.get("task_time_limit"),
        "broker_connection_retry_on_startup": conf.get("broker_connection_retry_on_startup"),
        "broker_connection_max_retries": conf.get("broker_connection_max_retries"),
        "health_check_interval": transport.get("health_check_interval"),
        "socket_timeout": transport.get("socket_timeout"),
        "global_keyprefix": transport.get("global_keyprefix"),
        "result_global_keyprefix": backend.get("global_keyprefix"),
        "worker_enable_remote_control": conf.get("worker_enable_remote_control"),
        "accept_content": list(conf.get("accept_content") or []),
    }
