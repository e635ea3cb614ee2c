"""One connection's reader over the live tail: rings at the head, a consumer of its own while behind them.

Each assigned partition is in one of two states, and moves between them on the event
loop, between two records:

* **on the tail**: its next offset is in the partition's ring; records come from the
  ring, shared with every other reader there;
* **behind**: its next offset is older than the ring's oldest record (a position in the
  past, or a reader that fell behind the ring: *demoted*). A private catch-up reader
  (today's per-connection consumer, within KASOCKI_MAX_CONSUMERS) reads the partition
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
from .exceptions import KafkaError, KasockiError, TooManyConsumersError
from .reader import Reader, ReaderFactory
from .ring import Entry, Ring
from .tail import LiveTail
from .types import Position, Readable, TopicPartition

logger = logging.getLogger(__name__)


class TailReader:
    """A connection's partitions, each on the live tail or catching up on a private reader."""

    def __init__(self, tail: LiveTail, open_private: ReaderFactory) -> None:
        self._tail = tail
        self._open_private = open_private
        self._next: dict[TopicPartition, int] = {}
        self._on_tail: dict[TopicPartition, Ring] = {}
        self._behind: set[TopicPartition] = set()
        self._private: Reader | None = None
        self._private_has: set[TopicPartition] = set()  # assigned to the private reader
        # Assigned to it, but from a position no longer wanted (handed over, seeked, demoted again):
        # what it reads of them is dropped until they are reassigned at the next offset.
        self._stale: set[TopicPartition] = set()
        self._read_before: set[TopicPartition] = set()  # ever assigned to the private reader now open
        self._errors: list[KafkaError] = []
        self._carried: list[Readable] = []  # brought by a private read whose caller was cancelled
        self._waiters: list[asyncio.Future[None]] = []  # reads waiting for the rings
        self._lock = asyncio.Lock()  # changes of the private reader, one at a time
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
        await self._sync_private()

    async def remove(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            tp = TopicPartition(*tp)
            self._leave(tp)
            self._next.pop(tp, None)
        await self._sync_private()

    async def seek(self, position: Position) -> None:
        self._leave(position.tp)
        self._next[position.tp] = position.offset
        self._place(position.tp)
        await self._sync_private()

    async def read(self, max_records: int, timeout: float) -> list[Readable]:
        if self._closed:
            return []
        taken = await self._take(max_records)
        if taken or timeout <= 0:
            return taken
        if self._behind or self._private is not None:
            await self._sync_private()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        private = self._private if self._behind else None
        if private is None:  # the common case, every reader on the tail: one future and one timer
            timer = loop.call_later(timeout, _release, waiter)
            try:
                await waiter
            finally:
                timer.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            return await self._take(max_records)
        read = asyncio.ensure_future(private.read(max_records, timeout))
        try:
            waits: set[asyncio.Future[Any]] = {waiter, read}
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            if not read.done():
                read.cancel()  # the private reader keeps what its wait brings, for the next read
                await asyncio.wait({read})
            self._keep(read)  # also when this read is cancelled: what it brought is the next read's
        return await self._take(max_records)

    def _keep(self, read: asyncio.Future[Sequence[Readable]]) -> None:
        """What a finished private read brought, for the next take; its failure goes to the client."""
        if read.cancelled():
            return
        failure = read.exception()
        if failure is None:
            self._carried.extend(read.result())
            return
        if not isinstance(failure, KafkaError):
            logger.error("a catch-up read failed", exc_info=failure)
            failure = KafkaError(f"reading Kafka failed: {failure!r}", code="_UNKNOWN")
        self._errors.append(failure)

    def take_errors(self) -> list[KafkaError]:
        errors, self._errors = self._errors, []
        if self._private is not None:
            errors += self._private.take_errors()
        return errors

    async def close(self) -> bool:
        if self._closed:
            return True
        self._closed = True
        for tp in list(self._next):
            self._leave(tp)
        self._next.clear()
        async with self._lock:
            private, self._private = self._private, None
            self._carried.clear()
            return True if private is None else await private.close()

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
            if ring is not None:
                ring.behind.add(self)

    def _join(self, tp: TopicPartition, ring: Ring) -> None:
        self._behind.discard(tp)
        if tp in self._private_has:
            self._stale.add(tp)
        ring.behind.discard(self)
        ring.members.add(self)
        ring.idle_since = None
        self._on_tail[tp] = ring

    def _demote(self, tp: TopicPartition) -> None:
        ring = self._on_tail.pop(tp)
        ring.members.discard(self)
        self._left(ring)
        self._behind.add(tp)
        if self._tail.find(tp) is ring:
            ring.behind.add(self)
        metrics.DEMOTIONS.inc()

    def _leave(self, tp: TopicPartition) -> None:
        if tp in self._private_has:
            self._stale.add(tp)
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
        if self._carried and len(taken) < limit:
            room = limit - len(taken)
            carried, self._carried = self._carried[:room], self._carried[room:]
            taken += self._accept(carried)
        if len(taken) < limit and self._private is not None and self._behind:
            taken += self._accept(await self._private.read(limit - len(taken), 0))  # never suspends
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
            if tp not in self._behind or tp in self._stale:
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

    async def _sync_private(self) -> None:
        """Open, change or close the private reader for the partitions behind."""
        async with self._lock:
            if self._closed:
                return
            behind = {tp: self._next[tp] for tp in self._behind}
            missing = [tp for tp in behind if self._tail.find(tp) is None]
            if missing:
                with contextlib.suppress(KasockiError):
                    await self._tail.open(missing)  # a ring closed after an error: catch up to a new one
                for tp in missing:
                    ring = self._tail.find(tp)
                    if ring is not None:
                        ring.behind.add(self)
            if self._private is not None and any(tp in self._read_before for tp in behind.keys() - self._private_has):
                behind_again = True  # read before by this consumer: what it still holds of them is not wanted
            else:
                behind_again = any(tp in self._stale for tp in behind)
            if not behind or behind_again:
                # Closed, and a new one opened for what is behind again: a consumer reassigned a
                # partition may still hand over records it read under the old assignment (a wait's,
                # a cancelled read's), and those would skip what lies between.
                await self._close_private()
                if not behind:
                    return
            if self._private is None:
                try:
                    self._private = await self._open_private()
                except TooManyConsumersError:
                    return  # none free: the next read that waits tries again (the stream waits its turn)
                except KafkaError as exc:
                    self._errors.append(exc)
                    return
            stale = sorted(self._stale | {tp for tp in self._private_has if tp not in behind})
            if stale:
                await self._private.remove(stale)
                self._private_has.difference_update(stale)
                self._stale.difference_update(stale)
            # Their next offsets as they are now: anything handed out meanwhile moved them.
            added = [Position(tp.topic, tp.partition, self._next[tp]) for tp in self._behind - self._private_has]
            if added:
                await self._private.add(added)
                self._private_has.update(p.tp for p in added)
                self._read_before.update(p.tp for p in added)
                # Handed over while the assignment was being made: not wanted from this consumer any more.
                self._stale.update(p.tp for p in added if p.tp not in self._behind)

    async def _close_private(self) -> None:
        private, self._private = self._private, None
        self._private_has.clear()
        self._stale.clear()
        self._read_before.clear()
        self._carried.clear()
        if private is not None:
            await private.close()


def _release(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
