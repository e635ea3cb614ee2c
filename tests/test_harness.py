"""The harness itself: a real broker, a live server, a socket.io client that reaches Kafka through it."""

from __future__ import annotations

import pytest

from tests.e2e import http_json

pytestmark = pytest.mark.django_db(transaction=True)


def test_healthz_answers_ok(asgi_server):
    assert http_json(f"{asgi_server.url}/healthz") == (200, {"status": "ok"})


def test_readyz_answers_ok_when_kafka_is_reachable(asgi_server):
    status, body = http_json(f"{asgi_server.url}/readyz")
    assert status == 200 and body["status"] == "ok"


async def test_client_reaches_kafka_through_the_server(kafka, make_topic, allow, connect):
    topic = make_topic()
    kafka.produce(topic, [{"hello": "world"}])
    allow(topic)
    client = await connect()
    assert topic in await client.next("ready")
