"""The application's own calls in progress: engine.io requests and websockets, HTTP streams.

A stop (``shutdown.py``) waits until they have returned before it lets the server stop its
loop. A call left suspended when the loop stops is closed by the exiting interpreter, and one
waiting in ``asyncio.Queue.get`` for a message the server had already put (the disconnect of a
websocket the stop closed) crashed the process: the ValueError that ``get`` then raises
formats the repr of a future, whose function the exit had already cleared (SIGSEGV, seen
under ``runserver``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

_count = 0


@contextlib.contextmanager
def serving() -> Iterator[None]:
    """Around one of the app's own calls (the ASGI wrapper's)."""
    global _count
    _count += 1
    try:
        yield
    finally:
        _count -= 1


def in_progress() -> int:
    return _count
