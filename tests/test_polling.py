"""Long-polling clients read streams: polls carry at most 16 packets, python-engineio's client limit."""

from __future__ import annotations

import asyncio

import pytest
from engineio.payload import Payload

from kasocki_app.polling import MAX_PACKETS_PER_POLL
from tests.e2e import collect

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_cap_is_the_python_clients_limit():
    assert Payload.max_decode_packets == MAX_PACKETS_PER_POLL


@pytest.mark.parametrize("batch", [None, {"batch": 7}])
async def test_a_python_polling_client_receives_a_whole_backlog_in_order(kafka, make_topic, allow, connect, batch):
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"i": i} for i in range(500)])
    client = await connect(transports=["polling"])
    await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
    await client.ok("start", batch)
    if batch is None:
        received = await collect(client, "message", 500)
    else:
        received = [m for b in await collect(client, "messages", 72) for m in b]  # 71 x 7 + 3
    assert [m["i"] for m in received] == list(range(500))
    await client.ok("stop", None)
    assert client.sio.connected and client.sio.transport() == "polling"


async def test_a_polling_client_leaves_without_waiting_for_its_poll_to_time_out(make_topic, allow, connect):
    topic = make_topic()
    allow(topic)
    client = await connect(transports=["polling"])
    await client.ok("subscribe", topic)
    # The client sends CLOSE, then waits for its poll in progress; that poll used to hang until
    # the server's poll timeout (25 s + 20 s) instead of ending with the session.
    await asyncio.wait_for(client.close(), 10)
