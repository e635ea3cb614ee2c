"""Streams against an in-memory log: start/stop ordering, batches, consume calls first, backpressure.

Each test drives a ``Connection`` through its protocol verbs (as separate tasks where a
client sends events without waiting for answers) and judges what the fake client received.
"""

from __future__ import annotations

import asyncio

import pytest

from kasocki_app.exceptions import AlreadyStartedError
from tests.fakes import FakeLog, decoded, emit, offsets_of, settle


@pytest.fixture
def topic(log: FakeLog) -> str:
    return log.create_topic("t")


def numbers(messages: list[dict]) -> list[int]:
    return [m["i"] for m in messages]


async def test_start_streams_every_message_in_order(log, connection, outbound, topic):
    await connection.subscribe({"topic": topic, "partition": 0, "offset": 0})
    log.produce(topic, [{"i": i} for i in range(20)])
    assert await connection.start(None) is None
    await outbound.until(lambda: len(outbound.messages()) == 20, "20 messages")
    log.produce(topic, [{"i": 20}])  # and what comes later, once it comes
    await outbound.until(lambda: len(outbound.messages()) == 21, "the late message")
    assert numbers(outbound.messages()) == list(range(21))
    assert {event for event, _ in outbound.events} == {"message"}


async def test_batch_mode_sends_lists_of_at_most_the_batch(log, connection, outbound, topic):
    await connection.subscribe({"topic": topic, "partition": 0, "offset": 0})
    log.produce(topic, [{"i": i} for i in range(25)])
    await connection.start({"batch": 10})
    await outbound.until(lambda: len(outbound.messages()) == 25, "25 messages")
    assert {event for event, _ in outbound.events} == {"messages"}
    assert all(1 <= len(batch) <= 10 for _, batch in outbound.events)
    assert numbers(outbound.messages()) == list(range(25))


async def test_filter_changed_mid_stream_applies_to_what_follows(log, connection, outbound, topic):
    await connection.subscribe({"topic": topic, "partition": 0, "offset": 0})
    connection.set_filter({"even": True})
    log.produce(topic, [{"i": i, "even": i % 2 == 0} for i in range(10)])
    await connection.start(None)
    await outbound.until(lambda: len(outbound.messages()) == 5, "the even ones")
    connection.set_filter({"even": False})
    log.produce(topic, [{"i": i, "even": i % 2 == 0} for i in range(10, 20)])
    await outbound.until(lambda: len(outbound.messages()) == 10, "the odd ones")
    assert numbers(outbound.messages()) == [0, 2, 4, 6, 8, 11, 13, 15, 17, 19]


async def test_start_twice_is_refused_stop_when_stopped_is_fine(log, connection, topic):
    await connection.subscribe(topic)
    await connection.start(None)
    with pytest.raises(AlreadyStartedError):
        await connection.start(None)
    await connection.stop()
    assert await connection.stop() is None


async def test_subscribe_start_stop_sent_without_waiting_end_stopped(log, connection, outbound, topic):
    log.produce(topic, [{"i": i} for i in range(5)])
    log.opening = asyncio.Event()  # the reader takes a while to open: start and stop come meanwhile
    acks = [
        emit(connection, "subscribe", {"topic": topic, "partition": 0, "offset": 0}),
        emit(connection, "start", None),
        emit(connection, "stop"),
    ]
    await settle()
    log.opening.set()
    results = await asyncio.gather(*acks)
    assert results[1:] == [None, None]
    # Stopped: nothing was streamed, and a consume gets the first message.
    assert decoded(await connection.consume())["i"] == 0
    assert outbound.messages() == []


async def test_start_stop_start_sent_without_waiting_ends_streaming_with_nothing_lost(log, connection, outbound, topic):
    await connection.subscribe({"topic": topic, "partition": 0, "offset": 0})
    log.produce(topic, [{"i": i} for i in range(50)])
    await asyncio.gather(emit(connection, "start", None), emit(connection, "stop"), emit(connection, "start", None))
    await outbound.until(lambda: len(outbound.messages()) == 50, "all 50")
    log.produce(topic, [{"i": 50}])
    await outbound.until(lambda: len(outbound.messages()) == 51, "the late one")
    assert numbers(outbound.messages()) == list(range(51))


async def test_nothing_is_sent_after_stop_returns(log, connection, outbound, topic):
    await connection.subscribe({"topic": topic, "partition": 0, "offset": 0})
    log.produce(topic, [{"i": i} for i in range(10)])
    await connection.start(None)
    await outbound.until(lambda: len(outbound.messages()) == 10, "10 messages")
    await connection.stop()
    log.produce(topic, [{"i": i} for i in range(10, 20)])
    await settle()
    assert decoded(await connection.consume())["i"] == 10  # nothing was streamed away
    assert len(outbound.messages()) == 10


async def test_a_stop_while_the_stream_looks_at_the_cluster_ends_it(log, connection, outbound, topic):
    await connection.subscribe({"topic": topic, "partition": 0, "offset": 0})
    await connection.start(None)
    await settle()
    log.answering = asyncio.Event()  # the cluster is slow to answer
    asked = log.asked
    log.create_topic("other")  # a change: the idle stream wakes, finds nothing, and looks at the cluster
    await log.questions.until(lambda: log.asked > asked, "the stream asking the cluster")
    stop = emit(connection, "stop")
    await settle()
    log.answering.set()
    await asyncio.wait_for(stop, 1)
    log.produce(topic, [{"i": 0}])
    await settle()
    assert outbound.messages() == []
    assert decoded(await connection.consume())["i"] == 0


