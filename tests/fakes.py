"""In-memory stand-ins for Kafka and for a client, behind the interfaces the connection core uses.

``FakeLog`` is a Kafka cluster in memory: topics of partitions, offsets, timestamps,
retention, deletion, added partitions, error records and a whitelist. It is the
connection's ``Catalog`` and opens ``FakeReader``s (``reader.Reader``). Records are
real ``confluent_kafka.Message`` objects, so message builders see what they see in
production. ``FakeOutbound`` records what a connection sends and has a backlog the
test sets. Nothing here sleeps: waits end when the log or the outbound changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import TIMESTAMP_CREATE_TIME, Message
from confluent_kafka import KafkaError as RdKafkaError

from kasocki_app.access import Principal
from kasocki_app.connection import Connection
from kasocki_app.exceptions import KafkaError
from kasocki_app.types import Position, TopicPartition

# How long a test waits for something the connection is expected to do at once.
EXPECTED_WITHIN = 2.0


class Changes:
    """Futures resolved at every change of something tests and readers wait on."""

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()
        self.listeners: list[Callable[[], None]] = []  # called at every change too

    def notify(self) -> None:
        for listener in self.listeners:
            listener()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    async def wait(self, timeout: float) -> None:
        """Until the next change, or ``timeout`` seconds."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait({waiter}, timeout=timeout)
        finally:
            self._waiters.discard(waiter)

    async def until(self, condition: Callable[[], bool], what: str, timeout: float = EXPECTED_WITHIN) -> None:
        """Until ``condition`` holds after some change; fails after ``timeout`` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}")
            await self.wait(left)


@dataclass
class Partition:
    """One partition's log: every record produced, of which those before ``start`` are deleted."""

    records: list[Message] = field(default_factory=list)
    start: int = 0

    @property
    def end(self) -> int:
        return len(self.records)


