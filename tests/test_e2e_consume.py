"""End to end: consume, filter, start/stop and batches, through the live server against the real broker."""

from __future__ import annotations

import asyncio

import pytest

from tests import e2e as tests_e2e
from tests.e2e import collect, offsets, server_service

# The protocol holds with the live tail on and off.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("live_tail")]


@pytest.fixture
async def subscribed(kafka, make_topic, allow, connect):
    """A client subscribed from offset 0 to a fresh 1-partition topic; returns (client, topic)."""
    topic = make_topic()
    allow(topic)
    client = await connect()
    await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
    return client, topic


@pytest.mark.parametrize("count", [1, 2, 3])
async def test_consume_messages_across_topics(kafka, make_topic, allow, connect, count):
    first, second = make_topic(), make_topic()
    allow(first, second)
    kafka.produce(first, [{"t": 1, "i": i} for i in range(3)], key="k1")
    kafka.produce(second, [{"t": 2, "i": i} for i in range(3)])
    client = await connect()
    await client.ok("subscribe", [{"topic": t, "partition": 0, "offset": 0} for t in (first, second)])
    messages = [await client.ok("consume", None) for _ in range(count)]
    # Each partition is read in order; partitions interleave as Kafka delivers them.
    for t, topic in ((1, first), (2, second)):
        mine = [m for m in messages if m["t"] == t]
        assert [m["i"] for m in mine] == list(range(len(mine)))
        assert all(m["_kafka"]["topic"] == topic and m["_kafka"]["offset"] == m["i"] for m in mine)
    keyed = [m for m in messages if m["t"] == 1]
    assert all(m["_kafka"]["key"] == "k1" and isinstance(m["_kafka"]["timestamp"], int) for m in keyed)
    rest = [await client.ok("consume", None) for _ in range(6 - count)]
    assert sorted((m["t"], m["i"]) for m in messages + rest) == [(t, i) for t in (1, 2) for i in range(3)]


async def test_consume_waits_for_the_next_message(kafka, subscribed):
    client, topic = subscribed
    pending = asyncio.ensure_future(client.ok("consume", None))
    done, _ = await asyncio.wait([pending], timeout=0.3)
    assert not done  # nothing to consume yet
    kafka.produce(topic, [{"late": True}])
    assert (await pending)["late"] is True


async def test_consume_without_arguments_is_accepted(kafka, subscribed):
    client, topic = subscribed
    kafka.produce(topic, [{"i": 0}])
    err, res = await client.sio.call("consume", timeout=15)
    assert err is None and res["i"] == 0


async def test_bad_values_are_skipped_and_consumption_continues(kafka, subscribed):
    client, topic = subscribed
    kafka.produce(topic, [{"i": 0}, b"not json", b"\xff\xfe", b"[1,2]", b'"str"', None, {"i": 6}])
    assert offsets([await client.ok("consume", None) for _ in range(2)]) == [(topic, 0, 0), (topic, 0, 6)]
    connection = server_service().get(client.sio.get_sid())
    assert dict(connection.skipped) == {"not_json": 1, "not_utf8": 1, "not_object": 2, "empty": 1}


@pytest.mark.parametrize("event", ["consume", "start"])
async def test_consume_and_start_need_a_subscription(connect, event):
    client = await connect()
    err, res = await client.call(event, None)
    assert res is None and err["name"] == "NotSubscribedError" and err["event"] == event
    assert (await client.next("err"))["name"] == "NotSubscribedError"


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param({"kind": "b"}, [1, 4], id="simple"),
        pytest.param({"user.name": "ada"}, [0, 4], id="dotted"),
        pytest.param({"user.name": "/^(gr|li)/"}, [1, 2, 3], id="regex"),
        pytest.param({"kind": ["a", "c"]}, [0, 2, 3], id="array-any"),
        pytest.param({"tags": ["x", "y"]}, [3], id="array-field-contains"),
        pytest.param({"kind": "b", "user.name": "ada"}, [4], id="and"),
    ],
)
async def test_filters_select_messages(kafka, subscribed, filters, expected):
    client, topic = subscribed
    rows = [
        {"n": 0, "kind": "a", "user": {"name": "ada"}, "tags": ["x"]},
        {"n": 1, "kind": "b", "user": {"name": "grace"}, "tags": []},
        {"n": 2, "kind": "c", "user": {"name": "linus"}, "tags": ["y"]},
        {"n": 3, "kind": "a", "user": {"name": "grace"}, "tags": ["y", "x", "z"]},
        {"n": 4, "kind": "b", "user": {"name": "ada"}},
        {"n": 5, "kind": "end"},
    ]
    kafka.produce(topic, rows)
    assert await client.ok("filter", filters) == filters
    got = [(await client.ok("consume", None))["n"] for _ in expected]
    assert got == expected
    # Nothing else passes: the next match is a message produced after the ones above.
    await client.ok("filter", {"kind": "end"})
    assert (await client.ok("consume", None))["n"] == 5


