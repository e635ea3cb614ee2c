"""End to end: a client that stops reading cannot make the server queue without bound."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from tests.e2e import server_service, wait_until
from tests.rawws import RawWebSocket

pytestmark = pytest.mark.django_db(transaction=True)


class StalledClient:
    """A socket.io client over a raw websocket that subscribes, starts, then never reads again."""

    def __init__(self, url: str) -> None:
        self.ws = RawWebSocket(url, "/socket.io/?EIO=4&transport=websocket")
        assert self.ws.recv().startswith("0{")  # engine.io open
        self.ws.send("40")  # socket.io connect
        self.sid = orjson.loads(self.recv_until("40")[2:])["sid"]

    def recv_until(self, prefix: str) -> str:
        while True:
            frame = self.ws.recv()
            if frame == "2":
                self.ws.send("3")  # answer engine.io pings
            elif frame.startswith(prefix):
                return frame

    def call(self, ack_id: int, event: str, arg: object) -> list:
        self.ws.send(f"42{ack_id}" + orjson.dumps([event, arg]).decode())
        return orjson.loads(self.recv_until(f"43{ack_id}")[2 + len(str(ack_id)) :])


async def test_stalled_client_is_paused_then_disconnected(kafka, make_topic, allow, asgi_server, settings):
    settings.KASOCKI_MAX_BACKLOG_BYTES = 256 * 1024
    settings.KASOCKI_SLOW_CLIENT_TIMEOUT = 3.0
    topic = make_topic()
    allow(topic)
    total = 20_000
    kafka.produce(topic, [{"i": i, "pad": "x" * 1000} for i in range(total)])
    service = server_service()
    client = await asyncio.to_thread(StalledClient, asgi_server.url)
    try:
        err, _ = await asyncio.to_thread(client.call, 0, "subscribe", {"topic": topic, "partition": 0, "offset": 0})
        assert err is None
        connection = next(c for c in service.connections.values() if c.assignments and c.requests[0].topic == topic)
        client.ws.send('421["start",null]')
        # The client reads nothing from here on. The server stops reading Kafka for it ...
        await wait_until(lambda: connection.delivered > 0, what="streaming began")
        await wait_until(lambda: connection.outbound.backlog() > 128 * 1024, what="backlog over the cap")
        delivered = connection.delivered
        assert delivered < total
        # ... keeps what waits for it bounded (the cap plus one batch) ...
        assert connection.outbound.backlog() < 256 * 1024 + 600 * 1100
        # ... and drops it once it has been stalled for longer than the timeout.
        await wait_until(lambda: connection.closed, timeout=15, what="stalled client dropped")
        assert connection.delivered < total
    finally:
        client.ws.close()
