"""Giving the memory clients used back to the operating system once they are gone.

glibc's malloc keeps what a process frees for reuse: only a free chunk at the very top
of a heap goes back by itself, and the messages of a client catching up are megabytes
of small blocks spread over the main heap and over the arenas of librdkafka's threads.
Measured (uvicorn, ten clients stalled while catching up, then gone): 136 MB of RSS
stayed, of which ``malloc_trim(0)`` returned 130 MB in 10 ms. So a moment after a
client leaves or a consumer closes (``give_back_soon``), the process trims, in a thread
and at most once per ``INTERVAL_SECONDS``. The heap is the process's, so there is one
trimmer per process. Where malloc_trim does not exist (not glibc), nothing is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

logger = logging.getLogger(__name__)

# After the last release, the trim waits this long: the frees of a closing connection (engine.io's
# and the server's buffers, a consumer's threads) come in the moments after it closed.
DELAY_SECONDS = 0.5
# Trims are at least this far apart, however many clients leave.
INTERVAL_SECONDS = 2.0


def _find_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        function = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int
    trim: Callable[[int], int] = function
    return trim


malloc_trim = _find_malloc_trim()


class Trimmer:
    """Trims the process's heaps a moment after memory was let go."""

    def __init__(self, trim: Callable[[int], int] | None = malloc_trim) -> None:
        self._trim = trim
        self._timer: asyncio.TimerHandle | None = None
        self._timer_loop: asyncio.AbstractEventLoop | None = None
        self._running: asyncio.Future[int] | None = None
        self._last = -INTERVAL_SECONDS
        self.trims = 0

    def soon(self) -> None:
        """Memory was let go (a client left, a consumer closed): trim once things settled."""
        loop = asyncio.get_running_loop()
        if self._timer is not None and self._timer_loop is not loop:
            self._timer.cancel()  # made on another loop (tests run one per test): start over on this one
            self._timer = None
        if self._trim is None or self._timer is not None:
            return
        self._timer_loop = loop
        delay = max(DELAY_SECONDS, self._last + INTERVAL_SECONDS - loop.time())
        self._timer = loop.call_later(delay, self._start)

    def _start(self) -> None:
        self._timer = None
        running = self._running
        if running is not None and not running.done() and running.get_loop() is asyncio.get_running_loop():
            self.soon()  # one at a time: again after this one
            return
        assert self._trim is not None
        loop = asyncio.get_running_loop()
        self._last = loop.time()
        self.trims += 1
        # In a thread: ctypes lets go of the GIL, and the loop never waits for the trim.
        self._running = loop.run_in_executor(None, self._trim, 0)
        self._running.add_done_callback(_log_failure)

    async def close(self) -> None:
        """No more trims; waits for one under way."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        running, self._running = self._running, None
        if running is not None and running.get_loop() is asyncio.get_running_loop():
            await asyncio.gather(running, return_exceptions=True)


def _log_failure(future: asyncio.Future[int]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.warning("trimming the heap failed: %r", future.exception())


_trimmer = Trimmer()


def give_back_soon() -> None:
    """Memory was let go (a client left, a consumer closed): the process trims its heaps in a moment."""
    _trimmer.soon()


async def close() -> None:
    """No more trims (the service's shutdown); waits for one under way."""
    await _trimmer.close()
