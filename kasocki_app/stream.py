"""A connection's stream (``start``/``stop``): ordering, emitting, backpressure and slow clients.

One explicit ``Phase`` says what the stream does. ``start`` and ``stop`` take effect in
the order they arrive, even while a start waits for a subscribe still in progress:
each counts as a new request, and a start that a later request superseded does nothing.
A stop is answered once the stream task has ended, so everything the stream emitted
reaches the client before the stop's answer; what it had taken but not sent is kept
for the next ``consume`` or ``start``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import metrics
from .conf import conf
from .exceptions import AlreadyStartedError, InternalError, KasockiError, SlowClientError
from .feed import Feed, Spawn
from .protocol import StartOptions
from .types import Outbound, Taken

logger = logging.getLogger(__name__)


# A stream paused this long for its client lets go of its reader's consumer (Feed.release).
RELEASE_SECONDS = 1.0


class Phase(enum.Enum):
    """What a connection's stream is doing."""

    STOPPED = "stopped"  # no stream; start may begin one
    STARTING = "starting"  # a start waits for the subscribe, or for the previous stream to end
    RUNNING = "running"  # taking and emitting
    IDLE = "idle"  # waiting for records, holding none: a stop ends it at once
    PAUSED = "paused"  # the client's backlog is over the cap: not reading Kafka, holding nothing
    STOPPING = "stopping"  # stop was asked; the task ends after the message it is sending


STREAMING = frozenset({Phase.RUNNING, Phase.IDLE, Phase.PAUSED})


class Stream:
    """Emits what the feed takes while started; pauses for a slow client and cuts a stalled one."""

    def __init__(self, sid: str, feed: Feed, outbound: Outbound, spawn: Spawn[Any]) -> None:
        self.sid = sid
        self.phase = Phase.STOPPED
        self._feed = feed
        self._outbound = outbound
        self._spawn = spawn
        self._task: asyncio.Task[None] | None = None
        self._requests = 0  # start and stop requests so far: a start acts only if it is still the latest

    @property
    def streaming(self) -> bool:
        return self.phase in STREAMING

    @property
    def done(self) -> bool:
        """No stream task is left running."""
        return self._task is None or self._task.done()

    async def start(self, options: StartOptions, subscribed: Callable[[], Awaitable[None]]) -> None:
        """Start streaming once ``subscribed`` returns (it raises if there is no subscription)."""
        if self.phase is Phase.STARTING or self.streaming:
            raise AlreadyStartedError("this connection is already streaming; emit stop first")
        self._requests += 1
        request = self._requests
        self.phase = Phase.STARTING
        try:
            await subscribed()
            if self._task is not None:  # a stop is still finishing the previous stream
                await asyncio.wait({self._task})
        except BaseException:
            if self._requests == request:
                self.phase = Phase.STOPPED if self.done else Phase.STOPPING
            raise
        if self._requests != request or self.phase is not Phase.STARTING:
            return  # a later stop (or close) took over
        self.phase = Phase.RUNNING
        self._task = self._spawn(self._run(options))

    async def stop(self) -> None:
        """Stop streaming; returns once the stream task has ended."""
        self._requests += 1
        task = self._task
        holding_nothing = self.phase in (Phase.IDLE, Phase.PAUSED)
        self.phase = Phase.STOPPED if task is None or task.done() else Phase.STOPPING
        if task is None:
            return
        if holding_nothing:
            task.cancel()  # waiting for records or for the client: end now (the reader keeps what it gets)
        await asyncio.wait({task})
        if self._task is task:
            self._task = None
            if self.phase is Phase.STOPPING:
                self.phase = Phase.STOPPED

    def close(self) -> None:
        """No more streaming (the connection's close cancels and awaits the task)."""
        self._requests += 1
        self.phase = Phase.STOPPED

    def _enter(self, phase: Phase) -> bool:
        """From RUNNING to ``phase``; False when a stop or close came meanwhile."""
        if self.phase is not Phase.RUNNING:
            return False
        self.phase = phase
        return True

    def _back_to_running(self, phase: Phase) -> None:
        if self.phase is phase:  # not if a stop or close came meanwhile
            self.phase = Phase.RUNNING

    async def _run(self, options: StartOptions) -> None:
        """Emit passing messages until stopped; failures go to the client as ``err`` and the loop goes on."""
        batch = options.batch
        while self.streaming:
            try:
                if self._outbound.backlog() > conf.max_backlog_bytes:
                    await self._wait_for_client()
                    continue
                taken = await self._feed.take_for_stream(batch or conf.consume_batch_size)
                if not taken:
                    if not self._enter(Phase.IDLE):
                        continue  # stopped while taking
                    try:
                        await self._feed.wait_for_records()
                    finally:
                        self._back_to_running(Phase.IDLE)
                    continue
                await self._emit(taken, batch)
                del taken  # sent: its decoded messages are not kept while the loop waits or pauses
                # engine.io's send does not yield, and a ring has thousands of records ready: without
                # this, a stop or a consume that arrived would wait until the whole backlog was sent.
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.exception("sid %s: stream loop failed", self.sid)
                error = exc if isinstance(exc, KasockiError) else InternalError("stream failed")
                await self._feed.report_once(error, "start")
                await asyncio.sleep(1.0)  # a persistent failure must not spin or flood the client

    async def _emit(self, taken: list[Taken], batch: int | None) -> None:
        feed = self._feed
        if not self.streaming:  # stopped while taking: keep it all for the next consume/start
            feed.pipeline.give_back(taken)
            return
        metrics.EMIT_BATCH.observe(len(taken))
        if batch:
            await self._outbound.emit("messages", [item[1] for item in taken])
            feed.count_delivered(len(taken))
            return
        gone = feed.pipeline.gone
        running = Phase.RUNNING  # while sending, only stop() or close() changes the phase
        sent = 0
        try:
            for index, item in enumerate(taken):
                if self.phase is not running:
                    # stop() arrived mid-batch: keep the rest for the next consume/start.
                    feed.pipeline.give_back(taken[index:])
                    break
                if item[0] in gone:
                    continue
                await self._outbound.emit_message(item)
                sent += 1
        finally:
            feed.count_delivered(sent)

    async def _wait_for_client(self) -> None:
        """Read no Kafka while the client's backlog is over the cap; drop a client stalled too long.

        Paused for RELEASE_SECONDS, the reader lets go of its catch-up consumer: what it prefetched
        (megabytes) would otherwise wait beside the backlog for as long as the client does not read.
        """
        deadline = time.monotonic() + conf.slow_client_timeout
        release_at: float | None = time.monotonic() + RELEASE_SECONDS
        if not self._enter(Phase.PAUSED):
            return
        try:
            # Going on below half the cap: a client reading slowly does not flip the stream at every message.
            while self.phase is Phase.PAUSED and self._outbound.backlog() > conf.max_backlog_bytes // 2:
                if time.monotonic() > deadline:
                    logger.warning("sid %s: disconnecting a client that stopped reading", self.sid)
                    self.phase = Phase.STOPPED
                    await self._feed.report(
                        SlowClientError(
                            f"the client read nothing for {conf.slow_client_timeout:g}s while "
                            f"{conf.max_backlog_bytes} bytes were waiting for it",
                            limit=conf.max_backlog_bytes,
                        ),
                        "start",
                    )
                    self._spawn(self._outbound.abort())
                    return
                if release_at is not None and time.monotonic() >= release_at:
                    release_at = None
                    await self._feed.release()
                    continue
                await asyncio.sleep(0.01)
        finally:
            self._back_to_running(Phase.PAUSED)
