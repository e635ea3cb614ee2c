"""The official JavaScript socket.io client speaks the Kasocki protocol with the live server."""

from __future__ import annotations

import time

import pytest

from tests.node import run_script

pytestmark = pytest.mark.django_db(transaction=True)

COUNT = 20  # offsets 0..19; odd ones are blue, so the last one is


def test_socket_io_client_subscribes_consumes_filters_and_streams(kafka, make_topic, allow, asgi_server):
    topic = make_topic()
    values = [{"n": n, "color": "blue" if n % 2 else "green", "nested": {"list": [n]}} for n in range(COUNT)]
    # A recent timestamp: the broker's retention would soon delete older records.
    timestamp = int(time.time() * 1000) - 60_000
    delivered = kafka.produce(topic, values, key="k", timestamp=timestamp)
    assert delivered == [(0, n) for n in range(COUNT)]
    allow(topic)

    result = run_script("protocol_client.mjs", asgi_server.url, topic, str(COUNT - 1))

    assert topic in result["ready"]
    assert result["ready"] == sorted(result["ready"])
    assert result["assignments"] == [{"topic": topic, "partition": 0, "offset": 0}]
    assert result["latest"] == [{"topic": topic, "partition": 0, "offset": COUNT}]

    errors = result["errors"]
    assert {event: error["name"] for event, error in errors.items()} == {
        "consumeFirst": "NotSubscribedError",
        "startFirst": "NotSubscribedError",
        "subscribeAgain": "AlreadySubscribedError",
        "badFilter": "InvalidFilterError",
        "startAgain": "AlreadyStartedError",
        "badBatch": "InvalidArgumentError",
    }
    assert all(error["origin"] == "Kasocki" for error in errors.values())
    assert [errors[e]["event"] for e in ("consumeFirst", "subscribeAgain", "badFilter", "startAgain")] == [
        "consume",
        "subscribe",
        "filter",
        "start",
    ]

    # consume acks: the decoded JSON plus the Kafka metadata, from offset 0.
    assert result["consumed"] == [
        {
            **values[n],
            "_kafka": {"topic": topic, "partition": 0, "offset": n, "timestamp": timestamp, "key": "k"},
        }
        for n in range(3)
    ]
    assert result["filter"] == {"color": "blue"}
    # start/message with the filter: every blue message after the consumed ones, once, in order.
    assert [m["_kafka"]["offset"] for m in result["streamed"]] == list(range(3, COUNT, 2))
    assert [m["n"] for m in result["streamed"]] == list(range(3, COUNT, 2))
    # start({batch: 4}) on another connection: everything from offset 0 in arrays of at most 4.
    batches = result["batches"]
    assert all(1 <= len(batch) <= 4 for batch in batches)
    assert [m["n"] for batch in batches for m in batch] == list(range(COUNT))


def test_events_emitted_without_waiting_for_acks_are_handled_in_order(kafka, make_topic, allow, asgi_server):
    topic = make_topic()
    kafka.produce(topic, [{"n": n, "color": "blue" if n % 2 else "green"} for n in range(COUNT)])
    allow(topic)

    result = run_script("pipelined_client.mjs", asgi_server.url, topic)

    assert result["errs"] == []
    events = [event for event, _, _ in result["acks"]]
    assert sorted(events) == ["consume", "consume", "consume", "subscribe"]
    assert [err for _, err, _ in result["acks"]] == [None] * 4
    subscribed = next(res for event, _, res in result["acks"] if event == "subscribe")
    assert subscribed == [{"topic": topic, "partition": 0, "offset": 0}]
    consumed = sorted(res["_kafka"]["offset"] for event, _, res in result["acks"] if event == "consume")
    assert consumed == [1, 3, 5]
