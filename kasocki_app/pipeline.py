"""Records in, messages out: decode or build, filter, and keep each partition's next offset.

Synchronous and free of I/O: the connection feeds it what its reader returned and
takes what passes. A record counts as taken (its partition's position moves past
it) when it has been judged, passing or not, in one step of the event loop.

Records of a live tail's ring (``ring.Entry``) are built, judged per distinct filter
and encoded once for every connection: what passes is handed out as the encoded
JSON (an ``orjson.Fragment``), which sends as is.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import orjson

from . import metrics
from .filters import Predicate, compile_filters
from .messages import UndecodableMessage, build_message, decode_value, kafka_meta
from .ring import BUILT_NOTHING, Entry
from .types import Position, Readable, Record, Taken, TopicPartition

logger = logging.getLogger(__name__)

Builder = Callable[[Record], "dict[str, Any] | None"]


class Pipeline:
    """One connection's records between its reader and its client."""

    def __init__(self, sid: str, build: Builder) -> None:
        self.sid = sid
        self.filters: dict[str, Any] | None = None
        self.skipped: Counter[str] = Counter()
        self.records: deque[Readable] = deque()  # read, not yet judged
        self.ready: deque[Taken] = deque()  # judged and passing, given back (stop, a cancelled consume)
        self.error_records: list[Record] = []  # met while taking, for the connection to act on
        # Topics that left the subscription: nothing of them is handed out any more.
        self.gone: set[str] = set()
        self._build = build
        self._predicate: Predicate | None = None
        self._filter_key = b""  # the normalised filter: connections with equal keys share verdicts
        # With the default builder, _kafka is added only to messages that pass the filter
        # (unless the filter looks at _kafka): most records of a filtered scan never need it.
        self._default_builder = build is build_message
        self._lazy_meta = self._default_builder
        # Next offset per partition. Plain (topic, partition) keys, equal to TopicPartition:
        # building a TopicPartition per record would double the cost of this bookkeeping.
        self._next: dict[tuple[str, int], int] = {}

    @property
    def positions(self) -> dict[TopicPartition, int]:
        """The next offset to take per partition, as far as records were taken."""
        return {TopicPartition(*tp): offset for tp, offset in list(self._next.items())}

    def start_at(self, positions: Iterable[Position]) -> None:
        """Partitions (re)starting at these offsets."""
        for position in positions:
            self._next[(position.topic, position.partition)] = position.offset

    def set_filter(self, arg: Any) -> dict[str, Any] | None:
        """Judge every record not yet taken by this filter (None: all pass); raises InvalidFilterError."""
        self.filters, self._predicate = compile_filters(arg)
        self._filter_key = orjson.dumps(self.filters, option=orjson.OPT_SORT_KEYS)
        self._lazy_meta = self._default_builder and not any(
            key == "_kafka" or key.startswith("_kafka.") for key in self.filters or ()
        )
        return self.filters

    def feed(self, records: Iterable[Readable]) -> None:
        self.records.extend(records)

    def give_back(self, taken: Sequence[Taken]) -> None:
        """Messages taken but not delivered: they are the next ones taken, in the same order."""
        self.ready.extendleft(reversed(taken))

    def keep(self, taken: list[Taken]) -> list[Taken]:
        """``taken`` without the messages of topics that left meanwhile."""
        gone = self.gone
        return [item for item in taken if item[0] not in gone] if gone else taken

    def drop_topics(self, topics: Iterable[str]) -> None:
        """Topics that left: from now on nothing of them is handed out, whatever was read before."""
        gone = self.gone
        gone.update(topics)
        self._next = {tp: offset for tp, offset in self._next.items() if tp[0] not in gone}
        self.records = deque(record for record in self.records if _topic_of(record) not in gone)
        self.ready = deque(item for item in self.ready if item[0] not in gone)

    def take_error_records(self) -> list[Record]:
        records, self.error_records = self.error_records, []
        return records

    def clear(self) -> None:
        self.records.clear()
        self.ready.clear()
        self.error_records.clear()

    def take(self, limit: int) -> list[Taken]:
        """Up to ``limit`` passing messages: given-back ones first, then from the records fed."""
        taken: list[Taken] = []
        ready = self.ready
        gone = self.gone
        while ready and len(taken) < limit:
            item = ready.popleft()
            if item[0] not in gone:
                taken.append(item)
        records = self.records
        predicate = self._predicate
        positions = self._next
        lazy_meta = self._lazy_meta
        filtered = evaluated = 0
        while records and len(taken) < limit:
            record = records.popleft()
            if isinstance(record, Entry):
                if record.topic in gone:
                    continue
                positions[(record.topic, record.partition)] = record.offset + 1
                shared = record.message(self._build)
                if shared is None:
                    if record.failure != BUILT_NOTHING:
                        self._skip(record.record, record.failure or "", log=record.first_failure())
                elif predicate is None or record.passes(self._filter_key, predicate, shared):
                    taken.append((record.topic, record.encoded(shared), record.partition, record.offset))
                else:
                    filtered += 1
                continue
            if record.error() is not None:
                self.error_records.append(record)
                continue
            topic = record.topic()
            partition = record.partition()
            offset = record.offset()
            # Gone: fetched before the topic left (librdkafka's queue, a wait in a thread).
            if topic is None or partition is None or offset is None or topic in gone:
                continue
            positions[(topic, partition)] = offset + 1
            if lazy_meta:
                try:
                    message = decode_value(record.value())
                except UndecodableMessage as exc:
                    self._skip(record, exc.reason)
                    continue
                evaluated += 1
                if predicate is None or predicate(message):
                    message["_kafka"] = kafka_meta(record)
                    taken.append((topic, message, partition, offset))
                else:
                    filtered += 1
                continue
            built = self._build_one(record)
            if built is None:
                continue
            evaluated += 1
            if predicate is None or predicate(built):
                taken.append((topic, built, partition, offset))
            else:
                filtered += 1
        if filtered:
            metrics.FILTERED.inc(filtered)
        if predicate is not None and evaluated:
            metrics.FILTER_EVALUATIONS.inc(evaluated)
        return taken

    def _build_one(self, record: Record) -> dict[str, Any] | None:
        try:
            return self._build(record)
        except UndecodableMessage as exc:
            self._skip(record, exc.reason)
        except Exception:
            logger.exception("message builder failed")
            self._skip(record, "builder_error")
        return None

    def _skip(self, record: Record, reason: str, log: bool = True) -> None:
        self.skipped[reason] += 1
        metrics.SKIPPED.labels(reason).inc()
        if not log:  # a ring's record: logged once, by the first connection that met it
            return
        logger.warning(
            "sid %s skipped %s message at %s/%s/%s",
            self.sid,
            reason,
            record.topic(),
            record.partition(),
            record.offset(),
        )


def _topic_of(record: Readable) -> str | None:
    return record.topic if isinstance(record, Entry) else record.topic()