async def test_stop_mid_batch_keeps_the_rest_for_what_comes_next(log, connection, outbound, topic):
    await connection.subscribe({"topic": topic, "partition": 0, "offset": 0})
    log.produce(topic, [{"i": i} for i in range(10)])
    outbound.hold = asyncio.Event()
    await connection.start(None)
    await outbound.until(lambda: outbound.held == 1, "the first send under way")
    stop = emit(connection, "stop")
    await settle()
    assert not stop.done()  # answered once the stream has ended
    outbound.hold.set()
    await stop
    assert numbers(outbound.messages()) == [0]  # the one being sent when the stop came
    assert decoded(await connection.consume())["i"] == 1
    await connection.start({"batch": 100})
    await outbound.until(lambda: len(outbound.messages()) == 9, "the rest")
    assert numbers(outbound.messages()) == [0, *range(2, 10)]


async def test_waiting_consumes_are_served_in_order_before_the_stream(log, connection, outbound, topic):
    await connection.subscribe({"topic": topic, "partition": 0, "offset": 0})
    await connection.start(None)
    consumes = [emit(connection, "consume") for _ in range(5)]
    await settle()
    log.produce(topic, [{"i": i} for i in range(20)])
    assert numbers(await asyncio.gather(*consumes)) == [0, 1, 2, 3, 4]
    await outbound.until(lambda: len(outbound.messages()) == 15, "the rest, streamed")
    assert numbers(outbound.messages()) == list(range(5, 20))


async def test_consumes_waiting_before_a_start_are_served_first_and_the_stream_at_once(
    log, connection, outbound, topic
):
    await connection.subscribe({"topic": topic, "partition": 0, "offset": 0})
    consumes = [emit(connection, "consume") for _ in range(2)]
    await settle()
    await connection.start(None)
    await settle()
    log.produce(topic, [{"i": i} for i in range(10)])
    assert numbers(await asyncio.gather(*consumes)) == [0, 1]
    await outbound.until(lambda: len(outbound.messages()) == 8, "the rest, streamed")
    assert numbers(outbound.messages()) == list(range(2, 10))


async def test_a_consume_while_streaming_takes_a_message_of_its_own(log, connection, outbound, topic):
    await connection.subscribe({"topic": topic, "partition": 0, "offset": 0})
    await connection.start(None)
    log.produce(topic, [{"i": i} for i in range(3)])
    await outbound.until(lambda: len(outbound.messages()) == 3, "three streamed")
    consume = emit(connection, "consume")
    await settle()
    log.produce(topic, [{"i": i} for i in range(3, 6)])
    assert (await consume)["i"] == 3
    await outbound.until(lambda: len(outbound.messages()) == 5, "the others streamed")
    assert numbers(outbound.messages()) == [0, 1, 2, 4, 5]


async def test_a_full_client_backlog_pauses_the_stream_until_half_of_it_is_read(
    log, connection, outbound, topic, settings
):
    settings.KASOCKI_MAX_BACKLOG_BYTES = 1000
    await connection.subscribe({"topic": topic, "partition": 0, "offset": 0})
    await connection.start(None)
    log.produce(topic, [{"i": i} for i in range(5)])
    await outbound.until(lambda: len(outbound.messages()) == 5, "five before the backlog fills")
    for i, backlog in ((5, 1001), (6, 600)):  # over the cap: paused; still over half of it: still paused
        outbound.backlog_bytes = backlog
        log.produce(topic, [{"i": i}])
        probes = outbound.probes
        await outbound.until(lambda n=probes: outbound.probes >= n + 3, "the stream looking at the client")
        assert len(outbound.messages()) == 5
    outbound.backlog_bytes = 499
    await outbound.until(lambda: len(outbound.messages()) == 7, "the stream going on")
    assert numbers(outbound.messages()) == list(range(7)) and outbound.errors() == []
    assert not outbound.aborted


async def test_a_client_stalled_too_long_is_cut(log, connection, outbound, topic, settings):
    settings.KASOCKI_MAX_BACKLOG_BYTES = 1000
    settings.KASOCKI_SLOW_CLIENT_TIMEOUT = 0.05
    await connection.subscribe({"topic": topic, "partition": 0, "offset": 0})
    outbound.backlog_bytes = 5000
    await connection.start(None)
    log.produce(topic, [{"i": 0}])
    await outbound.until(lambda: outbound.aborted, "the client cut")
    (error,) = outbound.errors()
    assert error["name"] == "SlowClientError" and error["limit"] == 1000 and error["event"] == "start"
    assert outbound.messages() == [] and not outbound.disconnected


async def test_reader_and_record_errors_are_reported_once_and_reading_goes_on(log, connection, outbound, topic):
    await connection.subscribe({"topic": topic, "partition": 0, "offset": 0})
    await connection.start(None)
    for i in range(2):  # the same errors twice: told once
        log.fail(topic, 0, code=6)  # NOT_LEADER_FOR_PARTITION, as an error record
        log.consumer_error(code=-195)  # _TRANSPORT, through the reader's error callback
        log.produce(topic, [{"i": i}])
        await outbound.until(lambda n=i: len(outbound.messages()) == n + 1, "a message")
    errors = [(e["name"], e["code"], e.get("topic"), e.get("partition")) for e in outbound.errors()]
    assert sorted(errors, key=str) == sorted(
        [("KafkaError", "NOT_LEADER_FOR_PARTITION", topic, 0), ("KafkaError", "_TRANSPORT", None, None)], key=str
    )
    assert offsets_of(outbound.messages()) == [(topic, 0, 0), (topic, 0, 1)]
