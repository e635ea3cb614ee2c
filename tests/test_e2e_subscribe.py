"""End to end: connect, ready and subscribe, through the live server against the real broker."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import TopicPartition

from kasocki_app.kafka import ConsumerCounts
from kasocki_app.models import WhitelistedTopic
from tests.e2e import server_service, wait_until

# The protocol holds with the live tail on and off.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("live_tail")]


async def test_ready_lists_allowed_existing_topics_sorted(make_topic, allow, connect):
    first, second = sorted([make_topic(), make_topic()])
    allow(second, first, "does-not-exist", "__consumer_offsets")
    client = await connect()
    assert await client.next("ready") == [first, second]


async def test_ready_is_empty_when_nothing_is_allowed(make_topic, connect):
    make_topic()
    client = await connect()
    assert await client.next("ready") == []


async def test_ready_includes_enabled_admin_entries_only(make_topic, connect):
    enabled, disabled = make_topic(), make_topic()
    await WhitelistedTopic.objects.acreate(topic=enabled)
    await WhitelistedTopic.objects.acreate(topic=disabled, enabled=False)
    client = await connect()
    assert await client.next("ready") == [enabled]


async def test_ready_over_long_polling(make_topic, allow, connect):
    topic = make_topic()
    allow(topic)
    client = await connect(transports=["polling"])
    assert await client.next("ready") == [topic]


async def test_a_consumer_is_opened_for_reading_not_at_connect(kafka, make_topic, allow, connect, live_tail):
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"i": 0}])
    first = await connect()  # at the latest offset: with the tail, its ring is opened on the shared reader
    await first.ok("subscribe", topic)
    before = ConsumerCounts.open
    client = await connect()
    await client.next("ready")
    assert ConsumerCounts.open == before  # connecting opens none
    await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
    # Without the tail, the subscription is a consumer of its own. With it, the client catches up on a
    # consumer of its own from its first read on (an idle subscription holds none), closed once at the ring.
    assert ConsumerCounts.open == before + (0 if live_tail else 1)
    assert (await client.ok("consume", None))["_kafka"]["offset"] == 0


async def test_subscribe_topic_starts_at_latest(kafka, make_topic, allow, connect):
    topic = make_topic(2)
    allow(topic)
    kafka.produce(topic, [{"i": i} for i in range(3)], partition=0)
    client = await connect()
    res = await client.ok("subscribe", topic)
    assert res == [{"topic": topic, "partition": 0, "offset": 3}, {"topic": topic, "partition": 1, "offset": 0}]
    kafka.produce(topic, [{"i": "new"}], partition=0)
    message = await client.ok("consume", None)
    assert message["i"] == "new" and message["_kafka"]["offset"] == 3


async def test_subscribe_object_form_and_many_topics(kafka, make_topic, allow, connect):
    first, second = sorted([make_topic(), make_topic()])
    allow(first, second)
    client = await connect()
    res = await client.ok("subscribe", [{"topic": second}, first])
    assert [(a["topic"], a["partition"]) for a in res] == [(first, 0), (second, 0)]


async def test_subscribe_with_partition_offsets(kafka, make_topic, allow, connect):
    topic = make_topic(2)
    allow(topic)
    kafka.produce(topic, [{"p": 0, "i": i} for i in range(5)], partition=0)
    kafka.produce(topic, [{"p": 1, "i": i} for i in range(5)], partition=1)
    client = await connect()
    res = await client.ok(
        "subscribe", [{"topic": topic, "partition": 1, "offset": 4}, {"topic": topic, "partition": 0, "offset": 2}]
    )
    assert res == [{"topic": topic, "partition": 0, "offset": 2}, {"topic": topic, "partition": 1, "offset": 4}]
    got = sorted([(m["p"], m["i"]) for m in [await client.ok("consume", None) for _ in range(4)]])
    assert got == [(0, 2), (0, 3), (0, 4), (1, 4)]


async def test_subscribe_single_partition_latest(kafka, make_topic, allow, connect):
    topic = make_topic(3)
    allow(topic)
    kafka.produce(topic, [{"i": 1}, {"i": 2}], partition=2)
    client = await connect()
    assert await client.ok("subscribe", {"topic": topic, "partition": 2}) == [
        {"topic": topic, "partition": 2, "offset": 2}
    ]


# Timestamps near now: the broker's retention would delete records stamped in 1970.
T0 = int(time.time() * 1000) - 60_000


async def test_subscribe_from_timestamp(kafka, make_topic, allow, connect):
    topic = make_topic(2)
    allow(topic)
    for partition in (0, 1):
        for ms in (T0 + 1_000, T0 + 2_000, T0 + 3_000):
            kafka.produce(topic, [{"ms": ms - T0, "p": partition}], partition=partition, timestamp=ms)
    client = await connect()
    res = await client.ok("subscribe", {"topic": topic, "timestamp": T0 + 1_500})
    assert res == [{"topic": topic, "partition": 0, "offset": 1}, {"topic": topic, "partition": 1, "offset": 1}]
    messages = [await client.ok("consume", None) for _ in range(4)]
    assert sorted((m["p"], m["ms"]) for m in messages) == [(0, 2_000), (0, 3_000), (1, 2_000), (1, 3_000)]
    assert {m["_kafka"]["timestamp"] - T0 for m in messages} == {2_000, 3_000}


async def test_subscribe_partition_from_timestamp_and_beyond_newest(kafka, make_topic, allow, connect):
    topic = make_topic(2)
    allow(topic)
    kafka.produce(topic, [{"a": 1}], partition=0, timestamp=T0 + 1_000)
    kafka.produce(topic, [{"a": 2}], partition=0, timestamp=T0 + 2_000)
    kafka.produce(topic, [{"a": 3}], partition=1, timestamp=T0 + 1_000)
    client = await connect()
    res = await client.ok(
        "subscribe",
        [
            {"topic": topic, "partition": 0, "timestamp": T0 + 2_000},
            {"topic": topic, "partition": 1, "timestamp": T0 + 9_999},
        ],
    )
    assert res == [{"topic": topic, "partition": 0, "offset": 1}, {"topic": topic, "partition": 1, "offset": 1}]


async def test_subscribe_offset_beyond_log_resets_to_latest(kafka, make_topic, allow, connect):
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"i": i} for i in range(3)])
    client = await connect()
    res = await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 100})
    assert res == [{"topic": topic, "partition": 0, "offset": 3, "reset_from": 100}]
    kafka.produce(topic, [{"i": "after"}])
    assert (await client.ok("consume", None))["i"] == "after"


async def test_subscribe_offset_deleted_by_retention_resets(kafka, make_topic, allow, connect):
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"i": i} for i in range(5)])
    futures = kafka.admin.delete_records([TopicPartition(topic, 0, 3)])
    for future in futures.values():
        future.result(30)
    client = await connect()
    res = await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 1})
    assert res == [{"topic": topic, "partition": 0, "offset": 5, "reset_from": 1}]


async def test_subscribe_reset_policy_earliest(kafka, make_topic, allow, connect, settings):
    settings.KASOCKI_RESET_POLICY = "earliest"
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"i": i} for i in range(3)])
    client = await connect()
    res = await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 50})
    assert res == [{"topic": topic, "partition": 0, "offset": 0, "reset_from": 50}]


@pytest.mark.parametrize("allowed", [False, True], ids=["not-allowed", "does-not-exist"])
async def test_subscribe_unavailable_topic(make_topic, allow, connect, allowed):
    visible = make_topic()
    hidden = make_topic() if not allowed else "no-such-topic-anywhere"
    allow(visible)
    if allowed:
        allow(hidden)
    client = await connect()
    err, res = await client.call("subscribe", [visible, hidden])
    assert res is None
    assert err["name"] == "TopicNotAvailableError"
    assert err["origin"] == "Kasocki" and err["event"] == "subscribe"
    assert err["availableTopics"] == [visible]
    assert await client.next("err") == err
    # The failed subscribe left the connection unsubscribed: a good one still works.
    assert await client.ok("subscribe", visible) == [{"topic": visible, "partition": 0, "offset": 0}]


async def test_not_allowed_and_missing_topics_look_the_same(make_topic, allow, connect):
    visible, hidden = make_topic(), make_topic()
    allow(visible)
    client = await connect()
    err_hidden, _ = await client.call("subscribe", hidden)
    err_missing, _ = await client.call("subscribe", "no-such-topic")
    assert err_hidden["name"] == err_missing["name"] == "TopicNotAvailableError"
    assert err_hidden["availableTopics"] == err_missing["availableTopics"] == [visible]
    assert err_hidden.keys() == err_missing.keys()


async def test_subscribe_missing_partition(make_topic, allow, connect):
    topic = make_topic(2)
    allow(topic)
    client = await connect()
    err, res = await client.call("subscribe", {"topic": topic, "partition": 2, "offset": 0})
    assert res is None and err["name"] == "PartitionNotAvailableError"
    assert (await client.next("err"))["name"] == "PartitionNotAvailableError"


async def test_subscribe_twice(make_topic, allow, connect):
    topic = make_topic()
    allow(topic)
    client = await connect()
    await client.ok("subscribe", topic)
    err, res = await client.call("subscribe", topic)
    assert res is None and err["name"] == "AlreadySubscribedError"
    assert (await client.next("err"))["name"] == "AlreadySubscribedError"


@pytest.mark.parametrize(
    "arg",
    [None, 5, [], {"topic": 5}, {"topic": "t", "partition": "0"}, {"topic": "t", "offset": 1}],
    ids=["null", "number", "empty", "topic-number", "partition-string", "offset-no-partition"],
)
async def test_subscribe_invalid_assignment(connect, arg):
    client = await connect()
    err, res = await client.call("subscribe", arg)
    assert res is None and err["name"] == "InvalidAssignmentError"
    assert err["event"] == "subscribe" and err["origin"] == "Kasocki"
    assert (await client.next("err"))["name"] == "InvalidAssignmentError"


async def test_error_objects_carry_no_internal_detail(connect):
    client = await connect()
    err, _ = await client.call("subscribe", {"topic": "t", "colour": 1})
    assert set(err) == {"name", "message", "origin", "event"}
    assert "Traceback" not in err["message"] and ".py" not in err["message"]


async def test_disconnect_releases_consumer_and_connection(make_topic, allow, connect):
    topic = make_topic()
    allow(topic)
    before = ConsumerCounts.open
    client = await connect()
    await client.ok("subscribe", topic)
    sid = client.sio.get_sid()
    assert server_service().get(sid) is not None
    await client.close()
    await wait_until(lambda: server_service().get(sid) is None, what="connection removed")
    await wait_until(lambda: ConsumerCounts.open == before, what="consumer closed")


async def test_disconnect_mid_consume_releases_everything(make_topic, allow, connect):
    topic = make_topic()
    allow(topic)
    before = ConsumerCounts.open
    client = await connect()
    await client.ok("subscribe", topic)
    sid = client.sio.get_sid()
    connection = server_service().get(sid)
    await client.sio.emit("consume", (None,), callback=lambda *a: None)
    await wait_until(lambda: len(connection.tasks.owned) == 1, what="consume waiting")
    await client.close()
    await wait_until(lambda: connection.closed and not connection.tasks.owned, what="tasks cancelled")
    await wait_until(lambda: ConsumerCounts.open == before, what="consumer closed")


async def test_disconnect_while_streaming_releases_everything(kafka, make_topic, allow, connect):
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"i": i} for i in range(10)])
    before = ConsumerCounts.open
    client = await connect()
    await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
    await client.ok("start", None)
    await client.next("message")
    connection = server_service().get(client.sio.get_sid())
    await client.close()
    await wait_until(lambda: connection.closed and connection.stream.done, what="stream cancelled")
    await wait_until(lambda: ConsumerCounts.open == before, what="consumer closed")


async def test_timestamp_zero_starts_at_the_log_start_after_retention(kafka, make_topic, allow, connect):
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"i": i} for i in range(5)])
    for future in kafka.admin.delete_records([TopicPartition(topic, 0, 3)]).values():
        future.result(30)
    client = await connect()
    # The viewer's "Earliest": unlike offset 0, no reset policy applies, whatever KASOCKI_RESET_POLICY says.
    assert await client.ok("subscribe", {"topic": topic, "partition": 0, "timestamp": 0}) == [
        {"topic": topic, "partition": 0, "offset": 3}
    ]
    assert (await client.ok("consume", None))["i"] == 3
