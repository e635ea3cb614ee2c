"""What one connection is fed: its reader's records through its pipeline, to consume calls and the stream.

Waiting ``consume`` calls are served in arrival order before the stream takes
anything. After taking, the feed follows Kafka: error records and reader errors are
reported, lost offsets restart per the reset policy, and cluster changes found by
``assignments`` (topics gone, partitions added) are applied. Nothing of a topic that
left is handed out after its error: it is dropped when taken, emitted and answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from confluent_kafka import KafkaError as RdKafkaError

from . import assignments, metrics
from .access import Principal
from .assignments import Catalog
from .conf import conf
from .exceptions import InternalError, KafkaError, KasockiError
from .kafka import WAIT_MAX_SECONDS
from .pipeline import Pipeline
from .protocol import AssignmentRequest
from .reader import Reader
from .tailing import TailReader
from .threads import kafka_error
from .types import Delivered, Position, Record, Taken, TopicPartition
from .watch import ClusterWatch

logger = logging.getLogger(__name__)
T = TypeVar("T")

# Longest wait of an idle stream on the live tail: records and cluster changes wake it before.
IDLE_WAIT_SECONDS = 30.0
# The same stream error is reported to a client at most once per this many seconds.
ERROR_REPEAT_SECONDS = 5.0

Report = Callable[[KasockiError, str | None], Awaitable[Any]]
Spawn = Callable[[Coroutine[Any, Any, T]], "asyncio.Task[T]"]


class Feed:
    """Takes messages for one connection and keeps its reading in step with Kafka."""

    def __init__(
        self,
        sid: str,
        pipeline: Pipeline,
        catalog: Catalog,
        principal: Principal,
        report: Report,
        spawn: Spawn[Any],
        watch: ClusterWatch | None = None,
    ) -> None:
        self.sid = sid
        self.pipeline = pipeline
        self.catalog = catalog
        self.principal = principal
        self.reader: Reader | None = None
        self.requests: list[AssignmentRequest] = []
        self.assigned: list[Position] | None = None  # where each partition started (None: not subscribed)
        self.waiters: deque[asyncio.Future[Taken]] = deque()  # consume calls, in arrival order
        self.delivered = 0
        self.report = report  # sends an error to the client
        self._spawn = spawn
        self._next_check = 0.0
        # With a process-wide watch, the cluster is compared when its generation moved on, not by the clock.
        self._watch = watch
        self._checked_generation = -1
        self._last_errors: dict[tuple[Any, ...], float] = {}
        self._unreported: list[KasockiError] = []  # met by consume_at_once, which cannot report them

    def subscribed(self, requests: list[AssignmentRequest], positions: list[Position]) -> None:
        self.requests = requests
        self.assigned = positions
        self.pipeline.start_at(positions)
        self._next_check = time.monotonic() + conf.assignment_check_seconds

    def count_delivered(self, count: int) -> None:
        self.delivered += count
        metrics.DELIVERED.inc(count)

    # --- taking ---------------------------------------------------------------

    async def take(self, limit: int) -> list[Taken]:
        """Up to ``limit`` passing messages from what is buffered and what the reader has at once."""
        pipeline = self.pipeline
        taken = pipeline.take(limit)
        while len(taken) < limit and self.reader is not None:
            records = await self.reader.read(conf.consume_batch_size, 0)  # never suspends
            if not records:
                break
            pipeline.feed(records)
            taken += pipeline.take(limit - len(taken))
        return taken

    async def serve_waiters(self) -> None:
        """Give each waiting consume, oldest first, the next passing message while there is one."""
        waiters = self.waiters
        while waiters:
            if waiters[0].done():  # cancelled
                waiters.popleft()
                continue
            taken = await self.take(1)
            if not taken:
                return
            if not waiters or waiters[0].done():
                self.pipeline.give_back(taken)
                continue
            waiters.popleft().set_result(taken[0])

    async def take_for_stream(self, limit: int) -> list[Taken]:
        """What the stream may emit now: nothing while consume calls wait, else up to ``limit``."""
        await self.serve_waiters()
        taken = [] if self.waiters else await self.take(limit)
        await self.after_take("start")  # never raises: taken messages are not lost
        # A topic that left during after_take: its error went out, its messages must not.
        return self.pipeline.keep(taken)

    def consume_at_once(self) -> Delivered | None:
        """The next passing message if it is ready and nothing must be followed first; None: ``consume`` must run.

        Synchronous, for a request answered without a task of its own (server.py): it takes
        only what was read already, when no call waits before it, no Kafka error waits to be
        reported and no look at the cluster is due; else ``consume`` does it all, in order.
        """
        if self.waiters or self.reader is None or self._look_due():
            return None
        pipeline = self.pipeline
        taken = pipeline.take(1)
        if not taken:
            return None
        self._unreported.extend(self.reader.take_errors())
        if self._unreported or pipeline.error_records:  # reported by after_take, before the message
            pipeline.give_back(taken)
            return None
        self.count_delivered(1)
        return taken[0][1]

    async def consume(self) -> Delivered:
        """The next passing message, waiting for one; served before the stream takes anything."""
        first = False
        if not self.waiters:  # nobody is before this call: the next message is its own, when there is one
            taken = await self.take(1)  # never suspends
            if taken:
                try:
                    await self.after_take("consume")
                except BaseException:
                    self.pipeline.give_back(taken)  # never answered: keep it
                    raise
                topic, message, _partition, _offset = taken[0]
                if topic not in self.pipeline.gone:
                    self.count_delivered(1)
                    return message
                first = True  # its topic left meanwhile: wait for another, before calls that came since
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Taken] = loop.create_future()
        if first:
            self.waiters.appendleft(waiter)
        else:
            self.waiters.append(waiter)
        try:
            while True:
                await self.serve_waiters()
                await self.after_take("consume")
                if waiter.done():
                    topic, message, _partition, _offset = waiter.result()
                    if topic not in self.pipeline.gone:
                        self.count_delivered(1)
                        return message
                    # Its topic left after the message was handed over: wait for another, still first in line.
                    waiter = loop.create_future()
                    self.waiters.appendleft(waiter)
                    continue
                await self.wait_for_records(waiter)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.pipeline.give_back([waiter.result()])  # handed over but never answered: keep it
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self.waiters.remove(waiter)
            raise

    async def wait_for_records(self, served: asyncio.Future[Taken] | None = None) -> None:
        """Wait until the reader has records (they go to the pipeline), a short while passed, or ``served`` is."""
        if self.reader is None:
            await asyncio.sleep(WAIT_MAX_SECONDS)
            return
        if served is None:  # the stream: a cancelled read leaves its records in the reader
            await self._read_into_pipeline(self.reader)
            return
        # A consume: the stream may hand it a message before the read ends.
        read = self._spawn(self._read_into_pipeline(self.reader))
        try:
            await asyncio.wait({read, served}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            read.cancel()  # if still waiting: the reader keeps what it gets
        if read.done() and not read.cancelled():
            if served.done():
                read.exception()  # served all the same; the stream reports a failed read
            else:
                read.result()  # a failed read fails the consume, as the stream reports it

    async def _read_into_pipeline(self, reader: Reader) -> None:
        if isinstance(reader, TailReader) and self._watch is not None and self._watch.running:
            timeout = IDLE_WAIT_SECONDS  # the watch wakes the tail's readers when the cluster changed
        else:  # until the next look at the cluster is due
            timeout = max(WAIT_MAX_SECONDS, self._next_check - time.monotonic())
        # In one step with the read: whoever else waits finds the records in the pipeline.
        self.pipeline.feed(await reader.read(conf.consume_batch_size, timeout))

    # --- keeping up with Kafka ------------------------------------------------

    async def after_take(self, event: str) -> None:
        """Report Kafka errors met while reading, and follow changes of the cluster and the whitelist.

        Never raises (but for cancellation): a failure here is reported, and the messages the
        caller already took are still delivered.
        """
        errors, self._unreported = self._unreported, []
        try:
            if self.reader is not None:
                errors.extend(self.reader.take_errors())
            records = self.pipeline.take_error_records()
            for index, record in enumerate(records):
                cause = record.error()
                if cause is None:
                    continue
                if cause.code() == RdKafkaError._AUTO_OFFSET_RESET:
                    try:
                        errors.append(await self._restart(record, cause))
                    except KasockiError as exc:
                        errors.append(exc)
                        self.pipeline.error_records.extend(records[index:])  # try the reset again next time
                        break
                else:
                    failure = kafka_error(cause)
                    failure.details.update(topic=record.topic(), partition=record.partition())
                    errors.append(failure)
            if self._look_due():
                if self._watch is not None:
                    self._checked_generation = self._watch.generation  # before: a change during the look counts
                self._next_check = time.monotonic() + conf.assignment_check_seconds
                errors.extend(await self._follow_cluster())
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("sid %s: following Kafka failed", self.sid)
            errors.append(InternalError("following Kafka failed"))
        for error in errors:
            await self.report_once(error, event)

    async def report_once(self, error: KasockiError, event: str) -> None:
        """Report a stream error, but the same one at most once per ERROR_REPEAT_SECONDS."""
        now = time.monotonic()
        key = (error.name, error.message, error.details.get("code"), error.details.get("topic"))
        if now - self._last_errors.get(key, -ERROR_REPEAT_SECONDS) >= ERROR_REPEAT_SECONDS:
            self._last_errors[key] = now
            if len(self._last_errors) > 1000:  # bounded: forget the oldest
                del self._last_errors[next(iter(self._last_errors))]
            await self.report(error, event)

    async def _restart(self, record: Record, error: RdKafkaError) -> KasockiError:
        """The next offset of a partition left the log (retention): go on per the reset policy."""
        topic, partition, lost = record.topic(), record.partition(), record.offset()
        if topic is None or partition is None:  # not of one partition: nothing to restart
            return kafka_error(error)
        tp = TopicPartition(topic, partition)
        low, high = (await self.catalog.watermarks([tp]))[tp]
        position = assignments.after_lost_offset(tp, lost if lost is not None and lost >= 0 else None, low, high)
        if self.reader is not None:
            await self.reader.seek(position)
        self.pipeline.start_at([position])
        return assignments.lost_offset_error(position)

    async def _follow_cluster(self) -> list[KasockiError]:
        """Drop topics deleted or no longer allowed; add partitions that grew under whole-topic requests."""
        if self.assigned is None or self.reader is None:
            return []
        try:
            available = await self.catalog.available_topics(self.principal)
        except KafkaError as exc:
            return [exc]
        changes = assignments.compare(self.requests, self.assigned, available)
        errors: list[KasockiError] = []
        if changes.gone:
            gone = set(changes.gone)
            # Marked first: from here on nothing of these topics is handed out, whatever awaits follow.
            self.pipeline.drop_topics(gone)
            removed = [p.tp for p in self.assigned if p.topic in gone]
            self.assigned = [p for p in self.assigned if p.topic not in gone]
            await self.reader.remove(removed)
            for topic in changes.gone:
                logger.info("sid %s: topic %s went away; stopped reading it", self.sid, topic)
                errors.append(assignments.gone_error(topic, available))
        for topic, partitions in changes.grown.items():
            added = await assignments.new_partitions(topic, partitions, self.catalog)
            await self.reader.add(added)
            self.pipeline.start_at(added)
            self.assigned = sorted([*self.assigned, *added], key=lambda p: (p.topic, p.partition))
            errors.append(assignments.grown_error(topic, available[topic], added))
        return errors

    def _look_due(self) -> bool:
        """Whether the subscription must be compared with the cluster before more is handed out."""
        now = time.monotonic()
        if self._watch is not None and self._watch.current(now):
            return self._watch.generation != self._checked_generation
        return now >= self._next_check

    async def release(self) -> None:
        """The client reads nothing for a while: the reader lets go of what it can have again (a catch-up consumer)."""
        if self.reader is not None:
            await self.reader.release()

    async def close(self) -> None:
        """Close the reader (off the loop, as it does) and forget what was buffered."""
        reader, self.reader = self.reader, None
        if reader is not None:
            await reader.close()
        self.pipeline.clear()
