"""The tasks one connection owns: client requests in flight (bounded) and background work.

Every task has this owner, which cancels and awaits it when the connection closes,
whatever moment the client leaves at.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any, TypeVar

from .conf import conf
from .exceptions import TooManyRequestsError

T = TypeVar("T")


class Tasks:
    """Spawn, bound and cancel-and-await the tasks of one connection."""

    def __init__(self) -> None:
        self.owned: set[asyncio.Task[Any]] = set()
        self.handlers = 0  # client requests being answered (counted against the in-flight limit)
        self.last_active = time.monotonic()  # when a request last began or ended
        self.closed = False

    @contextlib.asynccontextmanager
    async def handling(self) -> AsyncIterator[None]:
        """Own the running task while it answers a client request, within KASOCKI_MAX_INFLIGHT_REQUESTS."""
        task = asyncio.current_task()
        if self.closed or task is None:
            raise asyncio.CancelledError
        limit = conf.max_inflight_requests
        if self.handlers >= limit:
            raise TooManyRequestsError(f"at most {limit} requests may wait for an answer at once", limit=limit)
        self.owned.add(task)
        self.handlers += 1
        self.last_active = time.monotonic()
        try:
            yield
        finally:
            self.owned.discard(task)
            self.handlers -= 1
            self.last_active = time.monotonic()

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
