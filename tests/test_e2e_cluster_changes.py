"""End to end: the stream loop follows the cluster and the whitelist, and reports what changed as ``err``."""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import NewPartitions

from kasocki_app.kafka import GROUP_ID
from kasocki_app.models import WhitelistedTopic

pytestmark = pytest.mark.django_db(transaction=True)


async def next_error(client, name: str, timeout: float = 10) -> dict:
    """The next ``err`` event, which must be ``name``."""
    err = await client.next("err", timeout)
    assert err["name"] == name, err
    return err


async def test_topic_deleted_mid_stream_is_reported(kafka, make_topic, allow, connect):
    topic, other = make_topic(), make_topic()
    allow(topic, other)
    kafka.produce(topic, [{"i": 0}])
    client = await connect()
    await client.ok("subscribe", [{"topic": topic, "partition": 0, "offset": 0}, other])
    await client.ok("start", None)
    assert (await client.next("message"))["i"] == 0
    kafka.delete_topics([topic])
    err = await next_error(client, "TopicNotAvailableError")
    assert err["topic"] == topic and err["event"] == "start"
    # The connection goes on with the topics that remain.
    kafka.produce(other, [{"other": True}])
    assert (await client.next("message"))["other"] is True


async def test_disabling_a_topic_in_the_admin_stops_its_stream(kafka, make_topic, connect):
    topic = make_topic()
    entry = await WhitelistedTopic.objects.acreate(topic=topic)
    client = await connect()
    await client.ok("subscribe", topic)
    await client.ok("start", None)
    kafka.produce(topic, [{"i": 0}])
    assert (await client.next("message"))["i"] == 0
    entry.enabled = False
    await entry.asave()
    err = await next_error(client, "TopicNotAvailableError", timeout=5)
    assert err["topic"] == topic
    kafka.produce(topic, [{"i": 1}])
    with pytest.raises(asyncio.TimeoutError):
        await client.next("message", timeout=1.5)


async def test_new_partitions_of_a_whole_topic_are_read_from_their_start(kafka, make_topic, allow, connect):
    topic = make_topic(1)
    allow(topic)
    client = await connect()
    await client.ok("subscribe", topic)
    await client.ok("start", None)
    kafka.admin.create_partitions([NewPartitions(topic, 2)])[topic].result(30)
    kafka.wait_for_topic(topic, 2)
    kafka.produce(topic, [{"p": 1}], partition=1)
    err = await next_error(client, "PartitionsChangedError")
    assert err["topic"] == topic and err["partitions"] == 2
    assert err["added"] == [{"topic": topic, "partition": 1, "offset": 0}]
    message = await client.next("message")
    assert message["p"] == 1 and message["_kafka"]["partition"] == 1


async def test_offsets_deleted_while_a_client_lags_are_reported(kafka, make_topic, allow, connect):
    topic = make_topic()
    allow(topic)
    # More than librdkafka prefetches (KASOCKI's consumer keeps 2 MB), so it must fetch again later.
    kafka.produce(topic, [{"i": i, "pad": "x" * 50_000} for i in range(200)])
    client = await connect()
    await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
    assert (await client.ok("consume", None))["i"] == 0
    for future in kafka.admin.delete_records([TopicPartition(topic, 0, 190)]).values():
        future.result(30)
    await client.ok("filter", {"never": True})  # skip what was prefetched before the deletion
    consume = asyncio.ensure_future(client.call("consume", None))
    err = await next_error(client, "OffsetOutOfRangeError")
    assert err["topic"] == topic and err["partition"] == 0 and err["offset"] == 200
    assert 0 < err["reset_from"] < 190
    await client.ok("filter", None)
    kafka.produce(topic, [{"i": "after"}])
    error, message = await consume
    assert error is None and message["i"] == "after"


async def test_kafka_state_is_left_untouched(kafka, make_topic, allow, connect):
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"i": i} for i in range(5)])
    client = await connect()
    await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
    for _ in range(5):
        await client.ok("consume", None)
    await client.close()
    groups = kafka.admin.list_consumer_groups(request_timeout=10).result()
    ids = {g.group_id for g in groups.valid}
    if GROUP_ID in ids:
        described = kafka.admin.describe_consumer_groups([GROUP_ID], request_timeout=10)[GROUP_ID].result()
        assert described.members == []
    offsets = kafka.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(GROUP_ID)])
    committed = offsets[GROUP_ID].result().topic_partitions
    assert [tp for tp in committed if tp.offset >= 0] == []
