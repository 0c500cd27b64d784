"""Hostile and broken input, through a real worker child: each is a clear failure, never a crash.

One contributor's worker (prefork, acks late, under the production ACL) serves ``gpu-tasks-dave``.
Its hub (``MAIN_SERVER_URL``) is a scripted HTTP server run by this module, so the hub's origin, the
only origin exempt from the address rules, can misbehave on cue: redirect to loopback, send a gzip
bomb, trickle, lie about sizes. Tasks are published into dave's namespace the way a server does
(``routing.submit_task_for_user``, or a namespaced Celery app's ``send_task``), or pushed into Redis
by hand when the message itself is the attack. After every case the worker is still alive and
serves the next task.

How each case fails (DESIGN §2): a task whose *input* is at fault ends as a SUCCESS state carrying
a result with ``success: false`` and a plain ``error_message`` (malformed arguments, refused URLs,
local-only tasks, inputs over the cap, bombs). A task whose *infrastructure* failed fails (state
FAILURE, the exception message says why): the hub redirecting, a download too slow for its
deadline or minimum rate. A message the worker refuses to decode (pickle) never reaches a task; the
worker marks its task id FAILURE so the submitter is not left waiting.

Names for this machine: ``localhost``, ``localhost.`` and ``*.localhost`` are refused by name, before
any lookup; names that /etc/hosts maps to loopback (often the machine's own host name) are tried too
when there are any. A DNS name resolving to 127.0.0.1 would need a resolver, which tests do not have;
the resolve-then-check path is what the /etc/hosts names exercise.

Redirects: the hub's origin is the only one the worker may fetch from on loopback, and hub downloads
follow no redirects, so "an allowed origin redirecting to loopback" is the hub's origin redirecting.
Per-hop checks of redirects between public origins need a public address and are unit-tested
(tests/unit/test_transfer.py, ``test_redirect_to_an_internal_address_is_refused``).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from celery.result import AsyncResult

from morag_worker.core.routing import app_for_user, submit_task_for_user
from tests.bombs import docx_with_member, gzip_bomb, zero_crc, zero_deflate
from tests.conftest import SAMPLES, Stack
from tests.httpserver import HTTPTestServer, Route
from tests.processes import MemoryWatch, Proc, wait_for

pytestmark = pytest.mark.integration

USER = "dave"
QUEUE = f"gpu-tasks-{USER}"
QUEUE_KEY = f"morag:ns:{USER}:{QUEUE}"
MIB = 1024 * 1024
CAP_MB = 4  # the worker's MORAG_MAX_INPUT_MB
DEADLINE_S = 6  # its MORAG_DOWNLOAD_DEADLINE_S
MIN_RATE = 4096  # its MORAG_DOWNLOAD_MIN_RATE, over MORAG_DOWNLOAD_MIN_RATE_WINDOW_S=1
URL_TASK = "morag.worker.process_url_task_remote"
FILE_TASK = "morag.worker.process_file_task_remote"


# --- the world: a fake hub, dave's worker, a loopback listener that must never be reached ---------


class Listener:
    """Accepts TCP connections on 127.0.0.1:PORT and [::1]:PORT and counts them."""

    def __init__(self) -> None:
        self.accepted: list[str] = []
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        for _ in range(20):  # find a port free on both address families
            v4 = socket.socket(socket.AF_INET)
            v4.bind(("127.0.0.1", 0))
            port = v4.getsockname()[1]
            v6 = socket.socket(socket.AF_INET6)
            v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                v6.bind(("::1", port))
            except OSError:
                v4.close()
                v6.close()
                continue
            self._sockets = [v4, v6]
            self.port = port
            break
        else:
            raise RuntimeError("no port free on both 127.0.0.1 and ::1")
        self._threads = []
        for sock in self._sockets:
            sock.listen(16)
            thread = threading.Thread(target=self._accept, args=(sock,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, peer = sock.accept()
            except OSError:
                return
            with self._lock:
                self.accepted.append(str(peer[0]))
            conn.close()

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self._threads:
            thread.join(timeout=10)


@dataclass
class Outcome:
    state: str
    result: dict[str, Any] | None
    error: str | None

    @property
    def refused(self) -> str:
        """The error message of a ``success: false`` result (the case must have ended that way)."""
        assert self.state == "SUCCESS", self
        assert self.result is not None and self.result["success"] is False, self.result
        assert self.result["content"] is None
        message = self.result["error_message"]
        assert isinstance(message, str) and message
        return message

    @property
    def failed(self) -> str:
        """The message of a FAILURE state (the case must have ended that way)."""
        assert self.state == "FAILURE", self
        assert self.error
        return self.error


@dataclass
class World:
    stack: Stack
    hub: HTTPTestServer  # the worker's MAIN_SERVER_URL
    worker: Proc
    app: Celery  # dave's namespace, over the admin connection (what the server publishes with)
    listener: Listener

    def send(self, name: str, args: list[Any] | None = None, kwargs: dict[str, Any] | None = None,
             **options: Any) -> AsyncResult:  # fmt: skip
        return self.app.send_task(name, args=args or [], kwargs=kwargs or {}, queue=QUEUE, **options)

    def outcome(self, result: AsyncResult, timeout: float = 90) -> Outcome:
        wait_for(result.ready, timeout, f"task {result.id} to finish")
        if result.state == "SUCCESS":
            return Outcome("SUCCESS", result.result, None)
        return Outcome(result.state, None, str(result.result))

    def run(self, name: str, args: list[Any] | None = None, kwargs: dict[str, Any] | None = None,
            **options: Any) -> Outcome:  # fmt: skip
        return self.outcome(self.send(name, args, kwargs, **options))

    def still_serving(self) -> None:
        """The worker process is alive and the next task is served correctly."""
        assert self.worker.popen.poll() is None, self.worker.output()[-3000:]
        token = uuid.uuid4().hex
        self.hub.route(f"/ok/{token}.txt", Route(body=f"still serving {token}\n".encode()))
        done = self.run(FILE_TASK, [self.hub.url(f"/ok/{token}.txt"), USER, "text/plain"])
        assert done.state == "SUCCESS" and done.result is not None, done
        assert done.result["success"] is True, done.result
        assert token in done.result["content"]


@pytest.fixture(scope="module")
def world(stack: Stack) -> Iterator[World]:
    key = stack.key(USER)
    listener = Listener()
    with HTTPTestServer() as hub:
        original = stack.hub_url
        stack.hub_url = hub.origin  # the worker's hub origin is the scripted server
        try:
            worker = stack.start_worker(
                USER,
                key,
                MORAG_MAX_INPUT_MB=str(CAP_MB),
                MORAG_DOWNLOAD_DEADLINE_S=str(DEADLINE_S),
                MORAG_DOWNLOAD_MIN_RATE=str(MIN_RATE),
                MORAG_DOWNLOAD_MIN_RATE_WINDOW_S="1",
                MORAG_DOWNLOAD_ATTEMPTS="2",
            )
        finally:
            stack.hub_url = original
        app = app_for_user(USER, {"REDIS_URL": stack.redis.url})
        try:
            yield World(stack, hub, worker, app, listener)
        finally:
            listener.close()
    assert not listener.accepted, f"something connected to the loopback listener: {listener.accepted}"


@pytest.fixture(autouse=True)
def _no_connection_and_still_serving(world: World) -> Iterator[None]:
    before = len(world.listener.accepted)
    yield
    assert world.listener.accepted[before:] == [], "the worker connected to the loopback listener"
    world.still_serving()


# --- URLs aimed at this machine ---------------------------------------------------------------


def _loopback_names_from_hosts() -> list[str]:
    """Names in /etc/hosts, other than localhost, that resolve to loopback addresses only."""
    names: list[str] = []
    try:
        lines = Path("/etc/hosts").read_text().splitlines()
    except OSError:
        return names
    for line in lines:
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2 or not (fields[0].startswith("127.") or fields[0] == "::1"):
            continue
        for name in fields[1:]:
            if "localhost" in name or name in names:
                continue
            try:
                addresses = {info[4][0] for info in socket.getaddrinfo(name, 80)}
            except OSError:
                continue
            if addresses and all(a.startswith("127.") or a == "::1" for a in addresses):
                names.append(name)
    return names


SPELLINGS = [
    "http://127.0.0.1:{port}/",
    "http://127.0.0.1.:{port}/",
    "http://localhost:{port}/",
    "http://localhost.:{port}/",
    "http://LocalHost:{port}/",
    "http://files.localhost:{port}/",
    "http://2130706433:{port}/",
    "http://0x7f000001:{port}/",
    "http://0x7f.1:{port}/",
    "http://0177.0.0.1:{port}/",
    "http://127.1:{port}/",
    "http://0:{port}/",
    "http://0.0.0.0:{port}/",
    "http://１２７.０.０.１:{port}/",  # full-width digits: IDNA maps them to 127.0.0.1
    "http://[::1]:{port}/",
    "http://[::]:{port}/",
    "http://[::ffff:127.0.0.1]:{port}/",
    "http://[0:0:0:0:0:ffff:7f00:1]:{port}/",
    "https://127.0.0.1:{port}/",
    "http://example.org@127.0.0.1:{port}/",
    *(f"http://{name}:{{port}}/" for name in _loopback_names_from_hosts()),
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_url_task_aimed_at_loopback_is_refused_without_a_connection(world: World, spelling: str) -> None:
    url = spelling.format(port=world.listener.port)
    message = world.run(URL_TASK, [url, USER]).refused
    assert message.startswith("Refusing"), message


def test_loopback_refusals_also_hold_through_submit_task_for_user(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REDIS_URL", world.stack.redis.url)
    for host in ("127.0.0.1", "[::1]", "localhost."):
        result = submit_task_for_user(
            "morag.worker.process_url_task",
            [f"http://{host}:{world.listener.port}/admin", None, {}],
            user_id=USER,
            use_remote=True,
        )
        message = world.outcome(result).refused
        assert "loopback" in message or "localhost" in message, message


@pytest.mark.parametrize("task", [URL_TASK, FILE_TASK])
def test_a_hub_redirect_to_loopback_fails_the_task_and_is_not_followed(world: World, task: str) -> None:
    target = f"http://127.0.0.1:{world.listener.port}/internal-admin"
    path = f"/redirect/{uuid.uuid4().hex}"
    world.hub.route(path, Route(redirect_to=target))
    message = world.run(task, [world.hub.url(path), USER]).failed
    assert "redirect" in message and "follow none" in message, message
    assert len(world.hub.requests(path)) == 1


# --- malformed task messages ------------------------------------------------------------------

GOOD_URL = "https://example.org/doc.html"

MALFORMED = [
    pytest.param([12345, USER], None, "url must be a non-empty string, got int", id="url-not-a-string"),
    pytest.param([["a", "list"], USER], None, "got list", id="url-a-list"),
    pytest.param(["", USER], None, "non-empty", id="url-empty"),
    pytest.param([GOOD_URL, USER, 42], None, "content_type", id="content-type-int"),
    pytest.param([GOOD_URL, USER, None, "fast"], None, "task_options must be an object", id="options-str"),
    pytest.param([GOOD_URL, USER, None, {"size": "big"}], None, "'size' has the wrong type", id="size-str"),
    pytest.param([GOOD_URL, USER, None, {"size": -1}], None, "must not be negative", id="size-negative"),
    pytest.param([GOOD_URL, USER, None, {"sha256": "x"}], None, "64 hexadecimal", id="sha256-bad"),
    pytest.param([], None, "missing arguments", id="no-arguments"),
    pytest.param([GOOD_URL], None, "missing arguments", id="no-user-id"),
    pytest.param([GOOD_URL, USER, None, None, "extra"], None, "too many arguments", id="extra-positional"),
    pytest.param(
        [GOOD_URL, USER], {"priority": "high"}, "unexpected argument 'priority'", id="unknown-kwarg"
    ),
    pytest.param([GOOD_URL, USER], {"url": GOOD_URL}, "given twice", id="kwarg-twice"),
    pytest.param([GOOD_URL, "erin"], None, "serves user 'dave', not 'erin'", id="another-users-id"),
    pytest.param([GOOD_URL, "dave:*"], None, "invalid user id", id="user-id-pattern"),
    pytest.param([GOOD_URL, None], None, "invalid user id", id="user-id-null"),
]


@pytest.mark.parametrize(("args", "kwargs", "expect"), MALFORMED)
def test_malformed_arguments_are_a_clear_failure(
    world: World, args: list[Any], kwargs: dict[str, Any] | None, expect: str
) -> None:
    message = world.run(URL_TASK, args, kwargs).refused
    assert message.startswith("malformed task:"), message
    assert expect in message, message


def test_unknown_task_options_are_dropped_not_passed_on(world: World) -> None:
    world.hub.route("/opts.txt", Route(body=b"options are checked\n"))
    options = {"__class__": "x", "callback": "os.system", "language": "en"}
    done = world.run(FILE_TASK, [world.hub.url("/opts.txt"), USER, "text/plain", options])
    assert done.result is not None and done.result["success"] is True, done
    assert sorted(done.result["metadata"]["ignored_options"]) == ["__class__", "callback"]


def test_an_unregistered_task_name_fails_and_the_worker_carries_on(world: World) -> None:
    message = world.run("morag.worker.run_shell", ["id"]).failed
    assert "run_shell" in message


def test_a_pickle_message_is_refused_and_its_code_never_runs(world: World, tmp_path: Path) -> None:
    marker = tmp_path / "pickle-ran"

    class Exploit:
        def __reduce__(self) -> tuple[Any, ...]:
            return (os.makedirs, (str(marker),))

    result = world.send(URL_TASK, [Exploit(), USER], serializer="pickle")
    outcome = world.outcome(result)
    assert not marker.exists(), "the pickle payload was executed"
    message = outcome.failed
    assert "refused before it ran" in message and "pickle" in message, message
    assert world.worker.saw("Refusing to deserialize untrusted content of type pickle")
    admin = world.stack.redis.client()
    assert admin.llen(QUEUE_KEY) == 0  # consumed and dropped, not requeued to loop
    assert not admin.hlen(f"morag:ns:{USER}:unacked")


def _envelope(body: bytes, content_type: str, headers: dict[str, Any] | None) -> dict[str, Any]:
    tag = str(uuid.uuid4())
    envelope: dict[str, Any] = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": content_type,
        "properties": {
            "correlation_id": tag,
            "reply_to": "",
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": QUEUE},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": tag,
        },
    }
    if headers is not None:
        envelope["headers"] = headers
    return envelope


def _task_headers(task_id: str, task: str = URL_TASK) -> dict[str, Any]:
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "retries": 0,
            "timelimit": [None, None], "argsrepr": "", "kwargsrepr": "", "origin": "test"}  # fmt: skip


def _raw_task(payload: bytes, content_type: str = "application/json", **changes: Any) -> tuple[bytes, str]:
    """A task envelope around ``payload`` (changed by ``changes``) and the task id in its headers."""
    task_id = str(uuid.uuid4())
    envelope = {**_envelope(payload, content_type, _task_headers(task_id)), **changes}
    return json.dumps(envelope).encode(), task_id


GARBAGE: dict[str, tuple[bytes, str | None]] = {
    "not-json": (b"this is not JSON at all", None),
    "not-utf8": (b"\xff\xfe\x00garbage", None),
    "json-list": (b"[1, 2, 3]", None),
    "json-string": (b'"just a string"', None),
    "empty-object": (b"{}", None),
    "no-properties": (json.dumps({"body": "", "headers": {}}).encode(), None),
    "no-headers": (json.dumps(_envelope(b"[[], {}, {}]", "application/json", None)).encode(), None),
    "body-not-json": _raw_task(b"{not json"),
    "body-a-string": _raw_task(b'"a string"'),
    "body-not-base64": _raw_task(b"", body="%%%"),  # decodes to nothing: Celery refuses the empty body
    "body-bad-base64": _raw_task(b"", body="abc"),  # does not decode: the transport drops it
    # kombu's own envelope is broken (not a body a client can send): dropped like the ones above
    "body-encoding-unknown": (
        _raw_task(
            b"[[], {}, {}]",
            properties={**_envelope(b"", "application/json", None)["properties"], "body_encoding": "rot13"},
        )[0],
        None,
    ),  # fmt: skip
    "unknown-content-type": _raw_task(b"[[], {}, {}]", "application/x-unknown"),
    "yaml-content-type": _raw_task(b"!!python/object/apply:os.system ['true']", "application/x-yaml"),
}


# What the worker logs when it drops an entry without a task id (nobody to tell): the transport drops
# what is not a kombu envelope; an envelope without task headers reaches Celery, which rejects it as
# a message in an unknown format.
DROP_EVIDENCE = {"no-headers": "task.message_rejected"}
# How the submitter hears of it: Celery refused the message, or the transport could not even read it.
FAILED_AS = {"body-bad-base64": "The task message could not be read"}


@pytest.mark.parametrize("case", list(GARBAGE))
def test_garbage_pushed_into_the_queue_does_not_stop_the_worker(world: World, case: str) -> None:
    raw, task_id = GARBAGE[case]
    evidence = DROP_EVIDENCE.get(case, "broker.message_dropped")
    logged_before = world.worker.output().count(evidence)  # earlier cases logged drops too
    admin = world.stack.redis.client()
    admin.lpush(QUEUE_KEY, raw)
    wait_for(lambda: admin.llen(QUEUE_KEY) == 0, what="the worker to take the garbage off its queue")
    if task_id is not None:  # an envelope with a task id: its submitter learns that it was refused
        outcome = world.outcome(AsyncResult(task_id, app=world.app))
        assert FAILED_AS.get(case, "refused before it ran") in outcome.failed, outcome
    else:
        wait_for(
            lambda: world.worker.output().count(evidence) > logged_before,
            what=f"the worker to log {evidence!r} for this entry",
        )
    assert world.worker.popen.poll() is None
    assert not admin.hlen(f"morag:ns:{USER}:unacked")  # dropped for good, never restored to loop


def test_a_50_mb_argument_is_refused_with_bounded_memory(world: World) -> None:
    """The consumer decodes the whole message and the pool child gets the arguments: a transient
    peak of several copies (measured: about +460 MiB), part of it kept by the allocator afterwards
    (about +270 MiB, the same after every such message). Bounded, and it does not accumulate."""
    huge = "https://example.org/" + "a" * (50 * MIB)
    runs = []
    for _ in range(2):
        with MemoryWatch(world.worker.pid) as memory:
            message = world.run(URL_TASK, [huge, USER], timeout=180).refused
        assert "longer than 8192 characters" in message
        assert len(message) < 200  # the argument is not echoed back
        # What the allocator keeps settles within a moment of the result.
        memory.after = wait_for(
            lambda m=memory: m.settled(), timeout=30, what="the worker's memory to settle"
        )
        runs.append(memory)
    first, second = runs
    assert first.peak - first.baseline < 800, runs
    assert second.peak - second.baseline < 800, runs
    assert second.after - first.after < 64, runs  # a second message does not add to what is kept


# --- local-only tasks: a contributor's machine never reads its own files for a task ---------


@pytest.fixture
def secret_file(tmp_path: Path) -> tuple[Path, str]:
    token = "s3cret-" + uuid.uuid4().hex
    path = tmp_path / "secret.txt"
    path.write_text(f"{token}\n")
    return path, token


@pytest.mark.parametrize("which", ["etc-hostname", "secret"])
def test_a_local_file_task_is_refused_by_a_contributors_worker(
    world: World, secret_file: tuple[Path, str], which: str
) -> None:
    path, token = secret_file
    target = "/etc/hostname" if which == "etc-hostname" else str(path)
    done = world.run("morag.worker.process_file_task", [target, "text/plain"])
    message = done.refused
    assert "not accepted by a contributor's worker" in message
    assert token not in json.dumps(done.result)
    if which == "etc-hostname" and Path("/etc/hostname").is_file():
        hostname = Path("/etc/hostname").read_text().strip()
        assert done.result is not None and done.result["content"] is None
        assert len(hostname) < 4 or hostname not in message


def test_a_local_url_task_is_refused_by_a_contributors_worker(world: World) -> None:
    url = f"http://127.0.0.1:{world.listener.port}/"
    assert (
        "not accepted by a contributor's worker" in world.run("morag.worker.process_url_task", [url]).refused
    )


@pytest.mark.parametrize("form", ["file:///{path}", "{path}", "file://localhost/{path}"])
def test_a_remote_task_cannot_name_a_local_path(
    world: World, secret_file: tuple[Path, str], form: str
) -> None:
    path, token = secret_file
    source = form.format(path=str(path).lstrip("/") if form.startswith("file") else str(path))
    done = world.run(FILE_TASK, [source, USER])
    assert done.refused.startswith("Refusing"), done.refused
    assert token not in json.dumps(done.result)


# --- oversized input (the hub's own upload cap: tests/integration/test_hub.py) ----------------


def test_a_declared_size_over_the_cap_fails_before_any_request(world: World) -> None:
    path = f"/declared/{uuid.uuid4().hex}"
    world.hub.route(path, Route(body=b"x" * 100))
    options = {"size": (CAP_MB + 1) * MIB}
    message = world.run(FILE_TASK, [world.hub.url(path), USER, None, options]).refused
    assert f"over the {CAP_MB:.1f} MiB limit" in message, message
    assert world.hub.requests(path) == []


@pytest.mark.parametrize("send_length", [True, False], ids=["content-length", "chunked"])
def test_a_body_over_the_cap_is_refused(world: World, send_length: bool) -> None:
    path = f"/big/{uuid.uuid4().hex}"
    world.hub.route(path, Route(body=b"y" * ((CAP_MB + 2) * MIB), send_length=send_length))
    sent_before = world.hub.body_bytes_sent
    message = world.run(FILE_TASK, [world.hub.url(path), USER]).refused
    assert f"over the {CAP_MB:.1f} MiB limit" in message, message
    # Read at most up to the cap and a chunk (plus what the server pushed into socket buffers).
    assert world.hub.body_bytes_sent - sent_before <= (CAP_MB + 2) * MIB


def test_a_gzip_bomb_from_the_hub_origin_is_capped_on_decoded_bytes(world: World) -> None:
    bomb = gzip_bomb(1)  # 1 GiB of zeros in about 1 MiB
    assert len(bomb) < 2 * MIB
    path = f"/bomb/{uuid.uuid4().hex}.txt"
    world.hub.route(path, Route(body=bomb, headers={"Content-Encoding": "gzip"}, ranges=False))
    with MemoryWatch(world.worker.pid) as memory:
        message = world.run(FILE_TASK, [world.hub.url(path), USER, "text/plain"]).refused
    assert f"over the {CAP_MB:.1f} MiB limit" in message, message
    assert memory.peak - memory.baseline < 200, memory


DOCUMENT = "word/document.xml"
BOMBS = {
    # word/document.xml declares (honestly) that it unpacks to 2 GiB of zeros
    "declares-2-GiB": lambda: docx_with_member(
        SAMPLES / "sample.docx", DOCUMENT, zero_deflate(2048), 2048 * MIB, zero_crc(2048)
    ),
    # declares 1000 bytes but its stream holds 1 GiB
    "lies-about-its-size": lambda: docx_with_member(
        SAMPLES / "sample.docx", DOCUMENT, zero_deflate(1024), 1000, 0
    ),
    # 64 MiB of zeros declared honestly: under every size cap, but compressed about 1000:1
    "64-MiB-at-1000-to-1": lambda: docx_with_member(
        SAMPLES / "sample.docx", DOCUMENT, zero_deflate(64), 64 * MIB, zero_crc(64)
    ),
}


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_a_zip_bomb_docx_is_a_clear_failure(world: World, bomb: str) -> None:
    data = BOMBS[bomb]()
    assert len(data) < 3 * MIB
    path = f"/docx/{uuid.uuid4().hex}.docx"
    world.hub.route(path, Route(body=data))
    started = time.monotonic()
    with MemoryWatch(world.worker.pid) as memory:
        message = world.run(FILE_TASK, [world.hub.url(path), USER, None, {"filename": "report.docx"}]).refused
    assert "DOCX" in message, message
    assert time.monotonic() - started < 60
    assert memory.peak - memory.baseline < 300, memory


# --- slow servers ---------------------------------------------------------------------------


def test_a_trickle_under_the_minimum_rate_fails_the_task(world: World) -> None:
    path = f"/trickle/{uuid.uuid4().hex}"
    world.hub.route(path, Route(body=b"z" * 10_000, trickle=(10, 0.05)))  # ~200 B/s
    started = time.monotonic()
    message = world.run(FILE_TASK, [world.hub.url(path), USER]).failed
    assert "too slow" in message and f"under {MIN_RATE} B/s" in message, message
    assert "after 2 attempts" in message
    assert time.monotonic() - started < DEADLINE_S + 20


def test_a_download_that_cannot_finish_by_the_deadline_fails_the_task(world: World) -> None:
    path = f"/slow/{uuid.uuid4().hex}"
    # 3 MiB at about 128 KiB/s: well over the minimum rate, but it would take 24 s.
    world.hub.route(path, Route(body=b"w" * (3 * MIB), trickle=(16 * 1024, 0.125)))
    started = time.monotonic()
    message = world.run(FILE_TASK, [world.hub.url(path), USER]).failed
    assert f"within its {DEADLINE_S} s limit" in message, message
    assert time.monotonic() - started < DEADLINE_S + 20
