"""The harness itself: a real broker, a live server, a socket.io client that reaches Kafka through it."""

from __future__ import annotations

import urllib.request

import orjson
import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:  # the error holds the response's connection
            return exc.code, orjson.loads(exc.read())


def test_healthz_answers_ok(asgi_server):
    assert get(f"{asgi_server.url}/healthz") == (200, {"status": "ok"})


def test_readyz_answers_ok_when_kafka_is_reachable(asgi_server):
    status, body = get(f"{asgi_server.url}/readyz")
    assert status == 200 and body["status"] == "ok"


async def test_client_reaches_kafka_through_the_server(kafka, make_topic, allow, connect):
    topic = make_topic()
    kafka.produce(topic, [{"hello": "world"}])
    allow(topic)
    client = await connect()
    assert topic in await client.next("ready")
