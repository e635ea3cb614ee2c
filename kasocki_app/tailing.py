"""One connection's reader over the live tail: rings at the head, a consumer of its own while behind them.

Each assigned partition is in one of two states, and moves between them on the event
loop, between two records:

* **on the tail**: its next offset is in the partition's ring; records come from the
  ring, shared with every other reader there;
* **behind**: its next offset is older than the ring's oldest record (a position in the
  past, or a reader that fell behind the ring: *demoted*). A private catch-up reader
  (``catchup.py``: a consumer of its own, within KASOCKI_MAX_CONSUMERS) reads the partition
  until its next offset enters the ring: *handover*; the private reader is closed when no
  partition needs it.

One next offset per partition decides what is handed out, wherever it comes from:
nothing twice, nothing skipped, offsets strictly increasing. Implements ``reader.Reader``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from . import metrics
from .catchup import CatchUp
from .exceptions import KafkaError, KasockiError
from .kafka import WAIT_MAX_SECONDS
from .reader import ReaderFactory
from .ring import Entry, Ring
from .tail import LiveTail
from .types import Position, Readable, TopicPartition

logger = logging.getLogger(__name__)


class TailReader:
    """A connection's partitions, each on the live tail or catching up on a private reader."""

    def __init__(self, tail: LiveTail, open_private: ReaderFactory) -> None:
        self._tail = tail
        self._catchup = CatchUp(open_private)  # the private reader of the partitions behind
        self._next: dict[TopicPartition, int] = {}
        self._on_tail: dict[TopicPartition, Ring] = {}
        self._behind: set[TopicPartition] = set()
        self._errors: list[KafkaError] = []  # the shared reader's, for the client
        self._waiters: list[asyncio.Future[None]] = []  # reads waiting for the rings
        self._closed = False

    # --- what the admin and the metrics read ----------------------------------

    def state(self, tp: TopicPartition) -> str:
        """``tail`` or ``catch-up`` (``""`` for a partition not read)."""
        return "tail" if tp in self._on_tail else "catch-up" if tp in self._behind else ""

    @property
    def catching_up(self) -> bool:
        return bool(self._behind)

    # --- reader.Reader ---------------------------------------------------------

    async def assign(self, positions: Sequence[Position]) -> None:
        await self.remove(list(self._next))
        await self.add(positions)

    async def add(self, positions: Sequence[Position]) -> None:
        await self._tail.open([p.tp for p in positions])
        for position in positions:
            self._next[position.tp] = position.offset
            self._place(position.tp)
        await self._sync_private(open_reader=False)

    async def remove(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            tp = TopicPartition(*tp)
            self._leave(tp)
            self._next.pop(tp, None)
        await self._sync_private(open_reader=False)

    async def seek(self, position: Position) -> None:
        self._leave(position.tp)
        self._next[position.tp] = position.offset
        self._place(position.tp)
        await self._sync_private(open_reader=False)

    async def read(self, max_records: int, timeout: float) -> list[Readable]:
        if self._closed:
            return []
        taken = await self._take(max_records)
        if taken or timeout <= 0:
            return taken
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        # Waiting from here on, before anything that suspends: a ring growing while the private reader
        # is synced (its close can take a while) releases this wait instead of waking nobody.
        self._waiters.append(waiter)
        try:
            catchup = self._catchup
            if self._behind or catchup.reader is not None:
                await self._sync_private()
                if waiter.done():  # a ring grew meanwhile: take it, starting no wait of the private reader
                    return await self._take(max_records)
            private = catchup.reader if self._behind else None
            if private is None:  # the common case, every reader on the tail: one future and one timer
                timer = loop.call_later(timeout, _release, waiter)
                try:
                    await waiter
                finally:
                    timer.cancel()
                return await self._take(max_records)
            # What it brings is kept the moment it comes (not when this read resumes): a take meanwhile,
            # of a consume, must not hand out what the reader read after it first.
            # In slices: librdkafka's wait runs on in its thread when this read is cancelled, and the
            # consumer's close (after a handover, say) waits for it; a stop must not wait that long.
            read = asyncio.ensure_future(catchup.wait(private, max_records, min(timeout, WAIT_MAX_SECONDS)))
            try:
                waits: set[asyncio.Future[Any]] = {waiter, read}
                await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not read.done():
                    read.cancel()  # the private reader keeps what its wait brings, for the next read
                    await asyncio.wait({read})
            return await self._take(max_records)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def take_errors(self) -> list[KafkaError]:
        errors, self._errors = self._errors, []
        return errors + self._catchup.take_errors()

    async def release(self) -> None:
        await self._catchup.release()

    async def close(self) -> bool:
        if self._closed:
            return True
        self._closed = True
        for tp in list(self._next):
            self._leave(tp)
        self._next.clear()
        return await self._catchup.close()

    # --- the tail's calls (tail.Listener) -------------------------------------

    def wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            _release(waiter)

    def tail_error(self, error: KasockiError) -> None:
        if isinstance(error, KafkaError) and len(self._errors) < 100:
            self._errors.append(error)

    def ring_closed(self, tp: TopicPartition) -> None:
        if tp in self._on_tail:
            self._demote(tp)
        self.wake()

    # --- moving between the tail and catching up --------------------------------

    def _place(self, tp: TopicPartition) -> None:
        ring = self._tail.find(tp)
        if ring is not None and ring.holds(self._next[tp]):
            self._join(tp, ring)
        else:
            self._behind.add(tp)
            self._catchup.entered(tp)
            if ring is not None:
                ring.behind.add(self)

    def _join(self, tp: TopicPartition, ring: Ring) -> None:
        self._behind.discard(tp)
        self._catchup.left(tp)
        ring.behind.discard(self)
        ring.members.add(self)
        ring.idle_since = None
        self._on_tail[tp] = ring

    def _demote(self, tp: TopicPartition) -> None:
        ring = self._on_tail.pop(tp)
        ring.members.discard(self)
        self._left(ring)
        self._behind.add(tp)
        self._catchup.entered(tp)  # from a private reader that read it before, nothing more of it
        if self._tail.find(tp) is ring:
            ring.behind.add(self)
        metrics.DEMOTIONS.inc()

    def _leave(self, tp: TopicPartition) -> None:
        self._catchup.left(tp)
        ring = self._on_tail.pop(tp, None)
        if ring is not None:
            ring.members.discard(self)
            self._left(ring)
        if tp in self._behind:
            self._behind.discard(tp)
            found = self._tail.find(tp)
            if found is not None:
                found.behind.discard(self)
                self._left(found)

    @staticmethod
    def _left(ring: Ring) -> None:
        if not ring.members and not ring.behind:
            ring.idle_since = time.monotonic()  # the tail closes it after the grace period

    async def _take(self, limit: int) -> list[Readable]:
        """What the rings and the private reader have at once, up to ``limit``; never suspends."""
        taken: list[Readable] = []
        positions = self._next
        fallen: list[TopicPartition] = []
        for tp, ring in self._on_tail.items():
            offset = positions[tp]
            if offset >= ring.high:
                continue  # nothing new: the common case of a wake for another partition
            if not ring.holds(offset):
                fallen.append(tp)  # behind the ring's oldest record
                continue
            entries: list[Entry] = ring.since(offset, limit - len(taken))
            if entries:
                taken.extend(entries)
                positions[tp] = entries[-1].offset + 1
                if len(taken) >= limit:
                    break
        for tp in fallen:
            self._demote(tp)
        for tp in list(self._behind):  # caught up without a record: the ring reached back to it
            found = self._tail.find(tp)
            if found is not None and found.holds(positions[tp]):
                self._hand_over(tp, found)
        catchup = self._catchup
        if catchup.carried and len(taken) < limit:
            taken += self._accept(catchup.take_carried(limit - len(taken)))
        # Only once all it brought is out: records dropped on the way (a handover) can leave room with some
        # still carried, and what the consumer reads now comes after them.
        if len(taken) < limit and self._behind and not catchup.carried:
            # What was taken above is handed out whatever this read meets: its offsets moved on.
            taken += self._accept(await catchup.read_at_once(limit - len(taken), holding=bool(taken)))
        return taken

    def _accept(self, records: Sequence[Readable]) -> list[Readable]:
        """Records of the private reader still wanted; hands a partition over once it reached its ring."""
        accepted: list[Readable] = []
        for record in records:
            if isinstance(record, Entry):
                continue
            topic, partition, offset = record.topic(), record.partition(), record.offset()
            if topic is None or partition is None:
                accepted.append(record)  # an error of no partition: the connection reports it
                continue
            tp = TopicPartition(topic, partition)
            if tp not in self._behind or not self._catchup.trusts(tp):
                continue  # handed over, removed or not yet reassigned: not from where it is wanted
            if record.error() is not None:
                accepted.append(record)
                continue
            if offset is None or offset < self._next[tp]:
                continue
            self._next[tp] = offset + 1
            accepted.append(record)
            found = self._tail.find(tp)
            if found is not None and found.holds(offset + 1):
                self._hand_over(tp, found)
        return accepted

    def _hand_over(self, tp: TopicPartition, ring: Ring) -> None:
        self._join(tp, ring)
        metrics.HANDOVERS.inc()

    async def _sync_private(self, open_reader: bool = True) -> None:
        """Rings for the partitions behind, and the private reader for them (``catchup.py``).

        Assignment changes (``open_reader`` False) only change a private reader already open: one is
        opened by the first read that waits, so an idle subscription holds no consumer.
        """
        if self._closed:
            return
        missing = [tp for tp in self._behind if self._tail.find(tp) is None]
        if missing:
            with contextlib.suppress(KasockiError):
                await self._tail.open(missing)  # a ring closed after an error: catch up to a new one
            for tp in missing:
                ring = self._tail.find(tp)
                if ring is not None and tp in self._behind:
                    ring.behind.add(self)
        await self._catchup.sync(lambda: {tp: self._next[tp] for tp in self._behind}, open_reader)


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
