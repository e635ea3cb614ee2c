"""The connections of one server process, by socket.io sid, with what they share.

What they share: the connection limits, the live tail (one Kafka reader for the
partitions read at the head, KASOCKI_LIVE_TAIL), the Kafka consumer budget
(KASOCKI_MAX_CONSUMERS) and the process-wide background tasks.
"""

from __future__ import annotations

import asyncio
from typing import Any

from . import assignments, kafka, memory
from .access import ANONYMOUS, Principal
from .assignments import Catalog
from .conf import conf
from .connection import Connection
from .exceptions import TooManyConsumersError
from .kafka import ConsumerCounts, KafkaSource
from .limits import ConnectionLimiter
from .reader import Reader, ReaderFactory
from .tail import LiveTail
from .tailing import TailReader
from .types import Outbound
from .watch import ClusterWatch

__all__ = ["Connection", "ConsumerBudget", "Service", "process_service", "serve"]


class ConsumerBudget:
    """Readers are opened within KASOCKI_MAX_CONSUMERS, counting the open ones and those being created."""

    def __init__(self, factory: ReaderFactory) -> None:
        self._factory = factory
        self.starting = 0

    async def open(self) -> Reader:
        if ConsumerCounts.open + self.starting >= conf.max_consumers:
            raise TooManyConsumersError(
                "this server runs as many Kafka consumers as it may; try again later", limit=conf.max_consumers
            )
        self.starting += 1
        try:
            return await self._factory()
        finally:
            self.starting -= 1


class Service:
    """The connections of this process, by socket.io sid."""

    def __init__(
        self, reader_factory: ReaderFactory = KafkaSource.create, catalog: Catalog = assignments.CATALOG
    ) -> None:
        self.connections: dict[str, Connection] = {}
        self.limiter = ConnectionLimiter()
        self.consumers = ConsumerBudget(reader_factory)
        self.catalog = catalog
        self.tail = LiveTail(reader_factory, catalog, kafka.settings_key)
        self.watch = ClusterWatch(catalog, self.tail.nudge, lambda: bool(self.connections))
        # Process-wide tasks (the registry publisher), started lazily: daphne sends no lifespan events.
        self.background: set[asyncio.Task[Any]] = set()
        self.stopping = False  # the server stops (shutdown.py): no new streams or connections

    def open(
        self,
        sid: str,
        outbound: Outbound,
        principal: Principal = ANONYMOUS,
        address: str = "",
        transport: str = "socket.io",
    ) -> Connection:
        """Register an admitted client (see ``limiter``)."""
        self.watch.ensure_started()
        connection = Connection(
            sid, outbound, self.open_reader, self.catalog, principal, address, self.watch, transport
        )
        self.connections[sid] = connection
        return connection

    async def open_reader(self) -> Reader:
        """A connection's reader: on the live tail (catching up on its own consumer), or its own consumer."""
        if conf.live_tail:
            return TailReader(self.tail, self.consumers.open)
        return await self.consumers.open()

    def get(self, sid: str) -> Connection | None:
        return self.connections.get(sid)

    async def close(self, sid: str) -> None:
        connection = self.connections.pop(sid, None)
        if connection is not None:
            self.limiter.release(connection.address)
            await connection.close()
            memory.give_back_soon()  # its buffers, engine.io's and the server's

    async def shutdown(self) -> None:
        """Cancel and await the background tasks and close the live tail (connections close by their disconnects)."""
        tasks = list(self.background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.background.difference_update(tasks)
        await self.watch.close()
        await self.tail.close()
        await memory.close()


_process_service: Service | None = None


def serve(service: Service) -> None:
    """Make ``service`` the one this process's HTTP streams join (the socket.io server's: limits are shared)."""
    global _process_service
    _process_service = service


def process_service() -> Service:
    """The service of this process: the socket.io server's, or one of its own for a site without socket.io."""
    if _process_service is None:
        serve(Service())
    assert _process_service is not None
    return _process_service
