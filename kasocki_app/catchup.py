"""One connection's catch-up reader on the live tail: a consumer of its own for the partitions behind their rings.

``tailing.TailReader`` decides which partitions are behind and hands records out; a
``CatchUp`` keeps one private reader (a ``kafka.KafkaSource`` within KASOCKI_MAX_CONSUMERS)
assigned those partitions from their next offsets, and says which of its records may be
handed out. What it brings of a partition is trusted only while the partition is assigned
to it from where the connection wants it; everything else is *stale*, dropped until the
partition is assigned again at its next offset:

* a partition that left the catch-up (handed over, seeked, removed) while assigned to it;
* a partition behind again after this reader read it (demoted, a ring closed): a reassigned
  librdkafka consumer may still hand over records of its old assignment (what a wait under
  way fetched, a cancelled read's), from further on than the partition's next offset;
* every partition of a reader whose assignment change failed or was cancelled: librdkafka
  may make the change anyway, in its thread after the call timed out, so where the reader
  reads from is not known.

A reader with a stale partition behind, or a failed change, is replaced: closed, and a new
one is assigned what is behind at its next offsets. What a private read brings is kept the
moment it comes (``carried``), so that it is handed out before anything read after it, even
when its caller resumes later or never.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from .exceptions import KafkaError, TooManyConsumersError
from .reader import Reader, ReaderFactory
from .types import Position, Readable, TopicPartition

logger = logging.getLogger(__name__)

# The partitions behind and their next offsets, as they are when asked (they move while a change waits).
Behind = Callable[[], dict[TopicPartition, int]]


class CatchUp:
    """The private reader of one connection's partitions behind the tail, and which of its records are wanted."""

    def __init__(self, open_private: ReaderFactory) -> None:
        self._open_private = open_private
        self.reader: Reader | None = None
        self.carried: list[Readable] = []  # brought by the reader's reads, not yet handed out
        self._has: set[TopicPartition] = set()  # assigned to the reader (or an assignment of them was asked)
        self._stale: set[TopicPartition] = set()
        self._read_before: set[TopicPartition] = set()  # ever assigned to the reader now open
        self._unsure = False  # an assignment change failed: what the reader reads from is not known
        self._errors: list[KafkaError] = []
        self._lock = asyncio.Lock()  # changes of the reader, one at a time
        self._closed = False

    def trusts(self, tp: TopicPartition) -> bool:
        """Whether what the reader brings of ``tp`` may be handed out (``tp`` being behind)."""
        return tp not in self._stale

    def left(self, tp: TopicPartition) -> None:
        """``tp`` is no longer read from here (handed over, seeked, removed)."""
        if tp in self._has:
            self._stale.add(tp)

    def entered(self, tp: TopicPartition) -> None:
        """``tp`` is behind (again): nothing of it is wanted from a reader that read it before."""
        if tp in self._has or tp in self._read_before:
            self._stale.add(tp)

    def take_carried(self, room: int) -> list[Readable]:
        carried, self.carried = self.carried[:room], self.carried[room:]
        return carried

    def take_errors(self) -> list[KafkaError]:
        errors, self._errors = self._errors, []
        if self.reader is not None:
            errors += self.reader.take_errors()
        return errors

    # --- reading ----------------------------------------------------------------

    async def read_at_once(self, limit: int, holding: bool) -> Sequence[Readable]:
        """What the reader has now, without suspending.

        A failure is raised, unless the caller is ``holding`` records it took already (their
        offsets are handed out): then it goes to the client and the records go out.
        """
        if self.reader is None:
            return []
        try:
            return await self.reader.read(limit, 0)
        except Exception as exc:
            if not holding:
                raise
            self._errors.append(_kafka_error(exc))
            return []

    async def wait(self, reader: Reader, max_records: int, timeout: float) -> None:
        """Wait for ``reader``'s next records, kept at once for the next take; a failure goes to the client."""
        try:
            records = await reader.read(max_records, timeout)
        except asyncio.CancelledError:
            raise  # the reader keeps what its wait brings, for the next read
        except Exception as exc:
            self._errors.append(_kafka_error(exc))
            return
        if reader is self.reader:  # not from a reader replaced meanwhile: the new one reads from the next offsets
            self.carried.extend(records)

    # --- the reader's assignment --------------------------------------------------

    async def sync(self, behind: Behind, open_reader: bool = True) -> None:
        """Open, change, replace or close the reader for the partitions ``behind()``, from their next offsets.

        Without ``open_reader``, only a reader already open is changed: a subscription is not read
        until a read waits for it, and an idle one holds no consumer.
        """
        async with self._lock:
            if self._closed:
                return
            wanted = behind()
            if self.reader is not None and (not wanted or self._unsure or any(tp in self._stale for tp in wanted)):
                await self._close_reader()
            if not wanted or (self.reader is None and not open_reader):
                return
            if self.reader is None:
                try:
                    self.reader = await self._open_private()
                except TooManyConsumersError:
                    return  # none free: the next read that waits tries again (the stream waits its turn)
                except KafkaError as exc:
                    self._errors.append(exc)
                    return
            reader = self.reader
            now = behind()
            unwanted = sorted(tp for tp in self._has if tp in self._stale or tp not in now)
            if unwanted:
                await self._change(reader.remove(unwanted))
                self._has.difference_update(unwanted)
                now_behind = behind()  # demoted while it was removed: still stale, the reader is replaced next time
                self._stale.difference_update(tp for tp in unwanted if tp not in now_behind)
            # Their next offsets as they are now: anything handed out meanwhile moved them.
            added = [Position(tp.topic, tp.partition, o) for tp, o in sorted(behind().items()) if tp not in self._has]
            added = [position for position in added if position.tp not in self._stale]
            if added:
                # Counted as assigned before the call: a change that fails may be made all the same,
                # and one handed over while it is made is stale at once.
                self._has.update(p.tp for p in added)
                self._read_before.update(p.tp for p in added)
                await self._change(reader.add(added))

    async def _change(self, change: Awaitable[None]) -> None:
        try:
            await change
        except BaseException:
            # Made, not made or made later (a timed-out call's thread goes on): the reader's assignment
            # is not known. Nothing more of it is handed out, and it is replaced at the next sync.
            self._unsure = True
            self._stale.update(self._has)
            raise

    async def _close_reader(self) -> None:
        reader, self.reader = self.reader, None
        self._has.clear()
        self._stale.clear()
        self._read_before.clear()
        self._unsure = False
        self.carried.clear()
        if reader is not None:
            await reader.close()

    async def release(self) -> None:
        """Close the reader and what it prefetched (records are read again from the next offsets)."""
        async with self._lock:
            if self.reader is not None:
                await self._close_reader()

    async def close(self) -> bool:
        self._closed = True
        async with self._lock:
            reader, self.reader = self.reader, None
            self.carried.clear()
            return True if reader is None else await reader.close()


def _kafka_error(failure: BaseException) -> KafkaError:
    if isinstance(failure, KafkaError):
        return failure
    logger.error("a catch-up read failed", exc_info=failure)
    return KafkaError(f"reading Kafka failed: {failure!r}", code="_UNKNOWN")
