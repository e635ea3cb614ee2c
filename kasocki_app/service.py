"""Per-connection state and tasks: subscribe, filter, consume, start/stop, flow control and cleanup.

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

from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import Message
from django.utils.module_loading import import_string

from . import assignments, metrics, topics
from .access import ANONYMOUS, Principal
from .conf import conf
from .exceptions import (
    AlreadyStartedError,
    AlreadySubscribedError,
    IdleTimeoutError,
    InternalError,
    KafkaError,
    KasockiError,
    NotSubscribedError,
    OffsetOutOfRangeError,
    PartitionsChangedError,
    SlowClientError,
    TooManyConsumersError,
    TooManyRequestsError,
    TopicNotAvailableError,
)
from .filters import Predicate, compile_filters
from .kafka import WAIT_MAX_SECONDS, ConsumerCounts, KafkaSource, cluster, kafka_error
from .limits import ConnectionLimiter
from .messages import UndecodableMessage, build_message, decode_value, kafka_meta
from .protocol import AssignmentRequest, StartOptions, parse_start, parse_subscription

logger = logging.getLogger(__name__)

# The same stream error is reported to a client at most once per this many seconds.
ERROR_REPEAT_SECONDS = 5.0
# Consumers being created right now (counted against KASOCKI_MAX_CONSUMERS with the open ones).
_consumers_starting = 0


class Source(Protocol):
    """Where a connection's records come from; KafkaSource is the one implementation today."""

    async def assign(self, positions: list[tuple[str, int, int]]) -> None: ...

    async def add(self, positions: list[tuple[str, int, int]]) -> None: ...

    async def remove(self, partitions: list[tuple[str, int]]) -> None: ...

    async def seek(self, topic: str, partition: int, offset: int) -> None: ...

    def poll(self, max_messages: int) -> list[Message]: ...

    async def wait(self, timeout: float) -> list[Message]: ...

    def take_errors(self) -> list[KafkaError]: ...

    async def close(self) -> bool: ...


class Outbound(Protocol):
    """How a connection reaches its client (see outbound.Outbound)."""

    bytes_sent: int

    async def emit(self, event: str, data: Any) -> None: ...

    def backlog(self) -> int: ...

    async def disconnect(self) -> None: ...

    async def abort(self) -> None: ...


SourceFactory = Callable[[], Awaitable[Source]]
# A message ready for the client, with the topic it came from (custom builders need not name it).
Taken = tuple[str, dict[str, Any]]


