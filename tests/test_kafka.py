"""Creating a consumer: librdkafka's failures reach the client as named errors, never InternalError."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException

from kasocki_app import kafka
from kasocki_app.exceptions import KafkaError, TooManyConsumersError
from kasocki_app.kafka import WAIT_MAX_SECONDS, KafkaSource
from kasocki_app.types import Position


def refusing(error: Exception) -> Any:
    def create(*args: Any, **kwargs: Any) -> Any:
        raise error

    return create


async def test_the_thread_local_storage_ceiling_is_too_many_consumers(monkeypatch):
    # What librdkafka says for the ~1,012th client of a process.
    failure = KafkaException(RdKafkaError(RdKafkaError._FAIL, "Failed to initialize thread local storage"))
    monkeypatch.setattr(kafka, "Consumer", refusing(failure))
    with pytest.raises(TooManyConsumersError) as refused:
        await kafka.KafkaSource.create()
    assert refused.value.details["limit"] > 0


async def test_the_ceiling_met_as_a_runtime_error_is_too_many_consumers_too(monkeypatch):
    # How confluent-kafka itself reports it at the ~1,012th Consumer of a process.
    monkeypatch.setattr(kafka, "Consumer", refusing(RuntimeError("Failed to initialize thread local storage")))
    with pytest.raises(TooManyConsumersError):
        await kafka.KafkaSource.create()


async def test_another_creation_failure_is_a_kafka_error_with_its_code(monkeypatch):
    failure = KafkaException(RdKafkaError(RdKafkaError._INVALID_ARG, "No such configuration property"))
    monkeypatch.setattr(kafka, "Consumer", refusing(failure))
    with pytest.raises(KafkaError) as refused:
        await kafka.KafkaSource.create()
    assert refused.value.details["code"] == "_INVALID_ARG"


async def test_partitions_are_added_while_a_read_waits_in_librdkafka(kafka, make_topic, settings):
    # librdkafka holds an assignment change back while another thread waits in consume(): with
    # reads waiting back to back (the live tail's pump), an incremental_assign never returned.
    first, second = make_topic(), make_topic()
    settings.KASOCKI_KAFKA_TIMEOUT = 2.0
    source = await KafkaSource.create()
    reading = True

    async def read_back_to_back() -> None:
        while reading:
            await source.read(100, WAIT_MAX_SECONDS)

    reads = asyncio.ensure_future(read_back_to_back())
    try:
        for topic in (first, second):
            await source.add([Position(topic, 0, 0)])  # raises KafkaError after KASOCKI_KAFKA_TIMEOUT
            await source.seek(Position(topic, 0, 0))
            await source.remove([(topic, 0)])
    finally:
        reading = False
        await reads
        await source.close()


async def test_a_bounded_wait_keeps_a_cancel_that_comes_as_it_finishes():
    """asyncio.wait_for (Python 3.11) returns the result then, and its caller went on as if never
    cancelled: a stream's stop waited for the 30 s timer of the read it had cancelled."""
    from kasocki_app.threads import within

    done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    waiting = asyncio.ensure_future(within(done, 5))
    await asyncio.sleep(0)
    done.set_result(1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
