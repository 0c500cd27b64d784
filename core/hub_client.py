"""A typed client of the hub's HTTP API, used by ``submit``, ``login`` and the worker supervisor.

Errors come out as three kinds a person can act on: the hub cannot be reached, the key was
refused, or the hub answered with an error. The API key is sent only to the hub's own origin.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import requests
import structlog

from morag_worker.core.wording import error_words

__all__ = [
    "HubClient",
    "HubClientFactory",
    "HubClientLike",
    "HubError",
    "HubForbidden",
    "HubUnreachable",
    "KeyRejected",
    "QueueInfo",
    "TaskView",
    "newer_version",
    "quick_client",
]

log = structlog.get_logger(__name__)

#: (connect, read) seconds for a question that should answer at once (queue-info): a hung hub
#: is said within seconds, not after the minute an upload may need.
QUICK_TIMEOUT = (5.0, 15.0)


class HubError(Exception):
    """The hub answered, but with an error."""


class HubUnreachable(HubError):
    """No answer from the hub (down, wrong address, network)."""


class KeyRejected(HubError):
    """The hub does not accept the API key (unknown, revoked or expired)."""


class HubForbidden(HubError):
    """The key is valid but may not do what was asked (403), e.g. local tasks with a user key."""


@dataclass(frozen=True)
class QueueInfo:
    """What a worker needs besides its key (DESIGN §4 queue-info)."""

    user_id: str
    gpu_queue: str
    cpu_queue: str
    default_queue: str
    broker_url: str
    broker_username: str
    key_prefix: str
    expires_at: str | None = None
    role: str | None = None  # "user" or "server"; None from a hub that does not say
    worker_version: str | None = None  # the current worker release the hub advertises, if it does

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QueueInfo:
        broker = data.get("broker") or {}
        return cls(
            user_id=str(data["user_id"]),
            gpu_queue=str(data["gpu_queue"]),
            cpu_queue=str(data["cpu_queue"]),
            default_queue=str(data.get("default_queue", "celery")),
            broker_url=str(broker.get("url", "")),
            broker_username=str(broker.get("username", "")),
            key_prefix=str(broker.get("key_prefix", "")),
            expires_at=data.get("expires_at"),
            role=data.get("role"),
            worker_version=_text_or_none(data.get("worker_version")),
        )


def _text_or_none(value: object) -> str | None:
    return value.strip()[:64] or None if isinstance(value, str) else None


_VERSION = re.compile(r"^v?(\d+(?:\.\d+)*)(?:[-._]?(dev|a|alpha|b|beta|c|rc|pre|preview)[-._]?(\d*))?$", re.I)
_PHASES = {"dev": 0, "a": 1, "alpha": 1, "b": 2, "beta": 2, "c": 3, "rc": 3, "pre": 3, "preview": 3}


def _version_key(text: str) -> tuple[tuple[int, ...], int, int] | None:
    match = _VERSION.match(text.strip())
    if match is None:
        return None
    release = tuple(int(part) for part in match.group(1).split("."))
    release += (0,) * (4 - len(release)) if len(release) < 4 else ()
    phase = match.group(2)
    if phase is None:
        return release, 9, 0  # a final release sorts after its pre-releases
    return release, _PHASES[phase.lower()], int(match.group(3) or 0)


def newer_version(advertised: str | None, own: str) -> str | None:
    """``advertised`` when it names a later release than ``own``; None when it does not, or when
    either cannot be read as a version (``1.2``, ``v1.2.3``, ``1.3.0rc1`` can)."""
    if not advertised:
        return None
    theirs, ours = _version_key(advertised), _version_key(own)
    if theirs is None or ours is None:
        return None
    return advertised.strip() if theirs > ours else None


@dataclass(frozen=True)
class TaskView:
    task_id: str
    state: str
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None

    @property
    def done(self) -> bool:
        return self.state in ("SUCCESS", "FAILURE", "REVOKED", "REJECTED")


class _ProgressReader:
    """A file wrapper that reports how much of it has been read (upload progress)."""

    def __init__(self, handle: BinaryIO, total: int, progress: Callable[[int, int], None]) -> None:
        self._handle = handle
        self._total = total
        self._done = 0
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self._done += len(chunk)
        self._progress(self._done, self._total)
        return chunk

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.read(1024 * 1024):
            yield chunk

    def __len__(self) -> int:
        return self._total


class HubClientLike(Protocol):
    """What checking a key needs from a hub client: the supervisor's prepare and the key dialog use
    only this, so tests give them a fake hub."""

    def queue_info(self) -> QueueInfo: ...

    def close(self) -> None: ...


HubClientFactory = Callable[[str, str], HubClientLike]  # (hub_url, api_key) -> client


class HubClient:
    """Calls the hub at ``base_url`` with ``api_key``; ``session`` is injectable for tests."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (10.0, 60.0),
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._key = api_key
        self._session = session or requests.Session()
        self._session.trust_env = False
        self._timeout = timeout

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self._key}", **kwargs.pop("headers", {})}
        try:
            response = self._session.request(
                method,
                self.base_url + path,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                **kwargs,
            )
        except requests.RequestException as exc:
            log.info("hub_client.request_failed", error=type(exc).__name__)  # the class, for us
            raise HubUnreachable(f"cannot reach the hub at {self.base_url}: {error_words(exc)}") from None
        if response.status_code == 401:
            raise KeyRejected("the hub rejected the API key (unknown, revoked or expired)")
        if response.status_code == 403:
            raise HubForbidden(f"the hub refused: {_error_text(response)}")
        if response.status_code >= 400:
            raise HubError(f"the hub answered {response.status_code}: {_error_text(response)}")
        return response

    def queue_info(self) -> QueueInfo:
        return QueueInfo.from_json(self._request("GET", "/api/v1/auth/queue-info").json())

    def upload(self, path: Path, *, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
        size = path.stat().st_size
        with path.open("rb") as handle:
            body: Any = _ProgressReader(handle, size, progress) if progress else handle
            response = self._request(
                "POST",
                "/api/v1/files",
                params={"filename": path.name},
                data=body,
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(size)},
            )
        data: dict[str, Any] = response.json()
        return data

    def create_task(
        self,
        *,
        file_id: str | None = None,
        url: str | None = None,
        content_type: str | None = None,
        task_options: dict[str, Any] | None = None,
        remote: bool = True,
        worker_type: str = "gpu",
    ) -> dict[str, Any]:
        body = {
            "file_id": file_id,
            "url": url,
            "content_type": content_type,
            "task_options": task_options,
            "remote": remote,
            "worker_type": worker_type,
        }
        data: dict[str, Any] = self._request("POST", "/api/v1/tasks", json=body).json()
        return data

    def task(self, task_id: str) -> TaskView:
        data = self._request("GET", f"/api/v1/tasks/{task_id}").json()
        return TaskView(
            task_id=data["task_id"],
            state=data["state"],
            progress=data.get("progress"),
            result=data.get("result"),
            error=data.get("error"),
        )

    def workers(self) -> list[dict[str, Any]]:
        workers: list[dict[str, Any]] = self._request("GET", "/api/v1/workers").json()["workers"]
        return workers

    def close(self) -> None:
        self._session.close()


def _error_text(response: requests.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text[:200] or response.reason
    if isinstance(data, dict):
        return str(data.get("error") or data.get("detail") or data)[:300]
    return str(data)[:300]


def quick_client(base_url: str, api_key: str) -> HubClient:
    """A client for the key check and the start's queue-info: it gives up after ``QUICK_TIMEOUT``."""
    return HubClient(base_url, api_key, timeout=QUICK_TIMEOUT)