@pytest.mark.parametrize(
    "filters",
    ["/(a)\\1/", "/(?=x)/", "/(/"],
    ids=["backreference", "look-ahead", "invalid"],
)
async def test_bad_regex_is_invalid_filter_error(subscribed, filters):
    client, _ = subscribed
    err, res = await client.call("filter", {"kind": filters})
    assert res is None and err["name"] == "InvalidFilterError" and err["event"] == "filter"
    assert (await client.next("err"))["name"] == "InvalidFilterError"


@pytest.mark.parametrize("filters", [[1], "x", {"a": {"b": 1}}], ids=["list", "string", "object-value"])
async def test_non_object_filter_is_invalid(connect, filters):
    client = await connect()
    err, _ = await client.call("filter", filters)
    assert err["name"] == "InvalidFilterError"


async def test_invalid_filter_keeps_the_previous_one(kafka, subscribed):
    client, topic = subscribed
    await client.ok("filter", {"keep": True})
    err, _ = await client.call("filter", {"keep": "/(/"})
    assert err["name"] == "InvalidFilterError"
    kafka.produce(topic, [{"keep": False}, {"keep": True}])
    assert (await client.ok("consume", None))["_kafka"]["offset"] == 1


async def test_filter_reset_with_null(kafka, subscribed):
    client, topic = subscribed
    await client.ok("filter", {"i": 99})
    assert await client.ok("filter", None) is None
    kafka.produce(topic, [{"i": 0}])
    assert (await client.ok("consume", None))["i"] == 0


async def test_filter_before_subscribe_is_allowed(kafka, make_topic, allow, connect):
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"i": 0}, {"i": 1}])
    client = await connect()
    await client.ok("filter", {"i": 1})
    await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
    assert (await client.ok("consume", None))["i"] == 1


async def test_start_emits_messages(kafka, subscribed):
    client, topic = subscribed
    kafka.produce(topic, [{"i": i} for i in range(20)])
    assert await client.ok("start", None) is None
    assert [m["i"] for m in await collect(client, "message", 20)] == list(range(20))


async def test_start_with_filter(kafka, subscribed):
    client, topic = subscribed
    await client.ok("filter", {"even": True})
    kafka.produce(topic, [{"i": i, "even": i % 2 == 0} for i in range(10)])
    await client.ok("start", None)
    assert [m["i"] for m in await collect(client, "message", 5)] == [0, 2, 4, 6, 8]


async def test_start_twice(subscribed):
    client, _ = subscribed
    await client.ok("start", None)
    err, res = await client.call("start", None)
    assert res is None and err["name"] == "AlreadyStartedError"
    assert (await client.next("err"))["name"] == "AlreadyStartedError"


async def test_stop_when_not_started_is_fine(subscribed):
    client, _ = subscribed
    assert await client.ok("stop", None) is None


async def test_stop_and_resume_lose_and_repeat_nothing(kafka, subscribed, connect):
    client, topic = subscribed
    before, after = 20_000, 100
    kafka.produce(topic, [{"i": i} for i in range(before)])
    await client.ok("start", None)
    received = await collect(client, "message", 10)
    await client.ok("stop", None)
    # The stop is answered after the stream ended, on the same ordered channel: every
    # message emitted before it has arrived by now.
    received += client.pending("message")
    # A witness streaming the new records from the live end: once it has them all, a stream
    # that kept running after the stop would have sent them to the stopped client too.
    witness = await connect()
    await witness.ok("subscribe", topic)
    await witness.ok("start", None)
    kafka.produce(topic, [{"i": i} for i in range(before, before + after)])
    assert [m["i"] for m in await collect(witness, "message", after)] == list(range(before, before + after))
    await client.ok("filter", None)  # a round trip on the stopped client's own ordered channel
    assert client.pending("message") == []
    await client.ok("start", None)
    received += await collect(client, "message", before + after - len(received))
    assert [m["i"] for m in received] == list(range(before + after))


