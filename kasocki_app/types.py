"""The shapes the connection core speaks: a partition, a position in it, a record, a taken message.

A position has one shape, ``Position``; clients see it as the JSON object of
``Position.to_dict()`` (docs/protocol.md). Next offsets are kept per ``TopicPartition``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeAlias

from confluent_kafka import Message

# A record as a reader hands it over: data, or an error (``error()`` is set). Message builders
# (KASOCKI_MESSAGE_BUILDER) receive these, so they stay confluent_kafka's own class.
Record = Message

if TYPE_CHECKING:
    import orjson

    from .ring import Entry

# What a reader hands over: a record, or a record of a live tail's ring with what was computed of it once.
Readable: TypeAlias = "Message | Entry"

# A message ready for the client, with the topic, partition and offset of its record (custom builders
# need not name them): whatever of a topic that left is still waiting is dropped by that topic, and an
# HTTP stream's event id is the next offset after it. A plain tuple, not a NamedTuple: one is made per
# delivered message.
Taken = tuple[str, "Delivered", int, int]

# A message as handed out: a dict, or (from a live tail's ring) its JSON encoded once for every
# connection, which every encoder of the app (orjson) inlines as it is.
Delivered: TypeAlias = "dict[str, Any] | orjson.Fragment"


class TopicPartition(NamedTuple):
    """One partition of one topic; equal to the plain ``(topic, partition)`` tuple."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}/{self.partition}"


@dataclass(frozen=True, slots=True)
class Position:
    """Where to read next in one partition.

    ``reset_from`` is the offset a client asked for, or the one a lagging stream lost, when it was
    no longer in the log and KASOCKI_RESET_POLICY chose ``offset`` instead.
    """

    topic: str
    partition: int
    offset: int
    reset_from: int | None = None

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object clients see in subscribe acks and in errors."""
        shown: dict[str, Any] = {"topic": self.topic, "partition": self.partition, "offset": self.offset}
        if self.reset_from is not None:
            shown["reset_from"] = self.reset_from
        return shown


class Outbound(Protocol):
    """How a connection reaches its client (outbound.Outbound; tests use a fake)."""

    async def emit(self, event: str, data: Any) -> None: ...

    async def emit_message(self, taken: Taken) -> None:
        """Send one streamed message (a ``message`` event)."""
        ...

    def backlog(self) -> int:
        """Bytes sent that the client has not taken off the wire yet."""
        ...

    async def disconnect(self) -> None:
        """Disconnect after what is already queued."""
        ...

    async def abort(self) -> None:
        """Drop the client at once, queued data included."""
        ...
