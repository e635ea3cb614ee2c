"""The tasks one connection owns: client requests in flight (bounded) and background work.

Every task has this owner, which cancels and awaits it when the connection closes,
whatever moment the client leaves at. Tasks that serve the whole process start with
``process_task`` instead, outside every connection's context.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import Coroutine
from types import TracebackType
from typing import Any, TypeVar

from .conf import conf
from .exceptions import TooManyRequestsError

T = TypeVar("T")


def process_task(coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Task[T]:
    """Start a task that serves the whole process (its owner cancels and awaits it).

    In an empty context: one copied from the connection whose call started it would tag every
    line it logs with that connection's sid and address, long after the connection left.
    """
    return asyncio.get_running_loop().create_task(coro, name=name, context=contextvars.Context())


class Tasks:
    """Spawn, bound and cancel-and-await the tasks of one connection."""

    def __init__(self) -> None:
        self.owned: set[asyncio.Task[Any]] = set()
        self.handlers = 0  # client requests being answered (counted against the in-flight limit)
        self.last_active = time.monotonic()  # when a request last began or ended
        self.closed = False

    def handling(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Own the running task while it answers a client request, within KASOCKI_MAX_INFLIGHT_REQUESTS."""
        return _Handling(self)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Start a background task owned here."""
        task = asyncio.ensure_future(coro)
        if self.closed:  # nothing may outlive close(): the task is cancelled before it runs
            task.cancel()
            return task
        self.owned.add(task)
        task.add_done_callback(self.owned.discard)
        return task

    async def close(self) -> None:
        """Cancel every owned task but the caller's own, and await them all."""
        self.closed = True
        current = asyncio.current_task()
        tasks = [task for task in self.owned if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.owned.clear()


class _Handling:
    """``Tasks.handling()``, a plain class: every request enters one, and a generator-based one costs twice as much."""

    __slots__ = ("_task", "_tasks")

    def __init__(self, tasks: Tasks) -> None:
        self._tasks = tasks

    async def __aenter__(self) -> None:
        tasks = self._tasks
        task = asyncio.current_task()
        if tasks.closed or task is None:
            raise asyncio.CancelledError
        limit = conf.max_inflight_requests
        if tasks.handlers >= limit:
            raise TooManyRequestsError(f"at most {limit} requests may wait for an answer at once", limit=limit)
        tasks.owned.add(task)
        tasks.handlers += 1
        tasks.last_active = time.monotonic()
        self._task = task

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        tasks = self._tasks
        tasks.owned.discard(self._task)
        tasks.handlers -= 1
        tasks.last_active = time.monotonic()
