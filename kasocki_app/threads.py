"""Threads for blocking librdkafka calls, so that none runs on the event loop.

Calls that wait on the network run in one bounded pool, with a timeout, and fail
as a client-visible ``KafkaError``. Idle streams wait for records in an elastic
pool of their own: their waits never take the threads every other Kafka call needs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import KafkaException

from .conf import conf
from .exceptions import KafkaError

T = TypeVar("T")

_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
_wait_executor: ElasticPool | None = None


def executor() -> concurrent.futures.ThreadPoolExecutor:
    """The process-wide bounded pool for blocking librdkafka calls."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=conf.kafka_threads, thread_name_prefix="kasocki-kafka"
            )
        return _executor


class ElasticPool:
    """Threads for blocking waits: one more whenever none is free, each ending after idling.

    Idle streams wait here, one thread per waiting consumer; unlike ThreadPoolExecutor's,
    these threads end after IDLE_SECONDS unused, so a burst of connections leaves no threads
    behind once it is gone.
    """

    IDLE_SECONDS = 2.0

    def __init__(self, max_threads: int) -> None:
        self._max = max_threads
        self._queue: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]]
        self._queue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._threads = 0
        self._idle = 0

    def submit(self, func: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._queue.put((future, func, args))
        with self._lock:
            if self._idle == 0 and self._threads < self._max:
                self._threads += 1
                threading.Thread(target=self._work, name="kasocki-wait", daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                self._idle += 1
            try:
                future, func, args = self._queue.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    self._idle -= 1
                    if self._queue.empty():  # checked under the lock submit() takes: nothing is stranded
                        self._threads -= 1
                        return
                continue
            with self._lock:
                self._idle -= 1
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(func(*args))
                except BaseException as exc:
                    future.set_exception(exc)


def wait_executor() -> ElasticPool:
    """Where idle streams wait for records: separate from the pool of blocking calls."""
    global _wait_executor
    with _executor_lock:
        if _wait_executor is None:
            _wait_executor = ElasticPool(conf.max_consumers + 1)
        return _wait_executor


async def within(awaitable: Awaitable[T], seconds: float) -> T:
    """``asyncio.wait_for`` without its flaw in Python 3.11: a cancel that comes as ``awaitable``
    finishes is lost there (the caller goes on as if never cancelled: a stop then waited for a
    30 s timer). TimeoutError after ``seconds``, as wait_for."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def run_blocking(func: Callable[..., T], *args: Any, timeout: float | None = None) -> T:
    """Run a blocking librdkafka call in the pool; raise KafkaError after ``timeout`` seconds."""
    timeout = conf.kafka_timeout if timeout is None else timeout
    future = asyncio.get_running_loop().run_in_executor(executor(), func, *args)
    try:
        return await within(future, timeout)
    except TimeoutError:
        raise no_answer(timeout) from None
    except KafkaException as exc:
        raise kafka_error(exc) from None


def no_answer(timeout: float) -> KafkaError:
    """What a client hears when Kafka did not answer a call within ``timeout`` seconds."""
    return KafkaError(f"Kafka did not answer within {timeout:g}s", code="_TIMED_OUT")


def kafka_error(exc: KafkaException | RdKafkaError) -> KafkaError:
    """A client-visible KafkaError named after librdkafka's error code."""
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    if isinstance(error, RdKafkaError):
        return KafkaError(error.str(), code=error.name())
    return KafkaError(str(error), code="_UNKNOWN")


def in_own_thread(func: Callable[[], T]) -> asyncio.Future[T]:
    """Run ``func`` in a new daemon thread; the future resolves on the running loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.cancelled():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = func()
        except BaseException as exc:  # handed to the loop
            loop.call_soon_threadsafe(settle, None, exc)
        else:
            loop.call_soon_threadsafe(settle, result, None)

    threading.Thread(target=run, name="kasocki-close", daemon=True).start()
    return future