async def test_consume_while_started_takes_its_own_message(kafka, subscribed):
    client, topic = subscribed
    await client.ok("start", None)
    consumes = [asyncio.ensure_future(client.ok("consume", None)) for _ in range(3)]
    produced = 0
    # The stream loop and the consumes race for each record; keep producing until every consume won one.
    while not all(c.done() for c in consumes) and produced < 500:
        kafka.produce(topic, [{"i": produced}])
        produced += 1
        await asyncio.wait(consumes, timeout=0.02)
    consumed = await asyncio.gather(*consumes)
    streamed = await collect(client, "message", produced - len(consumed))
    # Every record arrives exactly once, either as an ack or as a message event.
    assert sorted(m["i"] for m in consumed + streamed) == list(range(produced))
    assert client.pending("message") == []


async def test_batch_mode_emits_lists(kafka, subscribed):
    client, topic = subscribed
    kafka.produce(topic, [{"i": i} for i in range(25)])
    await client.ok("start", {"batch": 10})
    received: list = []
    while len(received) < 25:
        batch = await client.next("messages")
        assert 1 <= len(batch) <= 10
        received += batch
    assert [m["i"] for m in received] == list(range(25))
    assert client.pending("message") == []


async def test_unknown_event_gets_a_named_error(connect):
    client = await connect()
    err, res = await client.call("unsubscribe", None)
    assert res is None and err["name"] == "UnknownEventError" and err["event"] == "unsubscribe"


async def test_client_sent_disconnect_event_does_not_close_the_connection(kafka, subscribed):
    client, topic = subscribed
    err, _ = await client.call("disconnect", None)
    assert err["name"] == "UnknownEventError"
    kafka.produce(topic, [{"still": "here"}])
    assert (await client.ok("consume", None))["still"] == "here"


async def test_message_builder_is_replaceable(kafka, make_topic, allow, connect, settings):
    settings.KASOCKI_MESSAGE_BUILDER = "tests.builders.envelope"
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"private": True}, {"i": 1}])
    client = await connect()
    await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
    assert await client.ok("consume", None) == {"data": {"i": 1}, "position": f"{topic}/0/1"}


async def test_start_then_stop_without_waiting_for_acks_ends_stopped(kafka, make_topic, allow, connect):
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"i": i} for i in range(5)])
    client = await connect()
    acks: list = []
    # Emitted back to back, as a pipelining client does: they must take effect in this order.
    for event, arg in (("subscribe", {"topic": topic, "partition": 0, "offset": 0}), ("start", None), ("stop", None)):
        await client.sio.emit(event, (arg,), callback=lambda *a, e=event: acks.append((e, a)))
    await tests_e2e.wait_until(lambda: len(acks) == 3, what="three acks")
    assert all(a[0] is None for _, a in acks)
    # Stopped: a consume gets the first message (nothing was streamed away).
    assert (await client.ok("consume", None))["i"] == 0
    assert client.pending("message") == []


async def test_requests_in_flight_are_limited(subscribed, settings):
    client, _ = subscribed
    settings.KASOCKI_MAX_INFLIGHT_REQUESTS = 3
    waiting = [asyncio.ensure_future(client.call("consume", None)) for _ in range(3)]
    connection = server_service().get(client.sio.get_sid())
    await tests_e2e.wait_until(lambda: connection.tasks.handlers == 3, what="three consumes waiting")
    err, _ = await client.call("consume", None)
    assert err["name"] == "TooManyRequestsError" and err["limit"] == 3
    assert not any(w.done() for w in waiting)
    for w in waiting:
        w.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)


async def test_waiting_consumes_are_served_before_the_stream(kafka, subscribed):
    client, topic = subscribed
    await client.ok("start", None)
    consumes = [asyncio.ensure_future(client.ok("consume", None)) for _ in range(5)]
    (connection,) = [c for c in server_service().connections.values() if c.assignments]
    await tests_e2e.wait_until(lambda: len(connection.feed.waiters) == 5, what="five consume calls waiting")
    kafka.produce(topic, [{"i": i} for i in range(20)])
    consumed = await asyncio.wait_for(asyncio.gather(*consumes), 15)
    # Served in the order they arrived, before the stream took anything; the stream gets the rest once.
    assert [m["i"] for m in consumed] == [0, 1, 2, 3, 4]
    streamed = await collect(client, "message", 15)
    assert [m["i"] for m in streamed] == list(range(5, 20))
    await client.ok("stop", None)
    assert client.pending("message") == []
