"""Kafka consumers: one per reading connection, assigned partitions only, no group, no commits.

librdkafka calls that wait on the network run in threads (``threads.py``) with a
timeout, never on the event loop. The only call made on the loop is
``consume(timeout=0)``, which drains librdkafka's local prefetch queue (filled
by librdkafka's own threads) and returns at once.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaException, Message, TopicPartition
from confluent_kafka import KafkaError as RdKafkaError

from . import lograte, memory, metrics
from .conf import conf
from .exceptions import KafkaError, KasockiError, TooManyConsumersError
from .threads import executor, in_own_thread, kafka_error, run_blocking, wait_executor, within
from .types import Position

logger = logging.getLogger(__name__)

# Every consumer of the process meets the same errors at each reconnect attempt of an
# outage: these log one line per kind of error per interval, with a count, for them all.
consumer_errors = lograte.RateLimitedLog(logger, noun="consumers")
librdkafka_log = lograte.LibrdkafkaLogger(
    lograte.RateLimitedLog(logging.getLogger("kasocki_app.librdkafka"), noun="Kafka clients")
)
_consumer_ids = itertools.count(1)

# One fixed group id: librdkafka wants one even for assign(). The service never
# calls subscribe() and never commits or stores offsets, so the group never gets
# members or committed offsets on the broker.
GROUP_ID = "kasocki"

# Settings no deployment may override: they keep Kafka's state untouched.
CONSUMER_OVERRIDES: dict[str, Any] = {
    "group.id": GROUP_ID,
    "enable.auto.commit": False,
    "enable.auto.offset.store": False,
    "enable.partition.eof": False,
}

# Defaults tuned for many small consumers in one process (each can be overridden
# in KASOCKI_KAFKA_CONFIG). librdkafka prefetches up to queued.max.messages.kbytes
# (64 MB by default) per consumer, and one more fetch response (fetch.max.bytes,
# default 50 MB) beyond it: with hundreds of clients that is gigabytes. A client
# catching up must cost at most its backlog cap and a few MB: 512 KB queued and
# fetches of 1 MB (measured: a consumer held 3.4 MB with 2 MB of each; ten stalled
# clients peaked 17 MB lower with 512 KB than with 1 MB; one consumer alone reads
# ~150,000 msg/s of 1 KB with it, ~165,000 with 1 MB, far above what a client gets
# from the server). queued.min.messages (default 100k) is lowered to match.
# With a small queue, librdkafka waits fetch.queue.backoff.ms (default 1000) before
# fetching again once the queue was full: that alone capped a client at ~3k msg/s.
# See https://github.com/confluentinc/librdkafka/blob/master/CONFIGURATION.md
CONSUMER_DEFAULTS: dict[str, Any] = {
    "client.id": "kasocki",
    "queued.max.messages.kbytes": 512,
    "queued.min.messages": 500,
    "fetch.queue.backoff.ms": 5,
    "fetch.max.bytes": 1024 * 1024,  # at least message.max.bytes (1,000,000)
    "socket.nagle.disable": True,
    "enable.metrics.push": False,
}

# Longest wait of an idle stream in librdkafka; also how often an idle stream looks at the cluster.
WAIT_MAX_SECONDS = 0.5
# How long a read pauses while the assignment changes (it may not wait in librdkafka then).
CHANGE_PAUSE_SECONDS = 0.01


def consumer_config() -> dict[str, Any]:
    # "error": an offset that leaves the log while a client lags is reported to the
    # service, which tells the client and then applies KASOCKI_RESET_POLICY itself.
    return {**CONSUMER_DEFAULTS, **conf.kafka_config, **CONSUMER_OVERRIDES, "auto.offset.reset": "error"}


def settings_key() -> str:
    """Equal as long as consumers are made with the same settings."""
    return repr(sorted(consumer_config().items()))


def error_callback(errors: deque[KafkaError], consumer_id: int) -> Callable[[RdKafkaError], None]:
    """A consumer's ``error_cb``: keeps the error for the client and logs it, rate-limited."""

    def on_error(error: RdKafkaError) -> None:
        # Called from inside consume(); the stream loop reports these to the client.
        name, text = error.name(), error.str()
        consumer_errors.log(
            logging.WARNING, (name, lograte.shape(text)), consumer_id, "kafka consumer error %s (%s)", name, text
        )
        errors.append(kafka_error(error))

    return on_error


