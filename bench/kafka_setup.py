"""The broker and the topics the benchmark reads: start or reuse a broker, create topics, produce, read log ends."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from bench.data import FILTER_BUCKET, Records
from scripts import kafka_topics
from scripts.kafka_topics import KafkaTopics


def start_or_reuse_broker() -> tuple[str, Callable[[], object] | None]:
    """(bootstrap, stop callable or None when an already running broker is reused)."""
    return kafka_topics.start_or_reuse_broker("bench")


def broker_port(bootstrap: str) -> int:
    return int(bootstrap.split(",")[0].rpartition(":")[2])


class Topics(KafkaTopics):
    """Topics named after one benchmark run, all deleted at the end."""

    def __init__(self, bootstrap: str, run_id: str | None = None) -> None:
        super().__init__(bootstrap)
        self.run_id = run_id or uuid.uuid4().hex[:8]
        self.created: list[str] = []

    def create(self, label: str, partitions: int) -> str:
        name = self.create_topic(partitions, name=f"bench-{self.run_id}-{label}")
        self.created.append(name)
        return name

    def delete_all(self) -> None:
        self.delete_topics(self.created)
        self.created.clear()


def watermarks(bootstrap: str, topic: str, partitions: int) -> list[tuple[int, int]]:
    """(low, high) offsets of each partition."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "kasocki-bench", "enable.auto.commit": False})
    try:
        return [consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10) for p in range(partitions)]
    finally:
        consumer.close()


def produce_dataset(bootstrap: str, topic: str, partitions: int, count: int, seed: int = 1) -> dict[str, Any]:
    """Write ``count`` records round-robin over the partitions, as fast as the broker takes them.

    The last record of each partition has ``bucket`` = FILTER_BUCKET, so a client
    reading with that filter knows when it has seen the end of every partition.
    """
    records = Records(seed=seed)
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "linger.ms": 20,
            "batch.size": 1_000_000,
            "batch.num.messages": 10_000,
            "queue.buffering.max.kbytes": 256 * 1024,
            "queue.buffering.max.messages": 500_000,
            "compression.type": "none",
            "acks": 1,
        }
    )
    errors: list[Any] = []

    def on_delivery(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    total_bytes = 0
    began = time.perf_counter()
    last_of = {count - 1 - k for k in range(min(partitions, count))}
    for index in range(count):
        value = records.value(index, FILTER_BUCKET if index in last_of else None)
        total_bytes += len(value)
        while True:
            try:
                producer.produce(topic, value=value, partition=index % partitions, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        if index % 10_000 == 0:
            producer.poll(0)
    remaining = producer.flush(120)
    elapsed = time.perf_counter() - began
    if remaining or errors:
        raise RuntimeError(f"producing the dataset failed: {remaining} not delivered, errors {errors[:3]}")
    marks = watermarks(bootstrap, topic, partitions)
    return {
        "topic": topic,
        "partitions": partitions,
        "records": count,
        "mean_value_bytes": round(total_bytes / max(1, count)),
        "produce_seconds": round(elapsed, 2),
        "high_watermarks": [high for _low, high in marks],
    }


class LogEnds:
    """The log end of every partition of a topic, read by one consumer kept open (no group, no commits)."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self.consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "kasocki-bench", "enable.auto.commit": False}
        )

    def __call__(self) -> list[int]:
        marks = [
            self.consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10, cached=False)
            for p in range(self.partitions)
        ]
        return [high for _low, high in marks]

    def close(self) -> None:
        self.consumer.close()
