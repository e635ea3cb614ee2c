"""Turning Kafka records into the JSON objects clients receive."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import TIMESTAMP_NOT_AVAILABLE, Message

Builder = Callable[[Message], "dict[str, Any] | None"]


class UndecodableMessage(Exception):
    """A record whose value is not a UTF-8 JSON object; ``reason`` names why (for logs and metrics)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def decode_value(value: bytes | None) -> dict[str, Any]:
    """Decode a record value as a JSON object, or raise UndecodableMessage."""
    if not value:
        raise UndecodableMessage("empty")
    try:
        decoded = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        # orjson reports invalid UTF-8 as a decode error too; tell the two apart for the logs.
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            raise UndecodableMessage("not_utf8") from exc
        raise UndecodableMessage("not_json") from exc
    if type(decoded) is not dict:
        raise UndecodableMessage("not_object")
    return decoded


def kafka_meta(message: Message) -> dict[str, Any]:
    """Where a record came from: the ``_kafka`` field of every delivered message."""
    kind, timestamp = message.timestamp()
    raw_key = message.key()
    key = None if raw_key is None else raw_key.decode("utf-8", errors="replace")
    return {
        "topic": message.topic(),
        "partition": message.partition(),
        "offset": message.offset(),
        "timestamp": None if kind == TIMESTAMP_NOT_AVAILABLE else timestamp,
        "key": key,
    }


def build_message(message: Message) -> dict[str, Any]:
    """The default builder: the decoded JSON object plus ``_kafka`` metadata."""
    decoded = decode_value(message.value())
    decoded["_kafka"] = kafka_meta(message)
    return decoded
