"""A partition's recent records, shared by every connection that reads it at the head.

A ``Ring`` holds the records a live tail read, in offset order, bounded by count and
bytes (KASOCKI_TAIL_RECORDS, KASOCKI_TAIL_BYTES). Everything that exists in the log
from ``low`` up to ``high`` is in it: a connection whose next offset lies there reads
from the ring, and one that falls below ``low`` must read Kafka itself.

Each ``Entry`` keeps what connections compute of its record once for all of them: the
built message, each distinct filter's verdict and the encoded JSON of the message.
Synchronous and free of I/O.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from . import jsonshim, metrics
from .messages import UndecodableMessage
from .types import Record, TopicPartition

logger = logging.getLogger(__name__)

Builder = Callable[[Record], "dict[str, Any] | None"]
Predicate = Callable[[dict[str, Any]], bool]

# Built messages are kept only for the newest records: connections at the head judge a record
# within moments of its arrival, and a dict costs several times the bytes of its JSON.
BUILT_KEPT = 256
# An entry's failure when the builder returned None: skipped without a word, as a builder asks.
BUILT_NOTHING = "built_nothing"
# What an entry costs beside its record's value (the encoded message, the objects around it).
ENTRY_OVERHEAD = 400


class Entry:
    """One record of a ring, with what was computed of it once for every reader."""

    __slots__ = (
        "builder",
        "built",
        "failure",
        "noted",
        "offset",
        "packet",
        "partition",
        "record",
        "size",
        "topic",
        "verdicts",
    )

    def __init__(self, record: Record, topic: str, partition: int, offset: int) -> None:
        self.record = record
        self.topic = topic
        self.partition = partition
        self.offset = offset
        value = record.value()
        self.size = 2 * len(value or b"") + ENTRY_OVERHEAD  # the value and, once encoded, the message
        self.builder: Builder | None = None  # what ``built`` was built by
        self.built: dict[str, Any] | None = None
        self.failure: str | None = None  # why the record could not be built, once it was tried
        self.noted = False  # the failure was logged (once for all readers)
        self.packet: orjson.Fragment | None = None
        self.verdicts: dict[bytes, bool] = {}

    def message(self, build: Builder) -> dict[str, Any] | None:
        """The message ``build`` makes of the record (built once); None when it cannot be delivered."""
        if self.builder is build:
            return self.built
        if self.failure is not None:
            return None
        try:
            built = build(self.record)
        except UndecodableMessage as exc:
            self.failure = exc.reason
            return None
        except Exception:
            logger.exception("message builder failed")
            self.failure = "builder_error"
            return None
        self.builder, self.built = build, built
        if built is None:
            self.failure = BUILT_NOTHING
        return built

    def first_failure(self) -> bool:
        """True the first time a reader meets this record's failure (it logs it; the others count it)."""
        noted, self.noted = self.noted, True
        return not noted

    def passes(self, key: bytes, predicate: Predicate, message: dict[str, Any]) -> bool:
        """The verdict of the filter ``key`` on this record, evaluated once."""
        verdict = self.verdicts.get(key)
        if verdict is None:
            verdict = self.verdicts[key] = predicate(message)
            metrics.FILTER_EVALUATIONS.inc()
        return verdict

    def encoded(self, message: dict[str, Any]) -> orjson.Fragment:
        """The message as JSON, encoded once and sent as is to every reader."""
        if self.packet is None:
            self.packet = orjson.Fragment(jsonshim.dumps(message))
            metrics.ENCODES.inc()
        return self.packet

    def forget_built(self) -> None:
        """Drop the built message (it can be built again); verdicts and the encoded JSON stay."""
        self.builder = self.built = None


class Ring:
    """The recent records of one partition: from ``low`` (inclusive) to ``high`` (the next to read)."""

    def __init__(self, tp: TopicPartition, start: int, max_records: int, max_bytes: int) -> None:
        self.tp = tp
        self.low = start
        self.high = start
        self.max_records = max(1, max_records)
        self.max_bytes = max_bytes
        self.bytes = 0
        self.members: set[Any] = set()  # readers on the ring, woken when records come
        self.behind: set[Any] = set()  # readers catching up to it on their own consumer
        self.idle_since: float | None = None  # when the last reader left
        self._entries: list[Entry] = []
        self._offsets: list[int] = []
        self._first = 0  # index of the oldest kept entry; the list is compacted now and then

    def __len__(self) -> int:
        return len(self._entries) - self._first

    def holds(self, offset: int) -> bool:
        """Whether a reader whose next offset is ``offset`` can read on from here."""
        return offset >= self.low

    def append(self, records: Iterable[Record]) -> int:
        """Add records read after ``high`` (older ones are dropped); how many were added."""
        added = 0
        entries, offsets = self._entries, self._offsets
        topic, partition = self.tp
        for record in records:
            offset = record.offset()
            if offset is None or offset < self.high:
                continue  # read again after the tail was reassigned: already here
            entry = Entry(record, topic, partition, offset)
            entries.append(entry)
            offsets.append(offset)
            self.high = offset + 1
            self.bytes += entry.size
            added += 1
            stale = len(entries) - BUILT_KEPT
            if stale >= self._first:
                entries[stale].forget_built()
        self._evict()
        return added

    def since(self, offset: int, limit: int) -> list[Entry]:
        """Up to ``limit`` entries at or after ``offset`` (the caller checked ``holds``)."""
        if offset >= self.high:
            return []
        start = bisect.bisect_left(self._offsets, offset, lo=self._first)
        return self._entries[start : start + limit]

    def _evict(self) -> None:
        first = self._first
        entries = self._entries
        while len(entries) - first > self.max_records or (self.bytes > self.max_bytes and len(entries) - first > 1):
            self.bytes -= entries[first].size
            self.low = entries[first].offset + 1
            first += 1
        if first > 1024 and first * 2 > len(entries):
            del entries[:first]
            del self._offsets[:first]
            first = 0
        self._first = first
