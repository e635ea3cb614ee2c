"""Following the cluster against an in-memory log: offsets lost to retention, topics gone, partitions added.

The connection checks the cluster at every step here (KASOCKI_ASSIGNMENT_CHECK_SECONDS=0),
so each change is seen at the stream's or the consume's next step.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.fakes import FakeLog, FakeOutbound, decoded, emit, offsets_of, settle


def topics_of(events: list[tuple[str, Any]]) -> set[str]:
    """The topics of the messages among ``events`` (consume answers are logged as ``consume`` events)."""
    found: set[str] = set()
    for event, data in events:
        if event in ("message", "consume"):
            found.add(data["_kafka"]["topic"])
        elif event == "messages":
            found.update(m["_kafka"]["topic"] for m in data)
    return found


@pytest.mark.parametrize(("policy", "goes_on_at"), [("latest", 10), ("earliest", 8)])
async def test_an_offset_lost_while_lagging_is_reported_and_reading_goes_on(
    log, connection, outbound, settings, policy, goes_on_at
):
    settings.KASOCKI_CONSUME_BATCH_SIZE = 1  # read one record at a time: the next one is still in the log
    settings.KASOCKI_RESET_POLICY = policy
    log.create_topic("t")
    log.produce("t", [{"i": i} for i in range(10)])
    await connection.subscribe({"topic": "t", "partition": 0, "offset": 0})
    assert decoded(await connection.consume())["i"] == 0
    log.delete_records("t", 0, before=8)  # retention takes offsets 1..7 before the client reads them
    consume = emit(connection, "consume")
    await outbound.until(lambda: outbound.errors() != [], "the error")
    log.produce("t", [{"i": 10}])
    assert offsets_of([await consume]) == [("t", 0, goes_on_at)]
    (error,) = outbound.errors()
    assert {k: error[k] for k in ("name", "topic", "partition", "offset", "reset_from", "event")} == {
        "name": "OffsetOutOfRangeError",
        "topic": "t",
        "partition": 0,
        "offset": goes_on_at,
        "reset_from": 1,
        "event": "consume",
    }


async def consume_all(connection: Any, outbound: FakeOutbound, count: int) -> None:
    """``count`` consume calls one after the other, their answers logged among the outbound events."""
    for _ in range(count):
        outbound.events.append(("consume", await connection.consume()))


@pytest.mark.parametrize("how", ["deleted", "disallowed"])
@pytest.mark.parametrize("mode", ["message", "messages", "consume"])
async def test_nothing_of_a_topic_that_left_follows_its_error(log, connection, outbound, settings, how, mode):
    settings.KASOCKI_CONSUME_BATCH_SIZE = 10  # many small steps: the stream is busy when the topic leaves
    for topic in ("gone", "stays"):
        log.create_topic(topic)
        log.produce(topic, [{"i": i} for i in range(300)])
    await connection.subscribe([{"topic": t, "partition": 0, "offset": 0} for t in ("gone", "stays")])
    if mode == "consume":
        await consume_all(connection, outbound, 30)
    else:
        await connection.start({"batch": 5} if mode == "messages" else None)
        await outbound.until(lambda: len(outbound.messages()) >= 30, "30 messages")
    assert topics_of(outbound.events) == {"gone", "stays"}
    log.delete_topic("gone") if how == "deleted" else log.disallow("gone")
    if mode == "consume":
        await consume_all(connection, outbound, 50)
    else:
        await outbound.until(lambda: outbound.errors() != [], "the error")
        log.produce("stays", [{"last": True}])
        await outbound.until(lambda: any(m.get("last") for m in outbound.messages()), "the last message")
        await connection.stop()
    names = [(e, d.get("name"), d.get("topic")) for e, d in outbound.events if e == "err"]
    assert names == [("err", "TopicNotAvailableError", "gone")]
    index = [e for e, _ in outbound.events].index("err")
    assert topics_of(outbound.events[index + 1 :]) == {"stays"}
    assert connection.assignments is not None and [p.topic for p in connection.assignments] == ["stays"]


async def test_a_topic_that_leaves_while_the_stream_sends_is_not_sent_after_its_error(log, connection, outbound):
    for topic in ("gone", "stays"):
        log.create_topic(topic)
        log.produce(topic, [{"i": i} for i in range(5)])
    await connection.subscribe([{"topic": t, "partition": 0, "offset": 0} for t in ("gone", "stays")])
    outbound.hold = asyncio.Event()
    await connection.start(None)
    await outbound.until(lambda: outbound.held == 1, "the stream sending its first message")
    log.disallow("gone")
    consume = emit(connection, "consume")  # it looks at the cluster and reports the topic gone
    await outbound.until(lambda: outbound.errors() != [], "the error")
    outbound.hold.set()
    await outbound.until(lambda: len(outbound.messages()) == 6, "the rest of the batch")
    index = [e for e, _ in outbound.events].index("err")
    assert topics_of(outbound.events[index + 1 :]) == {"stays"}
    log.produce("stays", [{"i": 5}])
    assert (await consume)["i"] == 5


async def test_partitions_added_to_a_whole_topic_are_read_from_their_start(log, connection, outbound):
    log.create_topic("t")
    await connection.subscribe("t")
    await connection.start(None)
    await settle()
    log.add_partitions("t", 2)
    log.produce("t", [{"p": 1}], partition=1)
    await outbound.until(lambda: outbound.messages() != [], "the new partition's message")
    (event, error), (message_event, message) = outbound.events
    assert event == "err" and message_event == "message"
    assert {k: error[k] for k in ("name", "topic", "partitions", "added")} == {
        "name": "PartitionsChangedError",
        "topic": "t",
        "partitions": 2,
        "added": [{"topic": "t", "partition": 1, "offset": 0}],
    }
    assert offsets_of([message]) == [("t", 1, 0)]
    assert [p.to_dict() for p in connection.assignments] == [
        {"topic": "t", "partition": 0, "offset": 0},
        {"topic": "t", "partition": 1, "offset": 0},
    ]


async def test_a_subscription_to_one_partition_does_not_grow(log, connection, outbound):
    log.create_topic("t")
    await connection.subscribe({"topic": "t", "partition": 0})
    await connection.start(None)
    await settle()
    log.add_partitions("t", 2)
    log.produce("t", [{"p": 1}], partition=1)
    await settle()
    log.produce("t", [{"p": 0}], partition=0)
    await outbound.until(lambda: outbound.messages() != [], "partition 0's message")
    assert outbound.events == [("message", outbound.messages()[0])]
    assert offsets_of(outbound.messages()) == [("t", 0, 0)]


async def test_a_topic_gone_before_subscribe_ends_is_refused_later_ones_go_on(log: FakeLog, connection, outbound):
    log.create_topic("t")
    log.create_topic("u")
    await connection.subscribe(["t", "u"])
    log.delete_topic("t")
    log.produce("u", [{"i": 0}])
    assert offsets_of([await connection.consume()]) == [("u", 0, 0)]
    assert [e["name"] for e in outbound.errors()] == ["TopicNotAvailableError"]