class FakeLog:
    """An in-memory Kafka cluster with a whitelist: the Catalog, and the factory of readers."""

    def __init__(self) -> None:
        self.topics: dict[str, list[Partition]] = {}
        self.allowed: set[str] | None = None  # None: every existing topic is allowed
        self.changes = Changes()
        self.readers: list[FakeReader] = []
        self.clock = 1_000_000  # epoch ms of the next record without a timestamp
        self.opening: asyncio.Event | None = None  # open_reader waits for it to be set
        # Assignment changes take effect at once but return only once it is set: a change made in a
        # thread, whose caller the event loop resumes later (meanwhile other reads see the change).
        self.assigning: asyncio.Event | None = None
        self.answering: asyncio.Event | None = None  # available_topics waits for it to be set (a slow cluster)
        self.asked = 0  # available_topics calls
        self.questions = Changes()  # notified at each of them

    # --- what a test does to the cluster --------------------------------------

    def create_topic(self, name: str, partitions: int = 1) -> str:
        self.topics[name] = [Partition() for _ in range(partitions)]
        self.changes.notify()
        return name

    def produce(
        self,
        topic: str,
        values: Iterable[Any],
        partition: int = 0,
        key: bytes | None = None,
        timestamp: int | None = None,
    ) -> list[int]:
        """Append records (dicts are JSON-encoded, bytes and None kept as they are); their offsets."""
        log = self.topics[topic][partition]
        offsets = []
        for value in values:
            encoded = orjson.dumps(value) if isinstance(value, dict | list | int | str) else value
            ms = timestamp if timestamp is not None else self.clock
            self.clock += 1
            offsets.append(log.end)
            log.records.append(
                Message(
                    topic=topic,
                    partition=partition,
                    offset=log.end,
                    key=key,
                    value=encoded,
                    timestamp=(TIMESTAMP_CREATE_TIME, ms),
                )
            )
        self.changes.notify()
        return offsets

    def delete_records(self, topic: str, partition: int, before: int) -> None:
        """Retention: the records before offset ``before`` leave the log."""
        self.topics[topic][partition].start = before
        self.changes.notify()

    def delete_topic(self, topic: str) -> None:
        del self.topics[topic]
        self.changes.notify()

    def add_partitions(self, topic: str, count: int) -> None:
        """Grow ``topic`` to ``count`` partitions."""
        self.topics[topic].extend(Partition() for _ in range(count - len(self.topics[topic])))
        self.changes.notify()

    def disallow(self, topic: str) -> None:
        """Take ``topic`` off the whitelist."""
        self.allowed = set(self.topics) if self.allowed is None else self.allowed
        self.allowed.discard(topic)
        self.changes.notify()

    def fail(self, topic: str, partition: int, code: int) -> None:
        """Every reader of the partition meets an error record with librdkafka's ``code`` next."""
        for reader in self.readers:
            if TopicPartition(topic, partition) in reader.positions:
                reader.pending_errors.append(
                    Message(topic=topic, partition=partition, error=RdKafkaError(code, "injected"))
                )
        self.changes.notify()

    def consumer_error(self, code: int) -> None:
        """Every reader meets an error outside its records (librdkafka's error_cb)."""
        for reader in self.readers:
            error = RdKafkaError(code, "injected")
            reader.errors.append(KafkaError(error.str(), code=error.name()))
        self.changes.notify()

    @property
    def open_readers(self) -> list[FakeReader]:
        return [reader for reader in self.readers if not reader.closed]

    # --- the Catalog ------------------------------------------------------------

    async def available_topics(self, principal: Principal, fresh: bool = False) -> dict[str, int]:
        self.asked += 1
        self.questions.notify()
        if self.answering is not None:
            await self.answering.wait()
        return {
            name: len(partitions)
            for name, partitions in self.topics.items()
            if self.allowed is None or name in self.allowed
        }

    async def watermarks(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        marks = {}
        for tp in partitions:
            log = self.topics[tp.topic][tp.partition]
            marks[tp] = (log.start, log.end)
        return marks

    async def fingerprint(self) -> Any:
        allowed = None if self.allowed is None else frozenset(self.allowed)
        return allowed, tuple(sorted((name, len(partitions)) for name, partitions in self.topics.items()))

    async def offsets_for_times(self, queries: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        found = {}
        for tp, ms in queries.items():
            log = self.topics[tp.topic][tp.partition]
            later = (r.offset() for r in log.records[log.start :] if r.timestamp()[1] >= ms)
            found[tp] = next((offset for offset in later if offset is not None), -1)
        return found

    # --- readers ----------------------------------------------------------------

    async def open_reader(self) -> FakeReader:
        if self.opening is not None:
            await self.opening.wait()
        reader = FakeReader(self)
        self.readers.append(reader)
        return reader


class FakeReader:
    """A ``reader.Reader`` over a FakeLog: each record once, in offset order per partition."""

    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.positions: dict[TopicPartition, int] = {}
        self.lost: set[TopicPartition] = set()  # reported a lost offset: waits for a seek
        self.pending_errors: list[Message] = []
        self.errors: list[KafkaError] = []
        self.closed = False
        self.closes = 0
        # The next assignment change takes effect, then its call raises this: librdkafka made the
        # change in its thread after the caller's wait for it timed out (or the caller was cancelled).
        self.change_failure: BaseException | None = None
        self.read_failure: BaseException | None = None  # the next read raises this, reading nothing

    async def assign(self, positions: Sequence[Position]) -> None:
        self.positions = {p.tp: p.offset for p in positions}
        await self._changed()

    async def add(self, positions: Sequence[Position]) -> None:
        self.positions.update({p.tp: p.offset for p in positions})
        await self._changed()

    async def remove(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self.positions.pop(tp, None)
            self.lost.discard(tp)
        await self._changed()

    async def seek(self, position: Position) -> None:
        self.positions[position.tp] = position.offset
        self.lost.discard(position.tp)
        await self._changed()

    async def _changed(self) -> None:
        """After an assignment change took effect: the caller resumes, or learns that its call failed."""
        if self.log.assigning is not None:
            await self.log.assigning.wait()
        failure, self.change_failure = self.change_failure, None
        if failure is not None:
            raise failure

    async def read(self, max_records: int, timeout: float) -> list[Message]:
        failure, self.read_failure = self.read_failure, None
        if failure is not None:
            raise failure
        records = self._take(max_records)
        if records or timeout <= 0 or self.closed:
            return records
        await self.log.changes.wait(timeout)  # librdkafka too may return early, with nothing
        return self._take(max_records)

    def _take(self, max_records: int) -> list[Message]:
        """Error records first, then records of the assigned partitions in turn, one of each at a time."""
        if self.closed:
            return []
        taken, self.pending_errors = self.pending_errors[:max_records], self.pending_errors[max_records:]
        readable = True
        while readable and len(taken) < max_records:
            readable = False
            for tp in sorted(self.positions):
                partitions = self.log.topics.get(tp.topic)
                if len(taken) == max_records or tp in self.lost or partitions is None:
                    continue  # a deleted topic: librdkafka reports it outside the records
                log, offset = partitions[tp.partition], self.positions[tp]
                if offset < log.start:
                    error = RdKafkaError(RdKafkaError._AUTO_OFFSET_RESET, "offset out of range")
                    taken.append(Message(topic=tp.topic, partition=tp.partition, offset=offset, error=error))
                    self.lost.add(tp)
                elif offset < log.end:
                    taken.append(log.records[offset])
                    self.positions[tp] = offset + 1
                    readable = True
        return taken

    def take_errors(self) -> list[KafkaError]:
        errors, self.errors = self.errors, []
        return errors

    async def release(self) -> None:
        """A consumer of its own keeps everything (as kafka.KafkaSource)."""

    async def close(self) -> bool:
        self.closes += 1
        self.closed = True
        return True


class FakeOutbound:
    """What a connection sends, in order; ``backlog_bytes`` is what the client has not read yet."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.backlog_bytes = 0
        self.probes = 0  # backlog() calls: how a test knows the stream looked at the client
        self.disconnected = False
        self.aborted = False
        self.changes = Changes()
        self.hold: asyncio.Event | None = None  # emit, once queued, waits for it to be set (a send that blocks)
        self.held = 0  # sends that waited for ``hold``

    async def emit(self, event: str, data: Any) -> None:
        # As the client sees it: messages of a live tail arrive encoded once (orjson fragments).
        data = orjson.loads(orjson.dumps(data)) if event in ("message", "messages") else data
        self.events.append((event, data))  # queued for the client, in order, as engine.io queues it
        self.changes.notify()
        if self.hold is not None and event in ("message", "messages"):
            self.held += 1
            self.changes.notify()
            await self.hold.wait()
        await asyncio.sleep(0)  # a send may let other tasks run, as a socket's does

    async def emit_message(self, taken: Any) -> None:
        await self.emit("message", taken[1])

    def backlog(self) -> int:
        self.probes += 1
        self.changes.notify()
        return self.backlog_bytes

    async def disconnect(self) -> None:
        self.disconnected = True
        self.changes.notify()

    async def abort(self) -> None:
        self.aborted = True
        self.changes.notify()

    # --- what a test reads ------------------------------------------------------

    def messages(self) -> list[dict[str, Any]]:
        """Every message sent, by ``message`` or within ``messages``, in order."""
        found: list[dict[str, Any]] = []
        for event, data in self.events:
            if event == "message":
                found.append(data)
            elif event == "messages":
                found.extend(data)
        return found

    def errors(self) -> list[dict[str, Any]]:
        return [data for event, data in self.events if event == "err"]

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        await self.changes.until(condition, what)


async def settle() -> None:
    """Let every task that can run reach the point where it waits for something outside."""
    for _ in range(50):
        await asyncio.sleep(0)


def decoded(message: Any) -> Any:
    """A message as the client decodes it (a live tail's are encoded JSON already)."""
    return orjson.loads(orjson.dumps(message)) if isinstance(message, orjson.Fragment) else message


def offsets_of(messages: Iterable[Any]) -> list[tuple[str, int, int]]:
    found = [decoded(m)["_kafka"] for m in messages]
    return [(k["topic"], k["partition"], k["offset"]) for k in found]


def emit(connection: Connection, verb: str, *args: Any) -> asyncio.Task[Any]:
    """A client event, handled as the namespace handles it: its own task, owned while it runs."""

    async def handle() -> Any:
        async with connection.handling():
            action: Coroutine[Any, Any, Any] | Any = getattr(connection, verb)(*args)
            result = await action if asyncio.iscoroutine(action) else action
            # An ack as the client decodes it (a consume's message may be encoded JSON already).
            return decoded(result)

    return asyncio.ensure_future(handle())
