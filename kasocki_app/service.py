"""Per-connection state and tasks: subscribe, filter, consume, start/stop, and cleanup.

A ``Connection`` owns everything one socket.io client uses: its source of Kafka
records (created lazily at the first subscribe), its filter, its stream task and
the handler tasks in flight. ``close()`` cancels and awaits all of them and
closes the source off the event loop, whatever moment the client leaves at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from confluent_kafka import Message
from django.utils.module_loading import import_string

from . import topics
from .conf import conf
from .exceptions import (
    AlreadyStartedError,
    AlreadySubscribedError,
    InternalError,
    InvalidAssignmentError,
    KafkaError,
    KasockiError,
    NotSubscribedError,
    PartitionNotAvailableError,
    TopicNotAvailableError,
)
from .filters import Predicate, compile_filters
from .kafka import KafkaSource, cluster, kafka_error
from .messages import UndecodableMessage
from .protocol import AssignmentRequest, StartOptions, parse_start, parse_subscription

logger = logging.getLogger(__name__)

Emit = Callable[[str, Any], Awaitable[None]]

# The same stream error is reported to a client at most once per this many seconds.
ERROR_REPEAT_SECONDS = 5.0


class Source(Protocol):
    """Where a connection's records come from; KafkaSource is the one implementation today."""

    async def assign(self, positions: list[tuple[str, int, int]]) -> None: ...

    def poll(self, max_messages: int) -> list[Message]: ...

    def take_errors(self) -> list[KafkaError]: ...

    async def close(self) -> bool: ...


SourceFactory = Callable[[], Awaitable[Source]]


