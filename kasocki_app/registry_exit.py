"""Remove this process's live-connection rows when it stops, whether or not its server cancels the publisher.

A cancelled publisher removes its own rows (registry.py). Servers do not all cancel it:
daphne stops Twisted's reactor and exits with the task pending; uvicorn, after its graceful
shutdown, restores the default SIGTERM handler and raises SIGTERM again, so that neither
pending tasks nor ``atexit`` callbacks run. So a SIGTERM handler, chained before the one the
server installed, and an ``atexit`` callback remove the rows too, synchronously; a
publication still in flight then writes nothing (``registry_store.EXITING``).
"""

from __future__ import annotations

import atexit
import functools
import logging
import signal
import threading
from types import FrameType
from typing import Any

from django.db import connections

from . import registry_store as store

logger = logging.getLogger(__name__)

# A stopping process waits at most this long for a publication in flight before removing its rows.
EXIT_WAIT_SECONDS = 5.0

# Process ids that may have rows in the database: removed when the process stops if still there.
_unforgotten: set[str] = set()
_hooks: set[str] = set()


def may_have_rows(process: str) -> None:
    """``process`` is about to write rows: remove them at exit unless ``forgotten`` is called first."""
    _unforgotten.add(process)
    if "atexit" not in _hooks:
        _hooks.add("atexit")
        atexit.register(remove_rows_now)


def has_rows(process: str) -> bool:
    return process in _unforgotten


def forgotten(process: str) -> None:
    """``process``'s rows were removed."""
    _unforgotten.discard(process)


def remove_rows_now() -> None:
    """Remove every row this process may have left, synchronously and for good: it stops."""
    processes = sorted(_unforgotten)
    try:
        if store.forget_all(processes, EXIT_WAIT_SECONDS):
            _unforgotten.difference_update(processes)
        else:
            logger.warning("registry: a publication did not end in %gs; rows are left to expire", EXIT_WAIT_SECONDS)
    except Exception as exc:  # the database may be gone too; the rows then expire
        logger.warning("registry: removing the rows of %s failed: %s", ", ".join(processes), exc)


def _remove_rows_in_thread() -> None:
    try:
        remove_rows_now()
    finally:
        connections.close_all()  # this thread's connections only


def install_sigterm_handler() -> None:
    """Once per process, in the main thread: chain a SIGTERM handler before the server's own."""
    if "sigterm" in _hooks or threading.current_thread() is not threading.main_thread():
        return
    _hooks.add("sigterm")
    previous = signal.getsignal(signal.SIGTERM)
    if previous is not signal.SIG_IGN and previous is not None:
        signal.signal(signal.SIGTERM, functools.partial(_on_sigterm, previous))


def _on_sigterm(previous: Any, signum: int, frame: FrameType | None) -> None:
    # In a thread: this one most likely runs the event loop, where Django refuses synchronous queries.
    worker = threading.Thread(target=_remove_rows_in_thread, name="kasocki-registry-stop", daemon=True)
    worker.start()
    worker.join(EXIT_WAIT_SECONDS + 1)
    if callable(previous):
        previous(signum, frame)
    else:  # the default: end as SIGTERM would have
        signal.signal(signum, signal.SIG_DFL)
        signal.raise_signal(signum)
