"""What a worker does with queue entries that are not task messages, without a broker."""

from __future__ import annotations

import ssl
from types import SimpleNamespace
from typing import Any

import pytest
from kombu.exceptions import ContentDisallowed

from morag_worker.core.execution.broker_transport import CheckedMessage, MalformedEnvelope, envelope_problem
from morag_worker.core.execution.celery_config import BROKER_TRANSPORT, base_config
from morag_worker.core.execution.task_args import MalformedTask

pytestmark = pytest.mark.unit

GOOD = {
    "body": "W1tdLCB7fSwge31d",
    "content-type": "application/json",
    "content-encoding": "utf-8",
    "headers": {"task": "t", "id": "1"},
    "properties": {
        "delivery_tag": "tag",
        "body_encoding": "base64",
        "delivery_info": {"exchange": "", "routing_key": "gpu-tasks-u1"},
    },
}


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        ([1, 2], "it is a list, not a message envelope"),
        ("text", "it is a string, not a message envelope"),
        (None, "it is null, not a message envelope"),
        ({}, "it has no properties"),
        ({**GOOD, "properties": {"delivery_info": {}}}, "it has no delivery tag"),
        ({**GOOD, "properties": {"delivery_tag": "t"}}, "it has no delivery info"),
        ({**GOOD, "properties": {"delivery_tag": "t", "delivery_info": {"exchange": 1}}}, "no delivery info"),
        ({**GOOD, "body": 12}, "its body is int"),
        ({**GOOD, "headers": ["task"]}, "its headers is a list"),
        ({**GOOD, "content-type": {"a": 1}}, "its content-type is an object"),
    ],
)
def test_envelope_problems_are_named(payload: Any, problem: str) -> None:
    found = envelope_problem(payload)
    assert found is not None and problem in found


def test_a_well_formed_envelope_passes_and_builds_a_message() -> None:
    assert envelope_problem(GOOD) is None
    channel = SimpleNamespace(decode_body=lambda body, encoding: b"[[], {}, {}]")
    message = CheckedMessage(GOOD, channel=channel)
    assert message.delivery_tag == "tag" and message.headers["task"] == "t"


def test_an_undecodable_body_is_a_malformed_envelope() -> None:
    def decode_body(body: str, encoding: str | None) -> bytes:
        raise AttributeError("'NoneType' object has no attribute 'decode'")  # an unknown body_encoding

    with pytest.raises(MalformedEnvelope, match="body cannot be decoded"):
        CheckedMessage(GOOD, channel=SimpleNamespace(decode_body=decode_body))
    with pytest.raises(MalformedEnvelope, match="no properties"):
        CheckedMessage({"body": ""}, channel=None)


def test_every_redis_role_uses_the_hardened_transport() -> None:
    assert base_config({"REDIS_URL": "redis://h:6379/0"})["broker_transport"] == BROKER_TRANSPORT
    assert base_config({})["worker_consumer"].endswith(":MoragConsumer")
    assert "broker_transport" not in base_config({"REDIS_URL": "memory://"})


def test_rediss_is_verified_tls_unless_the_url_says_otherwise() -> None:
    conf = base_config({"REDIS_URL": "rediss://h:6380/0"})
    assert conf["broker_transport"] == BROKER_TRANSPORT
    assert conf["broker_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert conf["redis_backend_use_ssl"] == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    explicit = base_config({"REDIS_URL": "rediss://h:6380/0?ssl_cert_reqs=required"})
    assert "broker_use_ssl" not in explicit  # kombu and Celery read it from the URL
    assert "broker_use_ssl" not in base_config({"REDIS_URL": "redis://h:6379/0"})


class _Backend:
    def __init__(self) -> None:
        self.failed: list[tuple[str, BaseException]] = []

    def mark_as_failure(self, task_id: str, exc: BaseException) -> None:
        self.failed.append((task_id, exc))


def test_a_rejected_message_fails_its_task_id_with_the_reason() -> None:
    from morag_worker.core.worker import _fail_rejected_message

    backend = _Backend()
    sender = SimpleNamespace(app=SimpleNamespace(backend=backend))
    refused = ContentDisallowed("Refusing to deserialize untrusted content of type pickle")
    _fail_rejected_message(sender=sender, message=SimpleNamespace(headers={"id": "t-1"}), exc=refused)
    ((task_id, error),) = backend.failed
    assert task_id == "t-1" and isinstance(error, MalformedTask)
    assert "refused before it ran" in str(error) and "pickle" in str(error)
    for headers in (None, {"id": 7}, {"id": ""}, {"id": "x" * 300}, {}):
        _fail_rejected_message(sender=sender, message=SimpleNamespace(headers=headers), exc=refused)
    assert len(backend.failed) == 1  # no usable id: logged only


def test_redis_replies_are_read_by_hiredis_in_every_client() -> None:
    """With hiredis missing, or older than redis-py accepts, redis-py quietly parses in Python."""
    import redis.asyncio.connection
    import redis.connection
    from redis._parsers import _AsyncHiredisParser, _HiredisParser

    assert redis.connection.DefaultParser is _HiredisParser  # submitter, worker
    assert redis.asyncio.connection.DefaultParser is _AsyncHiredisParser  # hub
