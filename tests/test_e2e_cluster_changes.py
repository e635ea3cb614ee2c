"""End to end: the stream loop follows the cluster and the whitelist, and reports what changed as ``err``."""

from __future__ import annotations

import asyncio

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import NewPartitions

from kasocki_app.kafka import GROUP_ID
from kasocki_app.models import WhitelistedTopic
from tests import e2e as tests_e2e

# The protocol holds with the live tail on and off.
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("live_tail")]


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


class EventLog:
    """Every message, batch, err and consume answer of one client, in the order they arrived."""

    def __init__(self, client) -> None:
        self.events: list[tuple[str, object]] = []
        self.client = client
        for event in ("message", "messages", "err"):
            client.sio.on(event, self._recorder(event))

    def _recorder(self, event: str):
        async def record(data) -> None:
            self.events.append((event, data))

        return record

    async def consume(self) -> asyncio.Future[None]:
        """Emit a consume; the future resolves when its answer has been logged."""
        answered = asyncio.get_running_loop().create_future()

        def on_answer(err, message=None) -> None:
            self.events.append(("consume", message if err is None else err))
            answered.set_result(None)

        await self.client.sio.emit("consume", None, callback=on_answer)
        return answered

    def after_error_of(self, topic: str) -> list[tuple[str, object]]:
        """The events that followed the TopicNotAvailableError for ``topic``."""
        names = [(e, d.get("name"), d.get("topic")) if isinstance(d, dict) else (e,) for e, d in self.events]
        index = names.index(("err", "TopicNotAvailableError", topic))
        return self.events[index + 1 :]

    @staticmethod
    def topics_in(events: list[tuple[str, object]]) -> set[str]:
        found: set[str] = set()
        for event, data in events:
            if event in ("message", "consume") and isinstance(data, dict) and "_kafka" in data:
                found.add(data["_kafka"]["topic"])
            elif event == "messages":
                found.update(m["_kafka"]["topic"] for m in data)
        return found


@pytest.mark.parametrize("mode", ["message", "messages", "consume"])
async def test_nothing_of_a_removed_topic_follows_its_error(kafka, make_topic, connect, settings, mode):
    settings.KASOCKI_ASSIGNMENT_CHECK_SECONDS = 0.05  # the error comes while the stream is busy
    topic = make_topic()
    entry = await WhitelistedTopic.objects.acreate(topic=topic)
    # A backlog far longer than one check period: the stream is busy taking batches when the topic goes.
    for start in range(0, 100_000, 50_000):  # in parts: librdkafka's producer queue holds 100k records
        kafka.produce(topic, [{"i": i} for i in range(start, start + 50_000)])
    client = await connect()
    log = EventLog(client)
    await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
    answered = None
    if mode == "consume":
        await (await log.consume())
    else:
        await client.ok("start", {"batch": 100} if mode == "messages" else None)
        await tests_e2e.wait_until(lambda: len(log.events) > 10, what="messages streaming")
    await entry.adelete()
    deadline = asyncio.get_running_loop().time() + 10
    while not any(e == "err" for e, _ in log.events):
        assert asyncio.get_running_loop().time() < deadline, "no TopicNotAvailableError within 10 s"
        if mode == "consume" and (answered is None or answered.done()):
            answered = await log.consume()  # one at a time: after the error the last one waits forever
        else:
            await asyncio.sleep(0.01)
    if mode != "consume":
        await client.ok("stop", None)  # acked after everything the stream sent before it
    assert EventLog.topics_in(log.events[:5]) == {topic}
    assert EventLog.topics_in(log.after_error_of(topic)) == set()