class Connection:
    """One socket.io client's subscription, filter and streams."""

    def __init__(self, sid: str, emit: Emit, source_factory: SourceFactory = KafkaSource.create) -> None:
        self.sid = sid
        self.connected_at = time.time()
        self.assignments: list[dict[str, Any]] | None = None
        self.filters: dict[str, Any] | None = None
        self.delivered = 0
        self.skipped: Counter[str] = Counter()
        self.closed = False
        self._emit = emit
        self._source_factory = source_factory
        self._source: Source | None = None
        self._subscribing = False
        self._predicate: Predicate | None = None
        self._build = import_string(conf.message_builder)
        self._records: deque[Message] = deque()  # polled from Kafka, not yet decoded
        self._ready: deque[dict[str, Any]] = deque()  # built and filtered, taken back by stop()
        self._streaming = False
        self._stream_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending_errors: list[Message] = []  # error records met while polling
        self._last_errors: dict[tuple[Any, ...], float] = {}

    # --- task ownership -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def handling(self) -> AsyncIterator[None]:
        """Register the running handler task so that close() can cancel it."""
        task = asyncio.current_task()
        if self.closed or task is None:
            raise asyncio.CancelledError
        self._tasks.add(task)
        try:
            yield
        finally:
            self._tasks.discard(task)

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """Start a background task owned by this connection."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Release everything: cancel and await tasks, close the source off the loop."""
        if self.closed:
            return
        self.closed = True
        self._streaming = False
        current = asyncio.current_task()
        tasks = [t for t in (*self._tasks, self._stream_task) if t is not None and t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        if self._source is not None:
            source, self._source = self._source, None
            await source.close()
        self._records.clear()
        self._ready.clear()
        logger.info("sid %s closed after delivering %d messages", self.sid, self.delivered)

    # --- client events --------------------------------------------------------

    async def send_ready(self) -> None:
        """Tell the client which topics it may subscribe to."""
        try:
            available = await topics.available_topics(fresh=True)
        except KafkaError as exc:
            await self.report(exc, "connect")
            available = {}
        await self._emit("ready", sorted(available))

    async def subscribe(self, arg: Any) -> list[dict[str, Any]]:
        if self.assignments is not None or self._subscribing:
            raise AlreadySubscribedError("this connection is already subscribed; reconnect to subscribe again")
        requests = parse_subscription(arg)
        self._subscribing = True
        try:
            positions = await self._resolve(requests)
            source = await self._source_factory()
            if self.closed:
                await source.close()
                raise asyncio.CancelledError
            self._source = source
            await source.assign([(a["topic"], a["partition"], a["offset"]) for a in positions])
        finally:
            self._subscribing = False
        self.assignments = positions
        logger.info("sid %s subscribed to %s", self.sid, positions)
        return positions

    def set_filter(self, arg: Any) -> dict[str, Any] | None:
        self.filters, self._predicate = compile_filters(arg)
        return self.filters

    async def consume(self) -> dict[str, Any]:
        """The next message that passes the filter, waiting for one to arrive."""
        self._require_subscribed()
        delay = 0.0
        while True:
            messages = self._take(1)
            await self._report_stream_errors("consume")
            if messages:
                self.delivered += 1
                return messages[0]
            delay = await self._backoff(delay)

    async def start(self, arg: Any) -> None:
        options = parse_start(arg)
        self._require_subscribed()
        if self._streaming:
            raise AlreadyStartedError("this connection is already streaming; emit stop first")
        if self._stream_task is not None:  # a stop() is still finishing the previous stream
            await asyncio.shield(self._stream_task)
        self._streaming = True
        self._stream_task = asyncio.ensure_future(self._stream(options))

    async def stop(self) -> None:
        self._streaming = False
        if self._stream_task is not None:
            task = self._stream_task
            await asyncio.shield(task)
            if self._stream_task is task:
                self._stream_task = None

    # --- streaming ------------------------------------------------------------

    async def _stream(self, options: StartOptions) -> None:
        """Emit passing messages until stop(); failures go to the client as ``err`` and the loop goes on."""
        batch = options.batch
        delay = 0.0
        while self._streaming:
            try:
                messages = self._take(batch or conf.consume_batch_size)
                await self._report_stream_errors("start")
                if not messages:
                    delay = await self._backoff(delay)
                    continue
                delay = 0.0
                if batch:
                    await self._emit("messages", messages)
                    self.delivered += len(messages)
                    continue
                for index, message in enumerate(messages):
                    if not self._streaming:
                        # stop() arrived mid-batch: keep the rest for the next consume/start.
                        self._ready.extendleft(reversed(messages[index:]))
                        break
                    await self._emit("message", message)
                    self.delivered += 1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("sid %s: stream loop failed", self.sid)
                await self.report(exc if isinstance(exc, KasockiError) else InternalError("stream failed"), "start")
                delay = await self._backoff(max(delay, 0.1))

    def _take(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` built messages that pass the filter, from what Kafka already prefetched."""
        taken: list[dict[str, Any]] = []
        ready = self._ready
        while ready and len(taken) < limit:
            taken.append(ready.popleft())
        records = self._records
        predicate = self._predicate
        while len(taken) < limit:
            if not records:
                if self._source is None:
                    break
                polled = self._source.poll(conf.consume_batch_size)
                if not polled:
                    break
                records.extend(polled)
            record = records.popleft()
            if record.error() is not None:
                self._pending_errors.append(record)
                continue
            message = self._build_one(record)
            if message is not None and (predicate is None or predicate(message)):
                taken.append(message)
        return taken

    def _build_one(self, record: Message) -> dict[str, Any] | None:
        try:
            return self._build(record)
        except UndecodableMessage as exc:
            reason = exc.reason
        except Exception:
            logger.exception("message builder failed")
            reason = "builder_error"
        self.skipped[reason] += 1
        logger.warning(
            "sid %s skipped %s message at %s/%s/%s",
            self.sid,
            reason,
            record.topic(),
            record.partition(),
            record.offset(),
        )
        return None

    # --- errors ---------------------------------------------------------------

    async def _report_stream_errors(self, event: str) -> None:
        errors: list[KafkaError] = []
        if self._source is not None:
            errors.extend(self._source.take_errors())
        if self._pending_errors:
            for record in self._pending_errors:
                error = kafka_error(record.error())
                error.details.update(topic=record.topic(), partition=record.partition())
                errors.append(error)
            self._pending_errors.clear()
        now = time.monotonic()
        for error in errors:
            key = (error.details.get("code"), error.details.get("topic"), error.details.get("partition"))
            if now - self._last_errors.get(key, -ERROR_REPEAT_SECONDS) >= ERROR_REPEAT_SECONDS:
                self._last_errors[key] = now
                await self.report(error, event)

    async def report(self, error: KasockiError, event: str | None) -> dict[str, Any]:
        """Send ``error`` to the client as an ``err`` event; returns the error object for an ack."""
        payload = error.to_dict(event)
        with contextlib.suppress(Exception):
            await self._emit("err", payload)
        return payload

    # --- helpers --------------------------------------------------------------

    def _require_subscribed(self) -> None:
        if self.assignments is None:
            raise NotSubscribedError("subscribe before consuming")

    @staticmethod
    async def _backoff(delay: float) -> float:
        """Wait a little longer each time nothing arrives, up to KASOCKI_POLL_INTERVAL_MAX."""
        delay = min(max(delay * 2, 0.001), conf.poll_interval_max)
        await asyncio.sleep(delay)
        return delay

    async def _resolve(self, requests: list[AssignmentRequest]) -> list[dict[str, Any]]:
        """Check access and partitions, then turn each request into concrete starting offsets."""
        available = await topics.available_topics()
        if any(r.topic not in available for r in requests):
            available = await topics.available_topics(fresh=True)  # the topic may be brand new
        wanted: dict[tuple[str, int], AssignmentRequest] = {}
        for request in requests:
            if request.topic not in available:
                raise TopicNotAvailableError(
                    f"topic {request.topic!r} is not available", availableTopics=sorted(available)
                )
            count = available[request.topic]
            if request.partition is not None and request.partition >= count:
                raise PartitionNotAvailableError(
                    f"topic {request.topic!r} has no partition {request.partition}",
                    topic=request.topic,
                    partitions=count,
                )
            for partition in [request.partition] if request.partition is not None else range(count):
                wanted[(request.topic, partition)] = request
        if len(wanted) > conf.max_partitions:
            raise InvalidAssignmentError(
                f"subscribe covers {len(wanted)} partitions; at most {conf.max_partitions} are allowed",
                limit=conf.max_partitions,
            )
        marks = await cluster.watermarks(list(wanted))
        times = await cluster.offsets_for_times(
            {tp: r.timestamp for tp, r in wanted.items() if r.timestamp is not None}
        )
        positions = []
        for (topic, partition), request in sorted(wanted.items()):
            low, high = marks[(topic, partition)]
            position: dict[str, Any] = {"topic": topic, "partition": partition}
            if request.offset is not None:
                if low <= request.offset <= high:
                    position["offset"] = request.offset
                else:
                    position["offset"] = high if conf.reset_policy == "latest" else low
                    position["reset_from"] = request.offset
            elif request.timestamp is not None:
                found = times[(topic, partition)]
                position["offset"] = high if found < 0 else found
            else:
                position["offset"] = high
            positions.append(position)
        return positions


class Service:
    """The connections of this process, by socket.io sid."""

    def __init__(self, source_factory: SourceFactory = KafkaSource.create) -> None:
        self.connections: dict[str, Connection] = {}
        self._source_factory = source_factory

    def open(self, sid: str, emit: Emit) -> Connection:
        connection = Connection(sid, emit, self._source_factory)
        self.connections[sid] = connection
        return connection

    def get(self, sid: str) -> Connection | None:
        return self.connections.get(sid)

    async def close(self, sid: str) -> None:
        connection = self.connections.pop(sid, None)
        if connection is not None:
            await connection.close()
