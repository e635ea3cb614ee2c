"""kasocki-client.js resumes after a reconnect: every offset arrives exactly once.

The node script (tests/js/resume_client.mjs) drops its transport mid-read;
socket.io-client reconnects by itself and the server sees a new connection.
Messages are produced before the drop, while the client is disconnected and
after it resumed; partition 1 is subscribed at "latest" and gets its first
messages only while the client is disconnected, so only the original
assignment can bring them back.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from tests.node import Conversation

pytestmark = pytest.mark.django_db(transaction=True)

STREAM_DROP_AFTER = 20  # messages received before the transport is dropped while streaming


class Plan:
    """Produces numbered messages; every fourth one is filtered out by the client."""

    def __init__(self, kafka: Any, topic: str) -> None:
        self.kafka = kafka
        self.topic = topic
        self.n = 0
        self.keep: list[tuple[int, int]] = []  # (partition, offset) the client must receive

    def produce(self, partition: int, count: int, *, end: bool = False, expected: bool = True) -> int:
        values = []
        for i in range(count):
            last = i == count - 1
            kind = "skip" if self.n % 4 == 3 and not (end and last) else "keep"
            values.append({"n": self.n, "kind": kind, "end": end and last})
            self.n += 1
        delivered = self.kafka.produce(self.topic, values, partition=partition)
        kept = [position for position, value in zip(delivered, values, strict=True) if value["kind"] == "keep"]
        if expected:
            self.keep.extend(kept)
        return len(kept)


@pytest.mark.parametrize("mode", ["message", "batch", "consume"])
async def test_client_resumes_after_a_reconnect_without_loss_or_repeat(kafka, make_topic, allow, asgi_server, mode):
    topic = make_topic(partitions=2)
    allow(topic)
    plan = Plan(kafka, topic)
    plan.produce(1, 5, expected=False)  # before the subscription at "latest": never delivered
    kept_before = plan.produce(0, 60)
    drop_after = kept_before if mode == "consume" else STREAM_DROP_AFTER

    script = await Conversation.start("resume_client.mjs", asgi_server.url, topic, mode, str(drop_after))
    try:
        subscribed = await script.expect("subscribed")
        assert subscribed["assignments"] == [
            {"topic": topic, "partition": 0, "offset": 0},
            {"topic": topic, "partition": 1, "offset": 5},
        ]

        dropped = await script.expect("dropped")
        assert dropped["reason"] == "forced close"
        assert dropped["received"] >= drop_after
        # While the client is disconnected (and blocked): new messages in both partitions.
        plan.produce(0, 30)
        plan.produce(1, 10)
        await script.send("go")

        resumed = await script.expect("resumed")
        first = [m for m in resumed["received"] if m["connection"] == 1]
        last_p0 = max(m["offset"] for m in first if m["partition"] == 0)
        assert not any(m["partition"] == 1 for m in first)
        assert resumed["positions"] == [
            {"topic": topic, "partition": 0, "offset": last_p0 + 1},
            {"topic": topic, "partition": 1, "offset": 5},  # never seen: the original assignment
        ]
        assert resumed["assignments"] == resumed["positions"]
        assert resumed["filter"] == {"kind": "keep"}
        assert resumed["started"] is (mode != "consume")

        # After the resume: more messages, ending each partition with an end marker.
        plan.produce(0, 20, end=True)
        plan.produce(1, 10, end=True)

        done = await script.expect("done")
        await script.finish()
    finally:
        await script.close()

    received = [(m["partition"], m["offset"]) for m in done["received"]]
    repeated = [position for position, count in Counter(received).items() if count > 1]
    assert not repeated, f"received more than once: {repeated}"
    assert sorted(received) == sorted(plan.keep)
    for partition in (0, 1):
        offsets = [offset for p, offset in received if p == partition]
        assert offsets == sorted(offsets), f"partition {partition} out of order"
    assert all(m["kind"] == "keep" for m in done["received"])
    # Both connections delivered something: the drop really happened mid-read.
    assert {m["connection"] for m in done["received"]} == {1, 2}
    assert done["resumes"] == 1
    assert done["readies"] == [True, True]
    assert len(set(done["sids"])) == 2
    assert done["errors"] == []
    assert done["positions"] == [
        {"topic": topic, "partition": p, "offset": max(o for q, o in plan.keep if q == p) + 1} for p in (0, 1)
    ]
