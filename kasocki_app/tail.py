"""The live tail of one server process: one shared Kafka reader for the partitions clients read at the head.

A ring (``ring.py``) per tailed partition holds what the shared reader read since the
partition was opened at its log end; connections read from the rings (``tailing.py``)
instead of owning a consumer each. One pump task reads for all rings, appends, and
wakes the readers of each ring that grew. A ring nobody reads closes after
KASOCKI_TAIL_GRACE_SECONDS. The shared reader, like every reader here, is assigned
partitions only: no group membership, no commits.

Errors of the shared reader reach every connection on the tail (``Listener.tail_error``);
a ring whose next offset left the log closes, and its readers go on with consumers of
their own, where the reset policy applies to each alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Protocol

from confluent_kafka import KafkaError as RdKafkaError

from . import metrics
from .assignments import Catalog
from .conf import conf
from .exceptions import InternalError, KafkaError, KasockiError
from .kafka import WAIT_MAX_SECONDS
from .reader import Reader, ReaderFactory
from .ring import Entry, Ring
from .tasks import process_task
from .threads import kafka_error
from .types import Position, Record, TopicPartition

logger = logging.getLogger(__name__)

# Records the pump takes from the shared reader per step.
PUMP_BATCH = 2000
PUMP_NAME = "kasocki-live-tail"
# How librdkafka's error callback names the partition an error is about: "topic [partition]: ...".
NAMED_PARTITION = re.compile(r"^(?P<topic>[^\s\[\]]+) \[(?P<partition>\d+)\]: ")
# How often rings without readers are looked at.
SWEEP_SECONDS = 1.0


class Listener(Protocol):
    """A connection's reader as the tail sees it."""

    def wake(self) -> None:
        """Records came to a ring it reads."""
        ...

    def tail_error(self, error: KasockiError) -> None:
        """An error of the shared reader, for the client."""
        ...

    def ring_closed(self, tp: TopicPartition) -> None:
        """The ring of ``tp`` closed: read on from Kafka directly."""
        ...


