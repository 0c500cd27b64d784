"""Recognising Redis refusing the worker's login (a revoked key), and reporting it once in a while."""

from __future__ import annotations

import os

import pytest
import redis

from morag_worker.core.execution.context import get_runtime
from morag_worker.core.execution.health import broker_auth
from morag_worker.core.execution.progress_channel import BrokerRefusedMessage, ChannelWriter, parse_line

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    "exc",
    [
        redis.AuthenticationError("invalid username-password pair or user is disabled."),
        redis.ResponseError("WRONGPASS invalid username-password pair or user is disabled."),
        redis.ResponseError("NOAUTH Authentication required."),
        redis.ConnectionError("Error while reading from socket"),  # raised from a refused login below
    ],
)
def test_authentication_failures_are_recognised(exc: Exception) -> None:
    if type(exc) is redis.ConnectionError:
        try:
            try:
                raise redis.AuthenticationError("invalid username-password pair")
            except redis.AuthenticationError as inner:
                raise exc from inner
        except redis.ConnectionError as outer:
            exc = outer
    assert broker_auth.is_auth_failure(exc)


@pytest.mark.parametrize(
    "exc",
    [
        redis.ConnectionError("Connection refused"),
        redis.TimeoutError("Timeout reading from socket"),
        redis.ResponseError("NOPERM this user has no permissions to access one of the keys"),
        ValueError("not base64"),
    ],
)
def test_other_errors_are_not_taken_for_a_revoked_key(exc: Exception) -> None:
    assert not broker_auth.is_auth_failure(exc)


def test_a_refusal_goes_on_the_channel_once_per_interval_without_the_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    read_end, write_end = os.pipe()
    runtime = get_runtime()
    monkeypatch.setattr(runtime, "channel", ChannelWriter(write_end))
    broker_auth._reset()
    try:
        secret = "K" * 43
        error = redis.AuthenticationError(f"invalid username-password pair for {secret}")
        from morag_worker.core.logging import register_secret

        register_secret(secret)
        assert broker_auth.report_refusal("presence", error, now=100.0)
        assert not broker_auth.report_refusal("presence", error, now=101.0)  # a retry loop
        assert not broker_auth.report_refusal("presence", redis.ConnectionError("refused"), now=200.0)
        assert broker_auth.report_refusal("consumer", error, now=102.0)  # each source has its turn
        assert broker_auth.report_refusal("presence", error, now=100.0 + broker_auth.REPORT_EVERY_S)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as lines:
            messages = [parse_line(line) for line in lines]
    finally:
        broker_auth._reset()
    assert [type(m) for m in messages] == [BrokerRefusedMessage] * 3
    first = messages[0]
    assert isinstance(first, BrokerRefusedMessage)
    assert first.source == "presence" and "invalid username-password pair" in first.error
    assert secret not in first.error
