"""Creating a consumer: librdkafka's failures reach the client as named errors, never InternalError."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException

from kasocki_app import kafka
from kasocki_app.exceptions import KafkaError, TooManyConsumersError


def refusing(error: KafkaException) -> Any:
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


async def test_another_creation_failure_is_a_kafka_error_with_its_code(monkeypatch):
    failure = KafkaException(RdKafkaError(RdKafkaError._INVALID_ARG, "No such configuration property"))
    monkeypatch.setattr(kafka, "Consumer", refusing(failure))
    with pytest.raises(KafkaError) as refused:
        await kafka.KafkaSource.create()
    assert refused.value.details["code"] == "_INVALID_ARG"