class LiveTail:
    """Rings of the partitions read at the head, filled by one shared reader."""

    def __init__(
        self, open_reader: ReaderFactory, catalog: Catalog, reader_key: Callable[[], Hashable] = lambda: None
    ) -> None:
        self.rings: dict[TopicPartition, Ring] = {}
        self._open_reader = open_reader
        self._catalog = catalog
        # What the shared reader was made with (the Kafka settings): when it changes, a new one is made.
        self._reader_key = reader_key
        self._made_with: Hashable = None
        self._reader: Reader | None = None
        self._opening: dict[TopicPartition, Ring] = {}  # rings of partitions being assigned to the shared reader
        self._pump: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # opening rings and the reader, one at a time
        self._swept = 0.0  # when rings nobody reads were last looked for
        self.closed = False

    @property
    def reader(self) -> Reader | None:
        """The shared reader (None until a ring opened)."""
        return self._reader

    def find(self, tp: TopicPartition) -> Ring | None:
        return self.rings.get(tp)

    async def open(self, partitions: Sequence[TopicPartition]) -> None:
        """Make sure each partition has a ring, opening the missing ones at their log end."""
        if all(tp in self.rings for tp in partitions) or self.closed:
            return
        async with self._lock:
            missing = sorted({tp for tp in partitions if tp not in self.rings})
            if not missing or self.closed:
                return
            key = self._reader_key()
            if self._reader is not None and key != self._made_with:
                await self._retire()
                missing = sorted(set(partitions))
            if self._reader is None:
                self._reader = await self._open_reader()
                self._made_with = key
            marks = await self._catalog.watermarks(missing)
            opening = {tp: Ring(tp, marks[tp][1], conf.tail_records, conf.tail_bytes) for tp in missing}
            # Filled from the moment the shared reader is assigned them: the pump may read their first
            # records before this call resumes, and a ring made after that would lack them.
            self._opening.update(opening)
            try:
                await self._reader.add([Position(tp.topic, tp.partition, ring.low) for tp, ring in opening.items()])
            except Exception:
                # A failed change may be made all the same (a timed-out call's thread goes on): undone,
                # or the partitions stay assigned without a ring and the next open's add meets them.
                with contextlib.suppress(Exception):
                    await self._reader.remove(list(opening))
                raise
            finally:
                for tp in opening:
                    self._opening.pop(tp, None)
            for tp, ring in opening.items():
                ring.idle_since = time.monotonic()
                self.rings[tp] = ring
                logger.info("live tail of %s opened at offset %d", tp, ring.low)
            if self._pump is None or self._pump.done():
                self._pump = process_task(self._run(), PUMP_NAME)

    async def _retire(self) -> None:
        """Close every ring and the shared reader; the readers of the rings go on by themselves."""
        logger.info("the Kafka settings changed: the live tail's reader is replaced")
        rings, self.rings = self.rings, {}
        reader, self._reader = self._reader, None
        for tp, ring in rings.items():
            for member in list(ring.members):
                member.ring_closed(tp)
        if reader is not None:
            await reader.close()

    async def close(self) -> None:
        """Stop the pump and close the shared reader (the service's shutdown)."""
        self.closed = True
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
        for tp in list(self.rings):
            self._drop(tp)
        reader, self._reader = self._reader, None
        if reader is not None:
            await reader.close()

    # --- the pump -------------------------------------------------------------

    async def _run(self) -> None:
        """Read for every ring until none is left; failures go to the readers, never end the pump."""
        while self.rings and self._reader is not None:
            try:
                await self._step(self._reader)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("the live tail's reader failed")
                error = exc if isinstance(exc, KasockiError) else InternalError("reading the live tail failed")
                self._broadcast(error)
                await asyncio.sleep(1.0)  # a persistent failure must not spin
        self._pump = None

    async def _step(self, reader: Reader) -> None:
        records = await reader.read(PUMP_BATCH, WAIT_MAX_SECONDS)
        for error in reader.take_errors():
            self._broadcast(error)
        grown: dict[TopicPartition, list[Record]] = {}
        for record in records:
            if isinstance(record, Entry):
                continue  # not from a consumer; never happens
            topic, partition = record.topic(), record.partition()
            if topic is None or partition is None:
                continue
            tp = TopicPartition(topic, partition)
            if tp not in self.rings and tp not in self._opening:
                continue  # fetched before its ring closed
            if record.error() is not None:
                if tp in self.rings:
                    await self._failed(tp, record)
                continue
            grown.setdefault(tp, []).append(record)
        for tp, batch in grown.items():
            ring = self.rings.get(tp, self._opening.get(tp))
            if ring is None:
                continue
            metrics.TAIL_RECORDS.inc(ring.append(batch))
            for member in list(ring.members):
                member.wake()
        if time.monotonic() - self._swept >= min(SWEEP_SECONDS, conf.tail_grace_seconds):
            self._swept = time.monotonic()
            await self._sweep(reader)

    async def _failed(self, tp: TopicPartition, record: Record) -> None:
        """An error record of a tailed partition: tell its readers; close the ring if it cannot go on."""
        cause = record.error()
        assert cause is not None
        if cause.code() == RdKafkaError._AUTO_OFFSET_RESET:
            # Each reader goes on from its own position with a consumer of its own, where the
            # reset policy applies to it alone. Under the lock, as every assignment change of the
            # shared reader: a reopen's add made before this remove would be undone by it.
            async with self._lock:
                ring = self.rings.get(tp)
                if ring is None:
                    return
                logger.warning("live tail of %s closed: %s", tp, cause.str())
                members = list(ring.members)
                self._drop(tp)
                if self._reader is not None:
                    with contextlib.suppress(KafkaError):
                        await self._reader.remove([tp])
            for member in members:
                member.ring_closed(tp)
            return
        failure = kafka_error(cause)
        failure.details.update(topic=tp.topic, partition=tp.partition)
        for member in list(self.rings[tp].members):
            member.tail_error(failure)

    async def _sweep(self, reader: Reader) -> None:
        """Close rings that nobody read for the grace period."""
        now = time.monotonic()
        idle = [
            tp
            for tp, ring in self.rings.items()
            if not ring.members and not ring.behind and ring.idle_since is not None
            if now - ring.idle_since >= conf.tail_grace_seconds
        ]
        if not idle:
            return
        async with self._lock:
            idle = [tp for tp in idle if tp in self.rings and not self.rings[tp].members and not self.rings[tp].behind]
            for tp in idle:
                self._drop(tp)
                logger.info("live tail of %s closed: no reader for %gs", tp, conf.tail_grace_seconds)
            if idle:
                await reader.remove(idle)

    def nudge(self) -> None:
        """Wake every reader on the tail, records or not (each looks at the cluster when it wakes)."""
        for member in {member for ring in self.rings.values() for member in ring.members | ring.behind}:
            member.wake()

    def _drop(self, tp: TopicPartition) -> None:
        self.rings.pop(tp, None)

    def _broadcast(self, error: KasockiError) -> None:
        """An error of the shared reader, to the readers it concerns: of the partition it names, else all."""
        named = NAMED_PARTITION.match(error.message)
        if named is not None:
            ring = self.rings.get(TopicPartition(named["topic"], int(named["partition"])))
            members = set(ring.members) if ring is not None else set()  # a partition nobody reads: nobody
        else:
            members = {member for ring in self.rings.values() for member in ring.members}
        for member in members:
            member.tail_error(error)

    # --- what the metrics read -----------------------------------------------

    def counts(self) -> tuple[int, int, int]:
        """Rings open, readers on them, readers catching up to them."""
        rings = list(self.rings.values())
        return len(rings), sum(len(r.members) for r in rings), sum(len(r.behind) for r in rings)
