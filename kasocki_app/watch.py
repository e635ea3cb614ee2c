"""Cluster and whitelist changes seen once per process, so that idle connections need not look themselves.

Every KASOCKI_ASSIGNMENT_CHECK_SECONDS one task takes the catalog's fingerprint (the
whitelist entries, the allowed topics of the settings, the cluster's topics and their
partition counts: everything a connection's available topics are made of). When it
changed, ``generation`` moves on and the readers of the live tail are woken; each
connection then compares its subscription with the cluster once (``feed.py``). A
connection whose generation is current does not look at all: an idle connection on the
tail wakes for records and for changes only. When the fingerprint cannot be taken (Kafka
unreachable), every interval counts as a change, so connections report the error. When the
watch has not looked for two intervals (a busy event loop starves it), connections look by
the clock themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable

from .assignments import Catalog
from .conf import conf
from .tasks import process_task

logger = logging.getLogger(__name__)

WATCH_NAME = "kasocki-cluster-watch"
# The shortest interval between two looks, whatever the setting says.
MIN_INTERVAL = 0.05


class ClusterWatch:
    """One look at the cluster per interval for the whole process; ``generation`` counts changes."""

    def __init__(
        self, catalog: Catalog, on_change: Callable[[], None], active: Callable[[], bool] = lambda: True
    ) -> None:
        self.generation = 0
        self._catalog = catalog
        self._on_change = on_change
        self._active = active  # False: no connection needs a look (the process costs the cluster nothing)
        self._seen: Hashable | None = None
        self._task: asyncio.Task[None] | None = None
        self._looked_at = float("-inf")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def current(self, now: float) -> bool:
        """Whether the watch looked lately: a loop kept busy (a stream with a long backlog sends without
        yielding) may starve it, and then connections look by the clock themselves, as without a watch."""
        return self.running and now - self._looked_at <= 2 * max(conf.assignment_check_seconds, MIN_INTERVAL) + 0.5

    def ensure_started(self) -> None:
        """Start watching (lazily, at the first connection: daphne sends no lifespan events)."""
        if not self.running:
            self._task = process_task(self._run(), WATCH_NAME)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def look(self) -> None:
        """Take the fingerprint once; a change (or a failure) moves ``generation`` on and wakes the tail."""
        try:
            seen: Hashable | None = await self._catalog.fingerprint()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Kafka or the database unreachable: connections look and report it
            logger.debug("cluster watch: %r", exc)
            seen = None
        self._looked_at = time.monotonic()
        if seen is None or seen != self._seen:
            self._seen = seen
            self.generation += 1
            self._on_change()

    async def _run(self) -> None:
        while True:
            if self._active():
                await self.look()
            await asyncio.sleep(max(conf.assignment_check_seconds, MIN_INTERVAL))
