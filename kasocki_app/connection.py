"""One client's connection (socket.io, or an HTTP stream): the protocol verbs over its feed, stream and tasks.

A ``Connection`` owns everything its client uses: a reader (opened lazily at the
first subscribe), its pipeline (filter, positions), its stream and the handler
tasks in flight. ``close()`` cancels and awaits all of them and closes the reader
off the event loop, whatever moment the client leaves at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

from django.utils.module_loading import import_string

from . import assignments, metrics
from .access import ANONYMOUS, Principal
from .assignments import Catalog
from .conf import conf
from .exceptions import (
    AlreadySubscribedError,
    IdleTimeoutError,
    InternalError,
    KafkaError,
    KasockiError,
    NotSubscribedError,
)
from .feed import Feed
from .pipeline import Pipeline
from .protocol import AssignmentRequest, parse_start, parse_subscription
from .reader import ReaderFactory
from .stream import Stream
from .tasks import Tasks
from .types import Delivered, Outbound, Position, TopicPartition
from .watch import ClusterWatch

logger = logging.getLogger(__name__)
T = TypeVar("T")


class Connection:
    """One socket.io client's subscription, filter and streams."""

    def __init__(
        self,
        sid: str,
        outbound: Outbound,
        open_reader: ReaderFactory,
        catalog: Catalog = assignments.CATALOG,
        principal: Principal = ANONYMOUS,
        address: str = "",
        watch: ClusterWatch | None = None,
        transport: str = "socket.io",
    ) -> None:
        self.sid = sid
        self.transport = transport  # "socket.io", or "sse" for an HTTP stream
        self.principal = principal
        self.address = address
        self.connected_at = time.time()
        self.closed = False
        self.outbound = outbound
        self.catalog = catalog
        self.tasks = Tasks()
        self.pipeline = Pipeline(sid, import_string(conf.message_builder))
        self.feed = Feed(sid, self.pipeline, catalog, principal, self.report, self.tasks.spawn, watch)
        self.stream = Stream(sid, self.feed, outbound, self.tasks.spawn)
        self._open_reader = open_reader
        self._subscribing = False
        self._subscribe_done = asyncio.Event()  # set when a subscribe in progress ends, either way

    # --- what the rest of the app reads ---------------------------------------

    @property
    def requests(self) -> list[AssignmentRequest]:
        return self.feed.requests

    @property
    def assignments(self) -> list[Position] | None:
        """Where each partition started (None before a subscribe)."""
        return self.feed.assigned

    @property
    def positions(self) -> dict[TopicPartition, int]:
        """The next offset to read per partition, as far as records were taken (delivered or filtered out)."""
        return self.pipeline.positions

    @property
    def filters(self) -> dict[str, Any] | None:
        return self.pipeline.filters

    @property
    def delivered(self) -> int:
        return self.feed.delivered

    @property
    def skipped(self) -> Counter[str]:
        return self.pipeline.skipped

    # --- task ownership -------------------------------------------------------

    def handling(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Own the running handler task (close() cancels it), within the in-flight limit."""
        return self.tasks.handling()

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Start a background task owned by this connection."""
        return self.tasks.spawn(coro)

    async def close(self) -> None:
        """Release everything: cancel and await tasks, close the reader off the loop."""
        if self.closed:
            return
        self.closed = True
        self.stream.close()
        await self.tasks.close()
        await self.feed.close()
        logger.info("sid %s closed after delivering %d messages", self.sid, self.delivered)

    # --- client events --------------------------------------------------------

    async def send_ready(self) -> None:
        """Tell the client which topics it may subscribe to."""
        try:
            available = await self.catalog.available_topics(self.principal, fresh=True)
        except KafkaError as exc:
            await self.report(exc, "connect")
            available = {}
        except Exception:  # the database, most likely: the client must still hear something
            logger.exception("sid %s: listing the allowed topics failed", self.sid)
            await self.report(InternalError("listing the allowed topics failed"), "connect")
            available = {}
        await self.outbound.emit("ready", sorted(available))

    async def subscribe(self, arg: Any) -> list[dict[str, Any]]:
        if self.feed.assigned is not None or self._subscribing:
            raise AlreadySubscribedError("this connection is already subscribed; reconnect to subscribe again")
        requests = parse_subscription(arg)
        self._subscribing = True
        self._subscribe_done.clear()
        try:
            positions = await assignments.resolve(requests, self.principal, self.catalog)
            reader = await self._open_reader()
            if self.closed:
                await reader.close()
                raise asyncio.CancelledError
            self.feed.reader = reader
            try:
                await reader.assign(positions)
            except Exception:  # a later subscribe opens another: this one must not linger
                self.feed.reader = None
                await reader.close()
                raise
            self.feed.subscribed(requests, positions)
        finally:
            self._subscribing = False
            self._subscribe_done.set()
        logger.info("sid %s subscribed to %s", self.sid, [p.to_dict() for p in positions])
        return [position.to_dict() for position in positions]

    def set_filter(self, arg: Any) -> dict[str, Any] | None:
        """Judge every message not yet taken by this filter; an invalid one keeps the previous."""
        return self.pipeline.set_filter(arg)

    async def consume(self) -> Delivered:
        """The next message that passes the filter, waiting for one to arrive.

        Waiting consume calls are served in arrival order before a running stream takes
        anything (the original's "a consume takes the next message itself").
        """
        if self._subscribing or self.feed.assigned is None:
            await self._require_subscribed()
        return await self.feed.consume()

    def consume_at_once(self) -> Delivered | None:
        """What ``consume`` answers when it needs no waiting (see ``Feed.consume_at_once``); None: call ``consume``."""
        if self.closed or self._subscribing or self.feed.assigned is None:
            return None
        self.tasks.last_active = time.monotonic()
        return self.feed.consume_at_once()

    async def start(self, arg: Any) -> None:
        await self.stream.start(parse_start(arg), self._require_subscribed)

    async def stop(self) -> None:
        await self.stream.stop()

    async def reap_when_idle(self) -> None:
        """Disconnect a connection nobody uses: not streaming, no request, for KASOCKI_IDLE_TIMEOUT."""
        timeout = conf.idle_timeout
        while not self.closed and timeout > 0:
            busy = self.stream.streaming or self.tasks.handlers > 0
            if busy:
                self.tasks.last_active = time.monotonic()
            idle_for = time.monotonic() - self.tasks.last_active
            if idle_for >= timeout:
                await self.report(IdleTimeoutError(f"the connection was idle for {timeout:g}s"), None)
                logger.info("sid %s: disconnecting an idle connection", self.sid)
                await self.outbound.disconnect()
                return
            # Busy: activity is noted when it ends (a stop, the last request), so looking again a
            # whole timeout later misses nothing, and an idle stream wakes no timer meanwhile.
            await asyncio.sleep(timeout - idle_for)

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
        if self.feed.assigned is None:
            raise NotSubscribedError("subscribe before consuming")
