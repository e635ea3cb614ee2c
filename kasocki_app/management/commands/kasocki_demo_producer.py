"""Produce a realistic stream of sample events into a Kafka topic (for demos and the run command)."""

from __future__ import annotations

import random
import signal
import time
import uuid
from typing import Any

import orjson
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from django.core.management.base import BaseCommand, CommandError, CommandParser

from kasocki_app.conf import conf

WIKIS = ["enwiki", "dewiki", "frwiki", "commonswiki", "wikidatawiki"]
USERS = ["Ada", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances"]
TITLES = ["Apache Kafka", "Socket.IO", "Django", "Stream processing", "Event sourcing", "Python"]
TYPES = ["edit", "edit", "edit", "new", "log", "categorize"]


def sample_event(rng: random.Random, sequence: int) -> dict[str, Any]:
    """One event shaped like a wiki's recent-change feed."""
    wiki = rng.choice(WIKIS)
    return {
        "id": str(uuid.UUID(int=rng.getrandbits(128))),
        "seq": sequence,
        "type": rng.choice(TYPES),
        "wiki": wiki,
        "title": rng.choice(TITLES),
        "user": {"name": rng.choice(USERS), "bot": rng.random() < 0.1, "edit_count": rng.randint(1, 50_000)},
        "length": {"old": rng.randint(0, 20_000), "new": rng.randint(0, 20_000)},
        "minor": rng.random() < 0.3,
        "tags": rng.sample(["mobile edit", "visualeditor", "reverted", "new topic"], k=rng.randint(0, 2)),
        "meta": {"domain": f"{wiki[:-4]}.example.org", "dt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())},
    }


class Command(BaseCommand):
    help = "Produce sample JSON events into a topic at a chosen rate (creates the topic when missing)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--topic", default="demo", help="topic to produce to (default: demo)")
        parser.add_argument("--rate", type=float, default=5.0, help="events per second (default: 5)")
        parser.add_argument("--partitions", type=int, default=3, help="partitions when creating the topic")
        parser.add_argument("--backfill", type=int, default=0, help="events to produce at once before the stream")
        parser.add_argument("--count", type=int, default=0, help="stop after this many streamed events (0: never)")
        parser.add_argument("--seed", type=int, default=None, help="random seed, for repeatable data")
        parser.add_argument(
            "--no-stream", action="store_true", help="create the topic and produce the backfill, then exit"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["rate"] <= 0 or options["partitions"] < 1 or options["backfill"] < 0 or options["count"] < 0:
            raise CommandError("--rate and --partitions must be positive; --backfill and --count not negative")
        config = conf.kafka_config
        topic = options["topic"]
        self.ensure_topic(AdminClient(config), topic, options["partitions"])
        producer = Producer({**config, "linger.ms": 5, "client.id": "kasocki-demo-producer"})
        rng = random.Random(options["seed"])
        stopping = False

        def stop(*_: Any) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, stop)
        sequence = 0
        for _ in range(options["backfill"]):
            self.produce(producer, topic, sample_event(rng, sequence))
            sequence += 1
        producer.flush(30)
        if options["no_stream"]:
            self.stdout.write(f"topic {topic!r} is there (backfilled {options['backfill']})")
            return
        self.stdout.write(f"producing to {topic!r} at {options['rate']:g}/s (backfilled {options['backfill']})")
        interval = 1.0 / options["rate"]
        next_at = time.monotonic()
        streamed = 0
        try:
            while not stopping and (options["count"] == 0 or streamed < options["count"]):
                self.produce(producer, topic, sample_event(rng, sequence))
                sequence += 1
                streamed += 1
                producer.poll(0)
                next_at += interval
                time.sleep(max(0.0, next_at - time.monotonic()))
        except KeyboardInterrupt:
            pass
        finally:
            producer.flush(10)

    def produce(self, producer: Producer, topic: str, event: dict[str, Any]) -> None:
        while True:
            try:
                producer.produce(topic, value=orjson.dumps(event), key=event["wiki"])
                return
            except BufferError:
                producer.poll(0.1)

    def ensure_topic(self, admin: AdminClient, topic: str, partitions: int) -> None:
        try:
            existing = admin.list_topics(timeout=10).topics
        except KafkaException as exc:
            raise CommandError(f"Kafka is not reachable at {conf.kafka_config['bootstrap.servers']}: {exc}") from exc
        if topic in existing:
            return
        future = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic]
        try:
            future.result(30)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise CommandError(f"could not create topic {topic!r}: {exc}") from exc
        deadline = time.monotonic() + 30
        while topic not in admin.list_topics(timeout=10).topics:
            if time.monotonic() > deadline:
                raise CommandError(f"topic {topic!r} did not appear")
            time.sleep(0.1)
