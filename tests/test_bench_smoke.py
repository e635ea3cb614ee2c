"""The benchmark's lean socket.io and SSE clients and its client processes work against the live server (no timing)."""

from __future__ import annotations

import asyncio
import os
import time

import orjson
import pytest

from bench.client import LeanClient
from bench.sse_client import SSEClient, StreamRefused, id_holds
from bench.swarm import Swarm

pytestmark = pytest.mark.django_db(transaction=True)


def records(count: int) -> list[dict]:
    return [{"id": i, "bucket": i % 3, "nested": {"n": i}} for i in range(count)]


async def test_lean_client_connects_subscribes_and_streams(kafka, make_topic, allow, asgi_server):
    topic = make_topic(partitions=2)
    kafka.produce(topic, records(6), partition=0)
    kafka.produce(topic, records(4), partition=1)
    allow(topic)
    client = await LeanClient.connect(asgi_server.url)
    try:
        assert client.sid
        assert topic in await client.next_event("ready")
        assignments = [{"topic": topic, "partition": p, "offset": 0} for p in range(2)]
        err, res = await client.call("subscribe", assignments)
        assert err is None
        assert [(a["partition"], a["offset"]) for a in res] == [(0, 0), (1, 0)]

        received: list[dict] = []
        done = asyncio.get_running_loop().create_future()

        def on_message(message: dict) -> None:
            received.append(message)
            if len(received) == 10 and not done.done():
                done.set_result(None)

        client.on("message", on_message)
        assert await client.call("start", None) == (None, None)
        await asyncio.wait_for(done, 20)
        assert sorted((m["_kafka"]["partition"], m["_kafka"]["offset"]) for m in received) == [
            *((0, o) for o in range(6)),
            *((1, o) for o in range(4)),
        ]
        assert received[0]["nested"] == {"n": received[0]["id"]}
        assert (await client.call("stop", None))[0] is None
    finally:
        await client.close()


async def test_lean_client_consume_acks_and_batches(kafka, make_topic, allow, asgi_server):
    topic = make_topic()
    kafka.produce(topic, records(9))
    allow(topic)
    client = await LeanClient.connect(asgi_server.url)
    try:
        await client.next_event("ready")
        await client.ok("subscribe", [{"topic": topic, "partition": 0, "offset": 0}])
        await client.ok("filter", {"bucket": 1})
        first, second = await asyncio.gather(client.ok("consume"), client.ok("consume"))
        assert sorted([first["id"], second["id"]]) == [1, 4]

        batches: list[list[dict]] = []
        client.on("messages", batches.append)
        await client.ok("start", {"batch": 10})
        for _ in range(100):
            if batches:
                break
            await asyncio.sleep(0.1)
        assert [m["id"] for m in batches[0]] == [7]
    finally:
        await client.close()


async def test_lean_client_reports_error_acks(kafka, asgi_server):
    client = await LeanClient.connect(asgi_server.url)
    try:
        await client.next_event("ready")
        err, res = await client.call("consume", None)
        assert res is None and err["name"] == "NotSubscribedError"
    finally:
        await client.close()


async def test_sse_client_streams_messages_with_ids_at_the_next_offset(kafka, make_topic, allow, asgi_server):
    topic = make_topic(partitions=2)
    kafka.produce(topic, records(3), partition=0)
    kafka.produce(topic, records(2), partition=1)
    allow(topic)
    client = await SSEClient.connect(asgi_server.url, [{"topic": topic, "partition": p, "offset": 0} for p in range(2)])
    try:
        assert client.status == 200 and client.ok.done()
        assert sorted((a["partition"], a["offset"]) for a in client.assignment) == [(0, 0), (1, 0)]
        received: list[tuple[dict, bytes | None]] = []
        done = asyncio.get_running_loop().create_future()

        def on_message(message: dict, event_id: bytes | None) -> None:
            received.append((message, event_id))
            if len(received) == 5 and not done.done():
                done.set_result(None)

        client.on_message(on_message)
        await asyncio.wait_for(done, 20)
        assert sorted((m["_kafka"]["partition"], m["_kafka"]["offset"]) for m, _id in received) == [
            (0, 0), (0, 1), (0, 2), (1, 0), (1, 1)
        ]  # fmt: skip
        assert all(id_holds(event_id, m["_kafka"]) for m, event_id in received)
        assert received[0][0]["nested"] == {"n": received[0][0]["id"]}
        assert client.errors == [] and not client.closed.done()
    finally:
        await client.close()


async def test_sse_client_reports_a_refused_stream(kafka, asgi_server):
    with pytest.raises(StreamRefused) as refused:
        await SSEClient.connect(asgi_server.url, "kasocki-bench-not-allowed", timeout=20)
    assert refused.value.status == 404
    assert orjson.loads(refused.value.body)["name"] == "TopicNotAvailableError"


@pytest.mark.parametrize("kind", ["socketio", "sse"])
async def test_swarm_checks_every_clients_offsets(kafka, make_topic, allow, asgi_server, tmp_path, kind):
    topic = make_topic(partitions=2)
    allow(topic)
    kafka.produce(topic, [{"id": i, "sent_at": time.time()} for i in range(5)], partition=0)
    kafka.produce(topic, [{"id": i, "sent_at": time.time()} for i in range(3)], partition=1)
    swarm = await Swarm.start(asgi_server.url, 2, 2, dict(os.environ), tmp_path / "clients.log")
    try:
        await swarm.window([1, 0])  # count from offset 1 of partition 0
        subscribe = [{"topic": topic, "partition": p, "offset": o} for p, o in ((0, 1), (1, 0))]
        opened = await swarm.open(3, ramp=30, timeout=20, subscribe=subscribe, kind=kind)
        assert (opened["clients"], opened["failed"]) == (3, 0), opened["failures"]
        caught_up, _waited = await swarm.wait_caught_up([5, 3], timeout=20)
        assert caught_up == 3
        merged = await swarm.collect(until=[5, 3], expect_first=[1, 0])
        assert (merged["clients"], merged["received_min"], merged["received_max"]) == (3, 7, 7)
        assert (merged["lost_total"], merged["inexact"], merged["behind"], merged["samples"]) == (0, 0, 0, 21)
        assert merged["clients_with_wrong_ids"] == 0
        wrong = await swarm.collect(until=[5, 3], expect_first=[0, 0])  # a first offset not asked for
        assert wrong["inexact"] == 3
    finally:
        await swarm.stop()
