"""The connection core against an in-memory log: subscribe, filter, consume and close, in milliseconds.

No broker and no database: ``tests/fakes.py`` stands in for both. Each test drives a
``Connection`` through its protocol verbs and judges it by what the fake client received.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kasocki_app.connection import Connection
from kasocki_app.exceptions import (
    AlreadySubscribedError,
    InvalidAssignmentError,
    InvalidFilterError,
    NotSubscribedError,
    PartitionNotAvailableError,
    TooManyRequestsError,
    TopicNotAvailableError,
)
from kasocki_app.tail import PUMP_NAME
from tests.fakes import FakeLog, FakeOutbound, decoded, emit, offsets_of, settle


@pytest.fixture
def cluster(log: FakeLog) -> FakeLog:
    """Topic t: partition 0 holds offsets 1..4 (0 left by retention), timestamps 100..104; partition 1 holds 0..2."""
    log.create_topic("t", 2)
    log.create_topic("u")
    for i in range(5):
        log.produce("t", [{"p": 0, "i": i}], partition=0, timestamp=100 + i)
    log.produce("t", [{"p": 1, "i": i} for i in range(3)], partition=1, timestamp=50)
    log.delete_records("t", 0, before=1)
    return log


@pytest.mark.parametrize(
    ("request_", "policy", "expected"),
    [
        pytest.param("t", "latest", [("t", 0, 5, None), ("t", 1, 3, None)], id="topic-at-latest"),
        pytest.param({"topic": "t", "partition": 1}, "latest", [("t", 1, 3, None)], id="partition-at-latest"),
        pytest.param({"topic": "t", "partition": 0, "offset": 2}, "latest", [("t", 0, 2, None)], id="offset"),
        pytest.param({"topic": "t", "partition": 0, "offset": 5}, "latest", [("t", 0, 5, None)], id="offset-at-end"),
        pytest.param({"topic": "t", "partition": 0, "offset": 0}, "latest", [("t", 0, 5, 0)], id="retained-latest"),
        pytest.param({"topic": "t", "partition": 0, "offset": 0}, "earliest", [("t", 0, 1, 0)], id="retained-earliest"),
        pytest.param({"topic": "t", "partition": 0, "offset": 9}, "earliest", [("t", 0, 1, 9)], id="beyond-end"),
        pytest.param({"topic": "t", "timestamp": 103}, "latest", [("t", 0, 3, None), ("t", 1, 3, None)], id="time"),
        pytest.param({"topic": "t", "timestamp": 0}, "latest", [("t", 0, 1, None), ("t", 1, 0, None)], id="time-0"),
        pytest.param(
            [{"topic": "u"}, {"topic": "t", "partition": 0, "offset": 4}],
            "latest",
            [("t", 0, 4, None), ("u", 0, 0, None)],
            id="several",
        ),
    ],
)
async def test_subscribe_starts_each_partition_at_its_effective_offset(
    cluster, connection, settings, request_, policy, expected
):
    settings.KASOCKI_RESET_POLICY = policy
    acked = await connection.subscribe(request_)
    want = [
        {"topic": t, "partition": p, "offset": o} | ({"reset_from": r} if r is not None else {})
        for t, p, o, r in expected
    ]
    assert acked == want
    # Then every record from there on, each once: a new one on each partition, after those already there.
    for topic, partition, _, _ in expected:
        cluster.produce(topic, [{"late": True}], partition=partition)
    ends = {(t, p): cluster.topics[t][p].end for t, p, _, _ in expected}
    count = sum(ends[(t, p)] - offset for t, p, offset, _ in expected)
    got = offsets_of([await connection.consume() for _ in range(count)])
    assert sorted(got) == sorted((t, p, o) for t, p, offset, _ in expected for o in range(offset, ends[(t, p)]))


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        pytest.param("nope", TopicNotAvailableError, id="unknown-topic"),
        pytest.param({"topic": "t", "partition": 2}, PartitionNotAvailableError, id="unknown-partition"),
        pytest.param([{"topic": "t"}, {"topic": "t"}], InvalidAssignmentError, id="twice"),
        pytest.param({"topic": "t", "offset": 1}, InvalidAssignmentError, id="offset-without-partition"),
    ],
)
async def test_subscribe_refuses_and_opens_no_reader(cluster, connection, outbound, request_, error):
    with pytest.raises(error):
        await connection.subscribe(request_)
    assert cluster.readers == [] and connection.assignments is None and outbound.events == []


async def test_subscribe_covering_too_many_partitions_is_refused(cluster, connection, settings):
    settings.KASOCKI_MAX_PARTITIONS = 1
    with pytest.raises(InvalidAssignmentError) as raised:
        await connection.subscribe("t")
    assert raised.value.details["limit"] == 1 and cluster.readers == []


async def test_subscribe_twice_is_refused_and_keeps_the_first(cluster, connection):
    await connection.subscribe({"topic": "u", "partition": 0, "offset": 0})
    with pytest.raises(AlreadySubscribedError):
        await connection.subscribe("t")
    assert len(cluster.readers) == 1
    cluster.produce("u", [{"i": 0}])
    assert offsets_of([await connection.consume()]) == [("u", 0, 0)]


@pytest.mark.parametrize("verb", ["consume", "start"])
async def test_consume_and_start_need_a_subscription(connection, outbound, verb):
    with pytest.raises(NotSubscribedError):
        await emit(connection, verb, *([None] if verb == "start" else []))
    assert outbound.events == []


async def test_consume_sent_right_after_subscribe_waits_for_it(cluster, connection):
    cluster.produce("u", [{"i": 0}])
    cluster.opening = asyncio.Event()  # the reader takes a while to open
    subscribe = emit(connection, "subscribe", {"topic": "u", "partition": 0, "offset": 0})
    consume = emit(connection, "consume")  # without waiting for the subscribe's answer
    await settle()
    cluster.opening.set()
    assert (await subscribe)[0]["offset"] == 0
    assert (await consume)["i"] == 0


async def test_a_new_filter_judges_what_was_read_but_not_taken(log, connection):
    log.create_topic("t")
    log.produce("t", [{"i": i} for i in range(10)])
    await connection.subscribe({"topic": "t", "partition": 0, "offset": 0})
    assert decoded(await connection.consume())["i"] == 0  # the rest was read along with it
    assert connection.set_filter({"i": 5}) == {"i": 5}
    assert decoded(await connection.consume())["i"] == 5
    assert connection.set_filter(None) is None
    assert decoded(await connection.consume())["i"] == 6
    assert connection.positions == {("t", 0): 7}


async def test_an_invalid_filter_keeps_the_previous_one(log, connection):
    log.create_topic("t")
    connection.set_filter({"keep": True})
    with pytest.raises(InvalidFilterError):
        connection.set_filter({"keep": "/(/"})
    assert connection.filters == {"keep": True}
    log.produce("t", [{"keep": False}, {"keep": True}])
    await connection.subscribe({"topic": "t", "partition": 0, "offset": 0})
    assert decoded(await connection.consume())["_kafka"]["offset"] == 1


async def test_undecodable_values_are_skipped_and_counted(log, connection):
    log.create_topic("t")
    log.produce("t", [{"i": 0}, b"not json", b"\xff\xfe", b"[1,2]", b'"str"', None, {"i": 6}])
    await connection.subscribe({"topic": "t", "partition": 0, "offset": 0})
    assert offsets_of([await connection.consume() for _ in range(2)]) == [("t", 0, 0), ("t", 0, 6)]
    assert dict(connection.skipped) == {"not_json": 1, "not_utf8": 1, "not_object": 2, "empty": 1}


async def test_a_custom_message_builder_builds_what_clients_receive(log, outbound, settings):
    settings.KASOCKI_MESSAGE_BUILDER = "tests.builders.envelope"
    log.create_topic("t")
    log.produce("t", [{"private": True}, {"i": 1}])
    connection = Connection("sid-2", outbound, log.open_reader, log)
    try:
        await connection.subscribe({"topic": "t", "partition": 0, "offset": 0})
        assert await connection.consume() == {"data": {"i": 1}, "position": "t/0/1"}
    finally:
        await connection.close()


async def test_requests_in_flight_are_limited(log, connection, settings):
    settings.KASOCKI_MAX_INFLIGHT_REQUESTS = 2
    log.create_topic("t")
    await connection.subscribe("t")
    waiting = [emit(connection, "consume") for _ in range(2)]
    await settle()
    with pytest.raises(TooManyRequestsError):
        await emit(connection, "consume")
    assert not any(w.done() for w in waiting)


async def test_a_consume_cancelled_after_taking_its_message_gives_it_back(log, connection):
    log.create_topic("t")
    log.produce("t", [{"i": i} for i in range(2)])
    await connection.subscribe({"topic": "t", "partition": 0, "offset": 0})
    log.answering = asyncio.Event()  # the cluster check after the take does not answer yet
    asked = log.asked
    consume = emit(connection, "consume")
    await log.questions.until(lambda: log.asked > asked, "the consume following the cluster")
    consume.cancel()  # the client left
    with pytest.raises(asyncio.CancelledError):
        await consume
    log.answering.set()
    assert offsets_of([await connection.consume(), await connection.consume()]) == [("t", 0, 0), ("t", 0, 1)]


async def test_a_consume_is_answered_at_once_only_with_a_message_read_and_nothing_to_follow(
    log, connection, outbound, settings
):
    settings.KASOCKI_ASSIGNMENT_CHECK_SECONDS = 60  # no look at the cluster due for a while
    log.create_topic("t")
    log.produce("t", [{"i": i} for i in range(2)])
    await connection.subscribe({"topic": "t", "partition": 0, "offset": 0})
    assert connection.consume_at_once() is None  # nothing read yet: consume reads
    assert offsets_of([await connection.consume()]) == [("t", 0, 0)]
    assert offsets_of([connection.consume_at_once()]) == [("t", 0, 1)]
    assert connection.consume_at_once() is None  # nothing left
    waiting = emit(connection, "consume")
    await settle()
    log.produce("t", [{"i": i} for i in range(2, 4)])
    assert offsets_of([await waiting]) == [("t", 0, 2)]
    log.consumer_error(code=-195)  # _TRANSPORT: reported before the next message, by consume
    await settle()  # (on the live tail, the shared reader hands its errors to its readers)
    assert connection.consume_at_once() is None
    assert offsets_of([await connection.consume()]) == [("t", 0, 3)]
    assert [(e["name"], e["code"], e["event"]) for e in outbound.errors()] == [("KafkaError", "_TRANSPORT", "consume")]
    assert connection.delivered == 4


async def subscribing(log: FakeLog, connection: Connection, outbound: FakeOutbound) -> None:
    log.opening = asyncio.Event()  # the reader is never ready
    emit(connection, "subscribe", "t")


async def start_waiting_for_subscribe(log: FakeLog, connection: Connection, outbound: FakeOutbound) -> None:
    log.opening = asyncio.Event()  # the reader is never ready
    emit(connection, "subscribe", "t")
    emit(connection, "start", None)


async def consume_waiting(log: FakeLog, connection: Connection, outbound: FakeOutbound) -> None:
    await connection.subscribe("t")
    emit(connection, "consume")


async def streaming(log: FakeLog, connection: Connection, outbound: FakeOutbound, batch: int | None = None) -> None:
    await connection.subscribe({"topic": "t", "partition": 0, "offset": 0})
    await connection.start({"batch": batch} if batch else None)


async def streaming_blocked_in_send(log: FakeLog, connection: Connection, outbound: FakeOutbound) -> None:
    outbound.hold = asyncio.Event()
    await streaming(log, connection, outbound)
    log.produce("t", [{"i": i} for i in range(5)])
    await outbound.until(lambda: outbound.held == 1, "the stream blocked in a send")


async def stopping(log: FakeLog, connection: Connection, outbound: FakeOutbound) -> None:
    await streaming_blocked_in_send(log, connection, outbound)
    emit(connection, "stop")


async def paused(log: FakeLog, connection: Connection, outbound: FakeOutbound) -> None:
    outbound.backlog_bytes = 10**9
    await streaming(log, connection, outbound)
    log.produce("t", [{"i": 0}])
    probes = outbound.probes
    await outbound.until(lambda: outbound.probes > probes + 2, "the stream looking at the client")


MOMENTS: dict[str, Any] = {
    "connected": None,
    "subscribing": subscribing,
    "start-waiting-for-subscribe": start_waiting_for_subscribe,
    "subscribed": lambda log, c, o: c.subscribe("t"),
    "consume-waiting": consume_waiting,
    "streaming-idle": streaming,
    "streaming-batches": lambda log, c, o: streaming(log, c, o, batch=10),
    "streaming-blocked-in-send": streaming_blocked_in_send,
    "stopping": stopping,
    "paused-for-a-slow-client": paused,
}


@pytest.mark.parametrize("moment", list(MOMENTS))
async def test_close_at_any_moment_releases_everything(log, connection, outbound, open_reader, moment):
    log.create_topic("t")
    prepare = MOMENTS[moment]
    if prepare is not None:
        result = prepare(log, connection, outbound)
        if asyncio.iscoroutine(result):
            await result
    await settle()
    await connection.close()
    current = asyncio.current_task()
    # Every task of the connection cancelled and awaited (the live tail's pump is the process's).
    assert [t for t in asyncio.all_tasks() if t is not current and t.get_name() != PUMP_NAME] == []
    tail = getattr(open_reader, "tail", None)  # the live tail's shared reader is the process's, not the connection's
    own = [reader for reader in log.readers if tail is None or reader is not tail.reader]
    assert all(reader.closes == 1 for reader in own)
    if tail is not None:
        assert all(not ring.members and not ring.behind for ring in tail.rings.values())
    sent = len(outbound.events)
    if outbound.hold is not None:
        outbound.hold.set()
    if log.opening is not None:
        log.opening.set()
    log.produce("t", [{"after": True}])
    await settle()
    assert len(outbound.events) == sent and [reader for reader in log.open_readers if reader in own] == []
    late = connection.spawn(outbound.emit("late", None))  # e.g. a disconnect asked for meanwhile
    await settle()
    assert late.cancelled() and len(outbound.events) == sent
    await connection.close()  # twice is fine
    assert all(reader.closes == 1 for reader in own)
