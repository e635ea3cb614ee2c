"""The live tail against the real broker: many clients at every kind of position, exact per client.

200 clients mix latest, explicit offsets, timestamps and resumes, connect and disconnect
while records are produced, and each checks what it received: per partition, every offset
from where its subscribe was acknowledged to the end, once, in order.
"""

from __future__ import annotations

import asyncio
import random
import urllib.request
from typing import Any

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions
from prometheus_client.parser import text_string_to_metric_families

from bench.client import LeanClient
from kasocki_app.kafka import GROUP_ID, ConsumerCounts

pytestmark = pytest.mark.django_db(transaction=True)

PARTITIONS = 4
CLIENTS = 200
BEFORE = 100  # records per partition before the first client
DURING = 60  # records per partition produced while clients come and go


def metrics(url: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples}


class Reader:
    """One client: what it asked for, what the server acknowledged, what it received."""

    def __init__(self, kind: str, request: Any) -> None:
        self.kind = kind
        self.request = request
        self.starts: dict[int, int] = {}  # acknowledged start offset per partition (of the first session)
        self.received: dict[int, list[int]] = {p: [] for p in range(PARTITIONS)}
        self.errors: list[Any] = []
        self.client: LeanClient | None = None
        self.done = asyncio.Event()
        self.ends: dict[int, int] | None = None  # set once producing is over

    def on_message(self, message: dict[str, Any]) -> None:
        self.received[message["_kafka"]["partition"]].append(message["_kafka"]["offset"])
        self.check_done()

    def on_batch(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            self.received[message["_kafka"]["partition"]].append(message["_kafka"]["offset"])
        self.check_done()

    def check_done(self) -> None:
        ends = self.ends
        if ends is not None and all(
            (self.received[p][-1] + 1 if self.received[p] else self.starts[p]) >= ends[p] for p in ends
        ):
            self.done.set()

    def next_offsets(self) -> list[dict[str, Any]]:
        return [
            {"topic": self.request, "partition": p, "offset": (r[-1] + 1) if r else self.starts[p]}
            for p, r in self.received.items()
        ]

    async def open(self, url: str, subscription: Any, batch: int | None) -> list[dict[str, Any]]:
        client = self.client = await LeanClient.connect(url)
        client.on("message", self.on_message)
        client.on("messages", self.on_batch)
        client.on("err", self.errors.append)
        await client.next_event("ready")
        acked = await client.ok("subscribe", subscription)
        await client.ok("start", {"batch": batch} if batch else None)
        return list(acked)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None


@pytest.mark.parametrize("ring", [10_000, 20], ids=["default-ring", "small-ring"])
async def test_many_clients_at_every_kind_of_position_each_receive_exactly_their_offsets(
    kafka, make_topic, allow, asgi_server, settings, ring
):
    settings.KASOCKI_TAIL_RECORDS = ring  # a small ring: clients fall behind it, are demoted and rejoin
    topic = make_topic(partitions=PARTITIONS)
    allow(topic)
    for p in range(PARTITIONS):
        kafka.produce(topic, [{"p": p, "i": i} for i in range(BEFORE)], partition=p)
    # A timestamp inside the log: the one of offset 50 of partition 0, as a client learns it.
    probe = await LeanClient.connect(asgi_server.url)
    await probe.ok("subscribe", {"topic": topic, "partition": 0, "offset": 50})
    timestamp = (await probe.ok("consume", None))["_kafka"]["timestamp"]
    await probe.close()

    rng = random.Random(11)
    kinds = ["latest", "offsets", "timestamp", "resume", "leaves"]
    readers = [Reader(kinds[i % len(kinds)], topic) for i in range(CLIENTS)]

    def subscription(reader: Reader) -> Any:
        if reader.kind == "latest":
            return topic
        if reader.kind == "timestamp":
            return [{"topic": topic, "partition": p, "timestamp": timestamp} for p in range(PARTITIONS)]
        return [{"topic": topic, "partition": p, "offset": rng.randrange(0, BEFORE + 1)} for p in range(PARTITIONS)]

    producing = asyncio.Event()

    async def produce() -> None:
        for i in range(DURING):
            for p in range(PARTITIONS):
                kafka.produce(topic, [{"p": p, "i": BEFORE + i}], partition=p)
            await asyncio.sleep(0.02)  # a steady trickle while clients come and go
        producing.set()

    async def run(reader: Reader, index: int) -> None:
        await asyncio.sleep(index * 0.01)  # connects spread over the production
        acked = await reader.open(asgi_server.url, subscription(reader), batch=7 if index % 3 == 0 else None)
        reader.starts = {a["partition"]: a["offset"] for a in acked}
        if reader.kind == "timestamp":
            assert reader.starts[0] <= 50
        if reader.kind in ("resume", "leaves"):
            await asyncio.sleep(rng.uniform(0.05, 0.5))
            await reader.close()
            if reader.kind == "resume":  # back at exactly the next offsets it holds
                await reader.open(asgi_server.url, reader.next_offsets(), batch=None)

    producer = asyncio.ensure_future(produce())
    runs = [asyncio.ensure_future(run(reader, i)) for i, reader in enumerate(readers)]
    try:
        await asyncio.gather(*runs)
        await producer
        ends = dict.fromkeys(range(PARTITIONS), BEFORE + DURING)
        staying = [r for r in readers if r.kind != "leaves"]
        for reader in staying:
            reader.ends = ends
            reader.check_done()
        await asyncio.wait_for(asyncio.gather(*(r.done.wait() for r in staying)), 60)
        figures = metrics(asgi_server.url)
    finally:  # whatever failed: no client left open (or still opening) for the tests after this one
        for task in (*runs, producer):
            task.cancel()
        await asyncio.gather(*runs, producer, return_exceptions=True)
        for reader in readers:
            await reader.close()

    for reader in readers:
        assert reader.errors == [], reader.kind
        for p, offsets in reader.received.items():
            start = reader.starts[p]
            if reader.kind == "leaves":  # a prefix of what it asked for, nothing skipped
                assert offsets == list(range(start, start + len(offsets))), (reader.kind, p)
            else:
                assert offsets == list(range(start, ends[p])), (reader.kind, p, start, offsets[:5])
    # The clients read through the shared tail: catch-up readers handed over, none is left.
    assert figures["kasocki_handovers_total"] > 0
    assert figures["kasocki_catchup_readers"] == 0
    assert figures["kasocki_tails"] >= PARTITIONS


async def test_the_shared_reader_leaves_kafka_state_untouched(kafka, make_topic, allow, asgi_server):
    topic = make_topic(partitions=2)
    allow(topic)
    client = await LeanClient.connect(asgi_server.url)
    await client.ok("subscribe", topic)  # latest: on the tail, no consumer of its own
    await client.ok("start", None)
    kafka.produce(topic, [{"i": 0}], partition=0)
    kafka.produce(topic, [{"i": 1}], partition=1)
    got = {(await client.next_event("message"))["i"] for _ in range(2)}
    assert got == {0, 1}
    assert metrics(asgi_server.url)["kasocki_tail_members"] >= 2
    await client.close()
    groups = kafka.admin.list_consumer_groups(request_timeout=10).result()
    if GROUP_ID in {g.group_id for g in groups.valid}:
        described = kafka.admin.describe_consumer_groups([GROUP_ID], request_timeout=10)[GROUP_ID].result()
        assert described.members == []
    offsets = kafka.admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(GROUP_ID)])
    assert [tp for tp in offsets[GROUP_ID].result().topic_partitions if tp.offset >= 0] == []


async def test_clients_at_the_head_share_the_live_tail_without_a_consumer_each(kafka, make_topic, allow, connect):
    topic = make_topic()
    allow(topic)
    first = await connect()
    await first.ok("subscribe", topic)  # opens the tail's ring (the shared reader may already exist)
    before = ConsumerCounts.open
    others = [await connect() for _ in range(5)]
    for other in others:
        await other.ok("subscribe", topic)
    assert ConsumerCounts.open == before
    kafka.produce(topic, [{"i": "shared"}])
    for client in [first, *others]:
        assert (await client.ok("consume", None))["i"] == "shared"
