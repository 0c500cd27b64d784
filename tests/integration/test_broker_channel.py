"""Our Redis channel against a real redis-server: the commands it sends outside the event loop."""

from __future__ import annotations

from typing import Any

import pytest
from kombu import Connection

from morag_worker.core.execution.broker_transport import Channel, Transport
from tests.processes import RedisServer

pytestmark = pytest.mark.integration


def test_a_channel_sends_its_commands_through_one_client_until_its_pool_is_replaced(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[bool] = []
    create = Channel._create_client

    def counting(self: Channel, asynchronous: bool = False) -> Any:
        made.append(asynchronous)
        return create(self, asynchronous)

    monkeypatch.setattr(Channel, "_create_client", counting)
    with Connection(redis_server.url, transport=Transport) as connection:
        queue = connection.SimpleQueue("channel-test")
        channel = queue.channel
        for n in range(3):
            queue.put({"n": n})  # a publish
            message = queue.get(timeout=10)  # a get and the unacked entry
            message.ack()  # the ack
            assert message.payload == {"n": n}
        assert made.count(False) == 1

        kept = channel._kept_client
        channel._disconnect_pools()  # as after a fork: the kept client's pool is disconnected
        queue.put({"n": 3})
        message = queue.get(timeout=10)
        message.ack()
        assert message.payload == {"n": 3} and made.count(False) == 2
        assert channel._kept_client is not kept and channel._kept_client.connection_pool is channel.pool
        assert channel.client.llen("channel-test") == 0
        queue.close()
    client = redis_server.client()
    assert client.hlen("unacked") == 0 and client.zcard("unacked_index") == 0
