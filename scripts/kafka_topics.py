"""Topics and records on a real broker, for the tests and the benchmark.

    bootstrap, stop = start_or_reuse_broker("pytest")  # KAFKA_BOOTSTRAP_SERVERS, else a broker of its own
    kafka = KafkaTopics(bootstrap)
    kafka.wait_ready()
    topic = kafka.create_topic(partitions=2)
    kafka.produce(topic, [{"i": 0}, b"raw bytes"])
    kafka.delete_topics([topic])

Unlike ``kafka.py`` beside it, this needs the virtualenv (confluent-kafka, orjson).
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from scripts import kafka as broker_script


def start_or_reuse_broker(label: str) -> tuple[str, Callable[[], object] | None]:
    """(bootstrap, stop): KAFKA_BOOTSTRAP_SERVERS when reachable (stop is None), else a new broker named after label."""
    return broker_script.start_or_reuse(f"{label}-{os.getpid()}")


class KafkaTopics:
    """Create, wait for and delete topics, and produce records, on one broker."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self._producer: Producer | None = None

    @property
    def producer(self) -> Producer:
        if self._producer is None:
            self._producer = Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 1, "acks": "all"})
        return self._producer

    def wait_ready(self, timeout: float = 60) -> None:
        """Return once the broker answers a metadata request (it may still be starting)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.admin.list_topics(timeout=5)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def create_topic(self, partitions: int = 1, prefix: str = "test", name: str | None = None) -> str:
        """Create ``name`` (default: ``prefix`` and a unique suffix); returns once every partition has a leader."""
        name = name or f"{prefix}-{uuid.uuid4().hex[:12]}"
        futures = self.admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        futures[name].result(30)
        self.wait_for_topic(name, partitions)
        return name

    def wait_for_topic(self, name: str, partitions: int, timeout: float = 30) -> None:
        """Wait until the metadata shows ``name`` with ``partitions`` partitions, each with a leader."""
        deadline = time.monotonic() + timeout
        while True:
            topic = self.admin.list_topics(topic=name, timeout=10).topics.get(name)
            if (
                topic is not None
                and topic.error is None
                and len(topic.partitions) == partitions
                and all(p.leader >= 0 for p in topic.partitions.values())
            ):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {name} did not appear")
            time.sleep(0.05)

    def delete_topics(self, names: Iterable[str]) -> None:
        names = list(names)
        if not names:
            return
        for future in self.admin.delete_topics(names, operation_timeout=30).values():
            with contextlib.suppress(Exception):  # already gone is fine
                future.result(30)

    def produce(
        self,
        topic: str,
        values: Iterable[Any],
        *,
        partition: int | None = None,
        key: str | bytes | None = None,
        timestamp: int | None = None,
    ) -> list[tuple[int, int]]:
        """Produce values (dicts become JSON, bytes go as they are); returns (partition, offset) of each."""
        delivered: list[tuple[int, int]] = []
        errors: list[Any] = []

        def on_delivery(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(err)
            else:
                delivered.append((msg.partition(), msg.offset()))

        for value in values:
            raw = value if isinstance(value, (bytes, type(None))) else orjson.dumps(value)
            kwargs: dict[str, Any] = {"value": raw, "on_delivery": on_delivery}
            if partition is not None:
                kwargs["partition"] = partition
            if key is not None:
                kwargs["key"] = key
            if timestamp is not None:
                kwargs["timestamp"] = timestamp
            self.producer.produce(topic, **kwargs)
        remaining = self.producer.flush(30)
        assert remaining == 0 and not errors, f"produce failed: {errors}"
        return delivered
