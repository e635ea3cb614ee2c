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

The pump never waits for anything but its reads: it closes rings at once, and their
partitions' removal from the shared reader waits for the lock that orders every change
of the shared reader (held across Kafka calls), taken by the next ``open`` or by a task
of the tail's own. The rules are in docs/architecture.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
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
REMOVER_NAME = "kasocki-live-tail-removals"
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
        # Partitions whose rings the pump closed, still assigned to the shared reader: removed under the
        # lock by the next open (before its add) or by the remover task, whichever takes the lock first.
        self._closed_rings: set[TopicPartition] = set()
        self._remover: asyncio.Task[None] | None = None
        # Assignments of each partition to the shared reader, and replacements of the reader: whether a
        # mark looked up before the lock is still good (_unsure).
        self._added: Counter[TopicPartition] = Counter()
        self._retired = 0
        # Every change of the shared reader (made, replaced, assigned, unassigned), one at a time and in
        # order. Held across Kafka calls, so the pump never waits for it (docs/architecture.md).
        self._lock = asyncio.Lock()
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
        wanted = sorted(set(partitions))
        # Looked up before the lock: a ring starts where the shared reader is assigned, so a mark looked up
        # earlier is still exact, unless the shared reader had the partition meanwhile (see _unsure).
        unheld = [tp for tp in wanted if not self._held(tp)]
        seen = (self._retired, {tp: self._added[tp] for tp in unheld})
        marks = await self._catalog.watermarks(unheld) if unheld else {}
        async with self._lock:
            missing = [tp for tp in wanted if tp not in self.rings]
            if not missing or self.closed:
                return
            key = self._reader_key()
            if self._reader is not None and key != self._made_with:
                await self._retire()
                missing = wanted
            if self._reader is None:
                self._reader = await self._open_reader()
                self._made_with = key
            # Before any add: a closed ring's removal made after its reopen's add would undo it.
            await self._apply_removals()
            unsure = [tp for tp in missing if tp not in marks or self._unsure(tp, seen)]
            if unsure:  # a ring closed and reopened at once, say: looked up after the removal
                marks.update(await self._catalog.watermarks(unsure))
            opening = {tp: Ring(tp, marks[tp][1], conf.tail_records, conf.tail_bytes) for tp in missing}
            # Filled from the moment the shared reader is assigned them: the pump may read their first
            # records before this call resumes, and a ring made after that would lack them.
            self._opening.update(opening)
            self._added.update(list(opening))  # (a mapping would add its values)
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

    def _held(self, tp: TopicPartition) -> bool:
        """Whether the shared reader may have ``tp`` assigned (or be about to)."""
        return tp in self.rings or tp in self._opening or tp in self._closed_rings

    def _unsure(self, tp: TopicPartition, seen: tuple[int, dict[TopicPartition, int]]) -> bool:
        """Whether the shared reader had ``tp`` since its mark was looked up (``seen`` then).

        What that assignment fetched may still come after its removal (``reader.py``), from further
        on than the mark: a ring starting at the mark would take it and skip what lies between.
        """
        retired, added = seen
        return retired != self._retired or added.get(tp) != self._added[tp]

    async def _retire(self) -> None:
        """Close every ring and the shared reader; the readers of the rings go on by themselves."""
        logger.info("the Kafka settings changed: the live tail's reader is replaced")
        rings, self.rings = self.rings, {}
        reader, self._reader = self._reader, None
        self._closed_rings.clear()  # removals from the reader closed here
        self._retired += 1
        for tp, ring in rings.items():
            for member in list(ring.members):
                member.ring_closed(tp)
        if reader is not None:
            await reader.close()

    async def close(self) -> None:
        """Stop the pump and close the shared reader (the service's shutdown)."""
        self.closed = True
        tasks = [task for task in (self._pump, self._remover) if task is not None]
        self._pump = self._remover = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
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
                    self._failed(tp, record)
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
            self._sweep()

    def _failed(self, tp: TopicPartition, record: Record) -> None:
        """An error record of a tailed partition: tell its readers; close the ring if it cannot go on."""
        cause = record.error()
        assert cause is not None
        if cause.code() == RdKafkaError._AUTO_OFFSET_RESET:
            # Each reader goes on from its own position with a consumer of its own, where the
            # reset policy applies to it alone.
            logger.warning("live tail of %s closed: %s", tp, cause.str())
            members = list(self.rings[tp].members)
            self._close_ring(tp)
            for member in members:
                member.ring_closed(tp)
            return
        failure = kafka_error(cause)
        failure.details.update(topic=tp.topic, partition=tp.partition)
        for member in list(self.rings[tp].members):
            member.tail_error(failure)

    def _sweep(self) -> None:
        """Close rings that nobody read for the grace period."""
        now = time.monotonic()
        idle = [
            tp
            for tp, ring in self.rings.items()
            if not ring.members and not ring.behind and ring.idle_since is not None
            if now - ring.idle_since >= conf.tail_grace_seconds
        ]
        for tp in idle:
            self._close_ring(tp)
            logger.info("live tail of %s closed: no reader for %gs", tp, conf.tail_grace_seconds)

    def _close_ring(self, tp: TopicPartition) -> None:
        """The pump's close of a ring, at once; its partition's removal from the shared reader waits for the lock."""
        self._drop(tp)
        self._closed_rings.add(tp)
        self._schedule_removals()

    def _schedule_removals(self) -> None:
        if not self.closed and (self._remover is None or self._remover.done()):
            self._remover = process_task(self._remove_closed(), REMOVER_NAME)

    async def _remove_closed(self) -> None:
        """The remover task: the closed rings' removals, unless an open made them first."""
        while self._closed_rings and not self.closed:
            async with self._lock:
                await self._apply_removals()

    async def _apply_removals(self) -> None:
        """Remove the closed rings' partitions from the shared reader (under the lock)."""
        assert self._lock.locked()
        gone, self._closed_rings = sorted(self._closed_rings), set()
        if not gone or self._reader is None:
            return
        try:
            await self._reader.remove(gone)
        except KafkaError as exc:
            # Made or not: a record of them comes to no ring, and a reopen's add that fails on one
            # still assigned is undone, which removes it.
            logger.warning("the live tail could not let go of %s: %s", ", ".join(map(str, gone)), exc.message)
        except Exception:
            logger.exception("the live tail could not let go of %s", ", ".join(map(str, gone)))
        except BaseException:
            # Cancelled (the open that applied them was: its client left): made or not, tried again.
            self._closed_rings.update(gone)
            self._schedule_removals()
            raise

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