def flush_logs(force: bool = False) -> None:
    """Write the Kafka log summaries that are due (everything pending with ``force``)."""
    consumer_errors.flush(force)
    librdkafka_log.flush(force)


# librdkafka takes a thread-local-storage key per client and glibc has 1,024 per process: past
# about 1,012 clients in one process, creating another fails with this text.
TLS_EXHAUSTED = "thread local storage"


def creation_error(exc: KafkaException | RuntimeError) -> KasockiError:
    """What a client hears when librdkafka cannot create its consumer."""
    if TLS_EXHAUSTED in str(exc):
        return TooManyConsumersError(
            "this server process cannot run more Kafka consumers; try again later", limit=conf.max_consumers
        )
    return kafka_error(exc) if isinstance(exc, KafkaException) else KafkaError(str(exc), code="_FAIL")


def _close_when_created(future: asyncio.Future[Consumer]) -> None:
    if not future.cancelled() and future.exception() is None:
        # As every close: in a thread of its own, never in the pool the process's Kafka calls need.
        threading.Thread(target=future.result().close, name="kasocki-close", daemon=True).start()


class ConsumerCounts:
    """How many consumers this process has open, and how many it had to abandon."""

    open = 0
    abandoned = 0


class KafkaSource:
    """One connection's Kafka consumer (a ``reader.Reader``): assigned partitions only, no group, no commits."""

    def __init__(self, consumer: Consumer) -> None:
        ConsumerCounts.open += 1
        self._waiting: concurrent.futures.Future[list[Message]] | None = None
        self._waited: asyncio.Future[list[Message]] | None = None  # _waiting on the loop, until read takes it
        self._consumer = consumer
        self._errors: deque[KafkaError] = deque(maxlen=100)
        self._closed = False
        self._changing = 0  # assignment changes in progress

    @classmethod
    async def create(cls) -> KafkaSource:
        errors: deque[KafkaError] = deque(maxlen=100)
        config = consumer_config()
        config["error_cb"] = error_callback(errors, next(_consumer_ids))
        future = asyncio.get_running_loop().run_in_executor(executor(), lambda: Consumer(config, logger=librdkafka_log))
        try:
            consumer = await within(asyncio.shield(future), conf.kafka_timeout)
        except BaseException as exc:
            # Cancelled or timed out while librdkafka was still creating it: close it once it exists.
            future.add_done_callback(_close_when_created)
            if isinstance(exc, TimeoutError):
                raise KafkaError("creating a Kafka consumer timed out", code="_TIMED_OUT") from None
            if isinstance(exc, KafkaException) or (isinstance(exc, RuntimeError) and TLS_EXHAUSTED in str(exc)):
                raise creation_error(exc) from None  # the ceiling comes as a RuntimeError from confluent-kafka
            raise
        source = cls(consumer)
        source._errors = errors
        return source

    async def assign(self, positions: Sequence[Position]) -> None:
        """Read exactly these partitions, each from its concrete offset."""
        await self._change(self._consumer.assign, [TopicPartition(p.topic, p.partition, p.offset) for p in positions])

    async def add(self, positions: Sequence[Position]) -> None:
        partitions = [TopicPartition(p.topic, p.partition, p.offset) for p in positions]
        await self._change(self._consumer.incremental_assign, partitions)

    async def remove(self, partitions: Sequence[tuple[str, int]]) -> None:
        await self._change(self._consumer.incremental_unassign, [TopicPartition(t, p) for t, p in partitions])

    async def _change(self, func: Callable[..., None], *args: Any) -> None:
        """An assignment change, made while no wait is inside consume().

        librdkafka holds an assignment change back while another thread waits in consume():
        measured here, an incremental_assign never returned while a thread called
        consume(1, 0.5) in a loop. So the change waits for the running wait to end, and no
        new wait starts until the change is done (reads meanwhile take what is prefetched).
        """
        self._changing += 1
        try:
            waiting = self._waiting
            if waiting is not None and not waiting.done():
                await asyncio.wait({asyncio.wrap_future(waiting)}, timeout=WAIT_MAX_SECONDS * 4)
            await run_blocking(func, *args)
        finally:
            self._changing -= 1

    async def seek(self, position: Position) -> None:
        """Continue a partition at another offset, also after a fetch error (where librdkafka refuses seek())."""
        topic, partition, offset = position.topic, position.partition, position.offset

        def reassign() -> None:
            self._consumer.incremental_unassign([TopicPartition(topic, partition)])
            self._consumer.incremental_assign([TopicPartition(topic, partition, offset)])

        await self._change(reassign)

    async def read(self, max_records: int, timeout: float) -> list[Message]:
        """Up to ``max_records`` records; when none is ready, wait at most ``timeout`` seconds for one.

        librdkafka's consume() must not run on one consumer while another call of it waits.
        So the loop only takes what librdkafka prefetched (timeout 0, returning at once), and
        only while no wait runs; a wait runs in a thread, one at a time, and a read meanwhile
        joins it. What a wait brings stays here until a read takes it, even when the read that
        started it was cancelled, and before anything is polled after it: offset order holds.

        An idle stream sleeps in librdkafka (GIL released) instead of polling from the
        loop: idle connections cost no CPU and a new record wakes its stream at once.
        Only one record: consume(N, timeout) waits for N records or the whole timeout;
        the rest of a burst is then taken by the next reads, without waiting.
        """
        if self._closed:
            return []
        if self._waited is None:
            records = self._consumer.consume(max_records, timeout=0)
            if records or timeout <= 0:
                return records
            if self._changing:  # no wait in consume() while the assignment changes (see _change)
                await asyncio.sleep(min(timeout, CHANGE_PAUSE_SECONDS))
                return []
            self._waiting = wait_executor().submit(self._consumer.consume, 1, timeout)
            self._waited = asyncio.wrap_future(self._waiting)  # close() lets it finish: the handle must outlive it
        if timeout > 0 and not self._waited.done():
            await asyncio.wait({self._waited}, timeout=timeout)
        return self._take_waited()

    def _take_waited(self) -> list[Message]:
        """What the finished wait brought, once; raises what it failed with."""
        waited = self._waited
        if waited is None or not waited.done():
            return []
        self._waited = None
        if waited.cancelled():
            return []
        failure = waited.exception()
        if isinstance(failure, KafkaException):
            raise kafka_error(failure) from failure
        if failure is not None:
            raise failure
        return waited.result()

    async def release(self) -> None:
        """Nothing to let go of: this consumer is the subscription (its prefetch is bounded by CONSUMER_DEFAULTS)."""

    def take_errors(self) -> list[KafkaError]:
        flush_logs()  # the stream loop calls this often: summaries get written though no new error comes
        errors = list(self._errors)
        self._errors.clear()
        return errors

    async def close(self) -> bool:
        """Close off the loop; False when librdkafka did not finish in time (the handle is abandoned)."""
        if self._closed:
            return True
        self._closed = True
        ConsumerCounts.open -= 1
        # The last consumer gone: no stream loop is left to write the pending summaries later.
        flush_logs(force=ConsumerCounts.open == 0)
        if self._waiting is not None and not self._waiting.done():
            # Closing under a consume() still running in its thread would free the handle it uses.
            with contextlib.suppress(Exception):
                await within(asyncio.shield(asyncio.wrap_future(self._waiting)), WAIT_MAX_SECONDS * 4)
        try:
            # A thread of its own, not the shared pool: a close that hangs must not take a
            # worker that every other Kafka call of the process needs.
            await within(in_own_thread(self._consumer.close), conf.consumer_close_timeout)
            memory.give_back_soon()  # what it prefetched, in its threads' heaps
        except (TimeoutError, KafkaException) as exc:
            ConsumerCounts.abandoned += 1
            metrics.CONSUMERS_ABANDONED.inc()
            logger.warning("abandoned a Kafka consumer whose close did not finish: %r", exc)
            return False
        return True