class Connection:
    """One socket.io client's subscription, filter and streams."""

    def __init__(
        self,
        sid: str,
        outbound: Outbound,
        source_factory: SourceFactory = KafkaSource.create,
        principal: Principal = ANONYMOUS,
        address: str = "",
    ) -> None:
        self.sid = sid
        self.principal = principal
        self.address = address
        self.connected_at = time.time()
        self.last_active = time.monotonic()
        self.requests: list[AssignmentRequest] = []
        self.assignments: list[dict[str, Any]] | None = None
        self.filters: dict[str, Any] | None = None
        self.delivered = 0
        self.skipped: Counter[str] = Counter()
        # Next offset to read per (topic, partition), as far as records were taken (delivered or filtered out).
        self.positions: dict[tuple[str, int], int] = {}
        self.closed = False
        self.outbound = outbound
        self._source_factory = source_factory
        self._source: Source | None = None
        self._subscribing = False
        self._subscribe_done = asyncio.Event()  # set when a subscribe in progress ends, either way
        self._predicate: Predicate | None = None
        self._build = import_string(conf.message_builder)
        # With the default builder, _kafka is added only to messages that pass the filter
        # (unless the filter looks at _kafka): most records of a filtered scan never need it.
        self._default_builder = self._build is build_message
        self._lazy_meta = self._default_builder
        self._records: deque[Message] = deque()  # polled from Kafka, not yet decoded
        self._ready: deque[Taken] = deque()  # built and filtered, given back by stop() or a cancelled consume
        # Topics that left this subscription (deleted, disallowed): nothing of them reaches the client
        # after their error, even what was taken from Kafka before they left.
        self._gone: set[str] = set()
        # consume calls waiting for a message, in arrival order: served before the stream takes anything.
        self._waiters: deque[asyncio.Future[Taken]] = deque()
        self._streaming = False
        self._stream_idle = False  # the stream task is waiting for records (stop may cancel it)
        self._fill: asyncio.Task[None] | None = None  # the one wait for records in flight
        self._stream_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # everything this connection must cancel on close
        self._handlers = 0  # client requests being answered (counted against the in-flight limit)
        self._stream_generation = 0  # bumped by every start and stop, to apply them in arrival order
        self._stream_wanted = False  # what the latest start/stop asked for
        self._error_records: list[Message] = []  # error records met while polling
        self._last_errors: dict[tuple[Any, ...], float] = {}
        self._next_check = 0.0

    # --- task ownership -------------------------------------------------------

    @contextlib.asynccontextmanager
    async def handling(self) -> AsyncIterator[None]:
        """Register the running handler task so that close() can cancel it."""
        task = asyncio.current_task()
        if self.closed or task is None:
            raise asyncio.CancelledError
        if self._handlers >= conf.max_inflight_requests:
            raise TooManyRequestsError(
                f"at most {conf.max_inflight_requests} requests may wait for an answer at once",
                limit=conf.max_inflight_requests,
            )
        self._tasks.add(task)
        self._handlers += 1
        self.last_active = time.monotonic()
        try:
            yield
        finally:
            self._tasks.discard(task)
            self._handlers -= 1
            self.last_active = time.monotonic()

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
            available = await topics.available_topics(self.principal, fresh=True)
        except KafkaError as exc:
            await self.report(exc, "connect")
            available = {}
        except Exception:  # the database, most likely: the client must still hear something
            logger.exception("sid %s: listing the allowed topics failed", self.sid)
            await self.report(InternalError("listing the allowed topics failed"), "connect")
            available = {}
        await self.outbound.emit("ready", sorted(available))

    async def subscribe(self, arg: Any) -> list[dict[str, Any]]:
        if self.assignments is not None or self._subscribing:
            raise AlreadySubscribedError("this connection is already subscribed; reconnect to subscribe again")
        requests = parse_subscription(arg)
        self._subscribing = True
        self._subscribe_done.clear()
        try:
            positions = await assignments.resolve(requests, self.principal)
            source = await self._create_source()
            if self.closed:
                await source.close()
                raise asyncio.CancelledError
            self._source = source
            await source.assign([(a["topic"], a["partition"], a["offset"]) for a in positions])
        except BaseException:
            self._subscribing = False
            self._subscribe_done.set()
            raise
        self.requests = requests
        self.assignments = positions
        self.positions = {(a["topic"], a["partition"]): a["offset"] for a in positions}
        self._next_check = time.monotonic() + conf.assignment_check_seconds
        self._subscribing = False
        self._subscribe_done.set()
        logger.info("sid %s subscribed to %s", self.sid, positions)
        return positions

    async def _create_source(self) -> Source:
        """A new source, within the process's KASOCKI_MAX_CONSUMERS."""
        global _consumers_starting
        if ConsumerCounts.open + _consumers_starting >= conf.max_consumers:
            raise TooManyConsumersError(
                "this server runs as many Kafka consumers as it may; try again later", limit=conf.max_consumers
            )
        _consumers_starting += 1
        try:
            return await self._source_factory()
        finally:
            _consumers_starting -= 1

    async def reap_when_idle(self) -> None:
        """Disconnect a connection nobody uses: not streaming, no request, for KASOCKI_IDLE_TIMEOUT."""
        timeout = conf.idle_timeout
        while not self.closed and timeout > 0:
            busy = self._streaming or self._handlers > 0
            if busy:
                self.last_active = time.monotonic()
            idle_for = time.monotonic() - self.last_active
            if idle_for >= timeout:
                await self.report(IdleTimeoutError(f"the connection was idle for {timeout:g}s"), None)
                logger.info("sid %s: disconnecting an idle connection", self.sid)
                await self.outbound.disconnect()
                return
            await asyncio.sleep(min(timeout - idle_for, 1.0) if busy else timeout - idle_for)

    def set_filter(self, arg: Any) -> dict[str, Any] | None:
        self.filters, self._predicate = compile_filters(arg)
        self._lazy_meta = self._default_builder and not any(
            key == "_kafka" or key.startswith("_kafka.") for key in self.filters or ()
        )
        return self.filters

    async def consume(self) -> dict[str, Any]:
        """The next message that passes the filter, waiting for one to arrive.

        Waiting consume calls are served in arrival order before a running stream takes
        anything (the original's "a consume takes the next message itself").
        """
        await self._require_subscribed()
        waiter: asyncio.Future[Taken] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            while True:
                self._serve_waiters()
                await self._after_take("consume")
                if waiter.done():
                    topic, message = waiter.result()
                    if topic not in self._gone:
                        self.delivered += 1
                        metrics.DELIVERED.inc()
                        return message
                    # Its topic left after the message was handed over: wait for another, still first in line.
                    waiter = asyncio.get_running_loop().create_future()
                    self._waiters.appendleft(waiter)
                    continue
                await self._wait_for_records(waiter)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._ready.appendleft(waiter.result())  # handed over but never answered: keep it
            else:
                waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def _serve_waiters(self) -> None:
        """Give each waiting consume, oldest first, the next passing message while there is one."""
        waiters = self._waiters
        while waiters:
            if waiters[0].done():  # cancelled
                waiters.popleft()
                continue
            taken = self._take(1)
            if not taken:
                return
            waiters.popleft().set_result(taken[0])

    async def start(self, arg: Any) -> None:
        # start and stop take effect in the order they arrive, even while a start waits for a
        # subscribe still in progress: each bumps the generation, and a superseded start does nothing.
        options = parse_start(arg)
        if self._stream_wanted:
            raise AlreadyStartedError("this connection is already streaming; emit stop first")
        self._stream_generation += 1
        generation = self._stream_generation
        self._stream_wanted = True
        try:
            await self._require_subscribed()
            if self._stream_task is not None:  # a stop() is still finishing the previous stream
                await asyncio.shield(self._stream_task)
        except BaseException:
            if self._stream_generation == generation:
                self._stream_wanted = False
            raise
        if self._stream_generation != generation or self._streaming:
            return  # a later stop (or start) took over
        self._streaming = True
        self._stream_task = asyncio.ensure_future(self._stream(options))

    async def stop(self) -> None:
        self._stream_generation += 1
        self._stream_wanted = False
        self._streaming = False
        if self._stream_task is not None:
            task = self._stream_task
            if self._stream_idle:
                # Waiting for records (the shared fill goes on and keeps what it gets): end now.
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(task)
            if self._stream_task is task:
                self._stream_task = None

    # --- streaming ------------------------------------------------------------

    async def _stream(self, options: StartOptions) -> None:
        """Emit passing messages until stop(); failures go to the client as ``err`` and the loop goes on."""
        batch = options.batch
        while self._streaming:
            try:
                if self.outbound.backlog() > conf.max_backlog_bytes:
                    await self._wait_for_client()
                    continue
                self._serve_waiters()
                taken = [] if self._waiters else self._take(batch or conf.consume_batch_size)
                await self._after_take("start")  # never raises: taken messages are not lost
                gone = self._gone
                if gone:  # a topic that left during _after_take: its error went out, its messages must not
                    taken = [t for t in taken if t[0] not in gone]
                if not taken:
                    self._stream_idle = True
                    try:
                        await self._wait_for_records()
                    finally:
                        self._stream_idle = False
                    continue
                metrics.EMIT_BATCH.observe(len(taken))
                if batch:
                    await self.outbound.emit("messages", [message for _topic, message in taken])
                    self.delivered += len(taken)
                    metrics.DELIVERED.inc(len(taken))
                    continue
                sent = 0
                for index, (topic, message) in enumerate(taken):
                    if not self._streaming:
                        # stop() arrived mid-batch: keep the rest for the next consume/start.
                        self._ready.extendleft(reversed(taken[index:]))
                        break
                    if topic in gone:
                        continue
                    await self.outbound.emit("message", message)
                    sent += 1
                self.delivered += sent
                metrics.DELIVERED.inc(sent)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("sid %s: stream loop failed", self.sid)
                await self._report_once(
                    exc if isinstance(exc, KasockiError) else InternalError("stream failed"), "start"
                )
                await asyncio.sleep(1.0)  # a persistent failure must not spin or flood the client

    async def _wait_for_client(self) -> None:
        """Stop reading Kafka while the client's backlog is over the cap; drop a client stalled too long."""
        deadline = time.monotonic() + conf.slow_client_timeout
        while self._streaming and self.outbound.backlog() > conf.max_backlog_bytes // 2:
            if time.monotonic() > deadline:
                logger.warning("sid %s: disconnecting a client that stopped reading", self.sid)
                await self.report(
                    SlowClientError(
                        f"the client read nothing for {conf.slow_client_timeout:g}s while "
                        f"{conf.max_backlog_bytes} bytes were waiting for it",
                        limit=conf.max_backlog_bytes,
                    ),
                    "start",
                )
                self._streaming = False
                self.spawn(self.outbound.abort())
                return
            await asyncio.sleep(0.01)

    def _take(self, limit: int) -> list[Taken]:
        """Up to ``limit`` built messages that pass the filter, from what Kafka already prefetched."""
        taken: list[Taken] = []
        ready = self._ready
        gone = self._gone
        while ready and len(taken) < limit:
            item = ready.popleft()
            if item[0] not in gone:
                taken.append(item)
        records = self._records
        predicate = self._predicate
        build = self._build_one
        positions = self.positions
        lazy_meta = self._lazy_meta
        filtered = 0
        while len(taken) < limit:
            if not records:
                if self._source is None or (self._fill is not None and not self._fill.done()):
                    break  # a wait in a thread is using the consumer; its records land in _records
                polled = self._source.poll(conf.consume_batch_size)
                if not polled:
                    break
                records.extend(polled)
            record = records.popleft()
            if record.error() is not None:
                self._error_records.append(record)
                continue
            topic = record.topic()
            if topic in gone:  # fetched before the topic left (a wait in a thread, librdkafka's queue)
                continue
            positions[(topic, record.partition())] = record.offset() + 1
            if lazy_meta:
                try:
                    message = decode_value(record.value())
                except UndecodableMessage as exc:
                    self._skip(record, exc.reason)
                    continue
                if predicate is None or predicate(message):
                    message["_kafka"] = kafka_meta(record)
                    taken.append((topic, message))
                else:
                    filtered += 1
                continue
            message = build(record)
            if message is None:
                continue
            if predicate is None or predicate(message):
                taken.append((topic, message))
            else:
                filtered += 1
        if filtered:
            metrics.FILTERED.inc(filtered)
        return taken

    def _build_one(self, record: Message) -> dict[str, Any] | None:
        try:
            return self._build(record)
        except UndecodableMessage as exc:
            self._skip(record, exc.reason)
        except Exception:
            logger.exception("message builder failed")
            self._skip(record, "builder_error")
        return None

    def _skip(self, record: Message, reason: str) -> None:
        self.skipped[reason] += 1
        metrics.SKIPPED.labels(reason).inc()
        logger.warning(
            "sid %s skipped %s message at %s/%s/%s",
            self.sid,
            reason,
            record.topic(),
            record.partition(),
            record.offset(),
        )

    # --- keeping up with Kafka ------------------------------------------------

    async def _after_take(self, event: str) -> None:
        """Report Kafka errors met while polling, and follow changes of the cluster and the whitelist.

        Never raises (but for cancellation): a failure here is reported, and the messages the
        caller already took are still delivered.
        """
        errors: list[KasockiError] = []
        try:
            if self._source is not None:
                errors.extend(self._source.take_errors())
            records, self._error_records = self._error_records, []
            for index, record in enumerate(records):
                if record.error().code() == RdKafkaError._AUTO_OFFSET_RESET:
                    try:
                        errors.append(await self._reset_partition(record))
                    except KasockiError as exc:
                        errors.append(exc)
                        self._error_records.extend(records[index:])  # try the reset again next time
                        break
                else:
                    error = kafka_error(record.error())
                    error.details.update(topic=record.topic(), partition=record.partition())
                    errors.append(error)
            if time.monotonic() >= self._next_check:
                self._next_check = time.monotonic() + conf.assignment_check_seconds
                errors.extend(await self._follow_cluster())
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("sid %s: following Kafka failed", self.sid)
            errors.append(InternalError("following Kafka failed"))
        for error in errors:
            await self._report_once(error, event)

    async def _report_once(self, error: KasockiError, event: str) -> None:
        """Report a stream error, but the same one at most once per ERROR_REPEAT_SECONDS."""
        now = time.monotonic()
        key = (error.name, error.message, error.details.get("code"), error.details.get("topic"))
        if now - self._last_errors.get(key, -ERROR_REPEAT_SECONDS) >= ERROR_REPEAT_SECONDS:
            self._last_errors[key] = now
            if len(self._last_errors) > 1000:  # bounded: forget the oldest
                del self._last_errors[next(iter(self._last_errors))]
            await self.report(error, event)

    async def _reset_partition(self, record: Message) -> KasockiError:
        """The next offset of a partition left the log (retention): restart per the reset policy."""
        topic, partition = record.topic(), record.partition()
        low, high = (await cluster.watermarks([(topic, partition)]))[(topic, partition)]
        offset = assignments.reset_offset(low, high)
        if self._source is not None:
            await self._source.seek(topic, partition, offset)
        self.positions[(topic, partition)] = offset
        lost_from = record.offset() if record.offset() >= 0 else None
        return OffsetOutOfRangeError(
            f"the next offset of {topic}/{partition} is no longer in the log; continuing from offset {offset}",
            topic=topic,
            partition=partition,
            reset_from=lost_from,
            offset=offset,
        )

    async def _follow_cluster(self) -> list[KasockiError]:
        """Drop topics deleted or no longer allowed; add partitions that grew under whole-topic requests."""
        if self.assignments is None or self._source is None:
            return []
        try:
            available = await topics.available_topics(self.principal)
        except KafkaError as exc:
            return [exc]
        changes = assignments.compare(self.requests, self.assignments, available)
        errors: list[KasockiError] = []
        if changes.gone:
            removed = [(a["topic"], a["partition"]) for a in self.assignments]
            gone = set(changes.gone)
            # Marked first: from here on nothing of these topics is handed out, whatever awaits follow.
            self._gone.update(gone)
            self.assignments = [a for a in self.assignments if a["topic"] not in gone]
            self.positions = {tp: o for tp, o in self.positions.items() if tp[0] not in gone}
            self._records = deque(r for r in self._records if r.topic() not in gone)
            self._ready = deque(t for t in self._ready if t[0] not in gone)
            await self._source.remove([(t, p) for t, p in removed if t in gone])
            for topic in changes.gone:
                logger.info("sid %s: topic %s went away; stopped reading it", self.sid, topic)
                errors.append(
                    TopicNotAvailableError(
                        f"topic {topic!r} is no longer available", topic=topic, availableTopics=sorted(available)
                    )
                )
        for topic, partitions in changes.grown.items():
            marks = await cluster.watermarks([(topic, p) for p in partitions])
            added = [{"topic": topic, "partition": p, "offset": marks[(topic, p)][0]} for p in partitions]
            await self._source.add([(a["topic"], a["partition"], a["offset"]) for a in added])
            self.positions.update({(a["topic"], a["partition"]): a["offset"] for a in added})
            self.assignments = sorted([*self.assignments, *added], key=lambda a: (a["topic"], a["partition"]))
            errors.append(
                PartitionsChangedError(
                    f"topic {topic!r} now has {available[topic]} partitions; reading the new ones from the start",
                    topic=topic,
                    partitions=available[topic],
                    added=added,
                )
            )
        return errors

    # --- errors and helpers ---------------------------------------------------

    async def report(self, error: KasockiError, event: str | None) -> dict[str, Any]:
        """Send ``error`` to the client as an ``err`` event; returns the error object for an ack."""
        payload = error.to_dict(event)
        metrics.ERRORS.labels(error.name).inc()
        with contextlib.suppress(Exception):
            await self.outbound.emit("err", payload)
        return payload

    async def _require_subscribed(self) -> None:
        # Clients may emit subscribe and then consume without waiting for the ack (the
        # original README does): each handler runs as its own task, so wait for it.
        if self._subscribing:
            await self._subscribe_done.wait()
        if self.assignments is None:
            raise NotSubscribedError("subscribe before consuming")

    async def _wait_for_records(self, served: asyncio.Future[Taken] | None = None) -> None:
        """Wait until Kafka has records for this connection (or a short while passed), or ``served`` is.

        consume and the stream share one fill: the records it gets go to ``_records``
        whoever waits, and one waiter giving up does not cancel it.
        """
        if self._source is None:
            await asyncio.sleep(WAIT_MAX_SECONDS)
            return
        if self._fill is None or self._fill.done():
            self._fill = self.spawn(self._fill_records(self._source))
        if served is None:
            await asyncio.shield(self._fill)
        else:  # a consume: the stream may hand it a message before the fill ends
            fill = self._fill
            await asyncio.wait({fill, served}, return_when=asyncio.FIRST_COMPLETED)
            if fill.done() and not served.done():
                fill.result()  # a failed wait fails the consume, as the stream reports it

    async def _fill_records(self, source: Source) -> None:
        self._records.extend(await source.wait(WAIT_MAX_SECONDS))


class Service:
    """The connections of this process, by socket.io sid."""

    def __init__(self, source_factory: SourceFactory = KafkaSource.create) -> None:
        self.connections: dict[str, Connection] = {}
        self.limiter = ConnectionLimiter()
        # Process-wide tasks (the registry publisher), started lazily: daphne sends no lifespan events.
        self.background: set[asyncio.Task[Any]] = set()
        self._source_factory = source_factory

    def open(self, sid: str, outbound: Outbound, principal: Principal = ANONYMOUS, address: str = "") -> Connection:
        """Register an admitted client (see ``limiter``)."""
        connection = Connection(sid, outbound, self._source_factory, principal, address)
        self.connections[sid] = connection
        return connection

    def get(self, sid: str) -> Connection | None:
        return self.connections.get(sid)

    async def close(self, sid: str) -> None:
        connection = self.connections.pop(sid, None)
        if connection is not None:
            self.limiter.release(connection.address)
            await connection.close()

    async def shutdown(self) -> None:
        """Cancel and await the background tasks (connections close through their own disconnects)."""
        tasks = list(self.background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.background.difference_update(tasks)
