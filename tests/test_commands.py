"""Management commands: kasocki_check and kasocki_demo_producer against the real broker."""

from __future__ import annotations

import io
import uuid

import pytest
from confluent_kafka import Consumer, TopicPartition
from django.core.management import CommandError, call_command

from kasocki_app.cluster import cluster
from kasocki_app.management.commands.kasocki_check import counted
from kasocki_app.models import WhitelistedTopic

pytestmark = pytest.mark.django_db(transaction=True)


def run(*args, **options) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err, **options)
    return out.getvalue(), err.getvalue()


def test_check_passes_when_everything_is_there(kafka, make_topic, allow):
    topic = make_topic(3)
    allow(topic)
    out, _ = run("kasocki_check")
    assert f"{topic}: 3 partitions" in out and "ready to serve" in out


@pytest.mark.parametrize(
    ("count", "text"),
    [
        pytest.param(0, "0 partitions", id="zero"),
        pytest.param(1, "1 partition", id="one"),
        pytest.param(2, "2 partitions", id="two"),
        pytest.param(11, "11 partitions", id="eleven"),
    ],
)
def test_counted_is_singular_for_one_only(count, text):
    assert counted(count, "partition") == text


def test_check_counts_one_partition_in_the_singular(kafka, make_topic, allow):
    topic = make_topic(1)
    allow(topic)
    out, _ = run("kasocki_check")
    assert f"  {topic}: 1 partition" in out.splitlines()


def test_check_counts_one_topic_in_the_singular(kafka, make_topic, allow, monkeypatch):
    topic = make_topic(2)
    allow(topic)

    async def only_this_topic(fresh: bool = False) -> dict[str, int]:
        return {topic: 2}

    # The shared broker holds many topics: the count of one is only seen with a cluster of one.
    monkeypatch.setattr(cluster, "topics", only_this_topic)
    out, _ = run("kasocki_check")
    lines = out.splitlines()
    assert lines[0].endswith(": reachable, 1 topic") and f"  {topic}: 2 partitions" in lines


def test_check_fails_for_a_missing_topic(kafka, make_topic, allow):
    allow("no-such-topic-here")
    WhitelistedTopic.objects.create(topic="also-missing", access="restricted")
    with pytest.raises(CommandError) as failed:
        run("kasocki_check")
    assert failed.value.returncode == 1
    assert str(failed.value) == "2 problems found"


def test_check_counts_one_problem_in_the_singular(kafka, allow):
    allow("no-such-topic-here")
    with pytest.raises(CommandError) as failed:
        run("kasocki_check")
    assert str(failed.value) == "1 problem found"


def test_check_fails_when_kafka_is_unreachable(settings, kafka):
    settings.KASOCKI_KAFKA_CONFIG = {"bootstrap.servers": "127.0.0.1:1"}
    settings.KASOCKI_KAFKA_TIMEOUT = 2
    with pytest.raises(CommandError):
        run("kasocki_check")


def test_check_fails_for_bad_settings(settings, kafka):
    settings.KASOCKI_RESET_POLICY = "sometimes"
    with pytest.raises(CommandError):
        run("kasocki_check")


def test_demo_producer_creates_and_fills_a_topic(kafka):
    topic = f"demo-{id(kafka)}-{__name__.replace('.', '-')}"
    try:
        run(
            "kasocki_demo_producer",
            "--topic",
            topic,
            "--partitions",
            "2",
            "--backfill",
            "20",
            "--count",
            "5",
            "--rate",
            "500",
            "--seed",
            "1",
        )
        consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "test-demo"})
        total = 0
        for partition in (0, 1):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        consumer.close()
        assert total == 25
    finally:
        kafka.delete_topics([topic])


def test_demo_producer_without_stream_creates_the_topic_and_backfill_then_returns(kafka):
    topic = f"demo-{uuid.uuid4().hex[:12]}"
    try:
        out, _ = run("kasocki_demo_producer", "--topic", topic, "--backfill", "7", "--no-stream")
        assert f"topic {topic!r} is there" in out
        consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "test-demo"})
        total = 0
        for partition in range(3):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            total += high - low
        consumer.close()
        assert total == 7
    finally:
        kafka.delete_topics([topic])


def test_demo_producer_rejects_bad_arguments(kafka):
    with pytest.raises(CommandError):
        run("kasocki_demo_producer", "--rate", "0")
