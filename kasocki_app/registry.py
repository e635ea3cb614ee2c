"""Publish this process's live connections for the admin, and carry out the disconnects it asks for.

Each server process runs one publisher task, owned by its ``Service`` and started
at the first connection (daphne sends no lifespan events, so no startup hook).
Every KASOCKI_REGISTRY_SECONDS it writes a heartbeat and the rows of its connections
that changed, and removes the rows of processes whose heartbeat stopped for
``registry_store.dead_after`` (see there for the lock order). In between it
looks for disconnect requests every ``poll_seconds()``: one cheap read.

A cancelled publisher removes its rows; ``registry_exit`` removes them when the
process stops without cancelling it.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import socket
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from channels.db import database_sync_to_async

from . import registry_exit
from . import registry_store as store
from .cluster import cluster
from .conf import conf
from .tailing import TailReader
from .tasks import process_task
from .threads import within
from .types import TopicPartition

if TYPE_CHECKING:
    from .service import Connection, Service

logger = logging.getLogger(__name__)

TASK_NAME = "kasocki-registry"
# Disconnect requests are looked for at least this often, so that one takes effect within seconds.
POLL_SECONDS = 1.0

Row = store.Row
T = TypeVar("T")

_process_ids: weakref.WeakKeyDictionary[Service, str] = weakref.WeakKeyDictionary()
_numbers = itertools.count()


# Rows looked at again per publication (registry cost bounded whatever the number of connections).
ROWS_PER_ROUND = 500


def poll_seconds() -> float:
    """Seconds between two looks for disconnect requests."""
    return min(POLL_SECONDS, conf.registry_seconds / 2)


def process_id(service: Service) -> str:
    """``host:pid`` naming the service's rows; a second service in one process gets ``host:pid/1`` and so on."""
    if service not in _process_ids:
        number = next(_numbers)
        suffix = f"/{number}" if number else ""
        _process_ids[service] = f"{socket.gethostname()}:{os.getpid()}{suffix}"
    return _process_ids[service]


def ensure_started(service: Service) -> None:
    """Start the service's publisher on the running loop, unless it already runs there."""
    loop = asyncio.get_running_loop()
    for task in list(service.background):
        if task.get_name() != TASK_NAME:
            continue
        if task.get_loop().is_closed():  # a loop that ended without cancelling it (tests)
            service.background.discard(task)
        elif task.get_loop() is loop and not task.done():
            return
    registry_exit.install_sigterm_handler()
    publisher = Publisher(service, process_id(service))
    task = process_task(publisher.run(), TASK_NAME)
    service.background.add(task)
    task.add_done_callback(service.background.discard)


def partitions_of(connection: Connection, latest: dict[tuple[str, int], int]) -> list[dict[str, Any]] | None:
    """Per assigned partition: the next offset to read and the latest offset minus it (None if unknown)."""
    if connection.assignments is None:
        return None
    partitions: list[dict[str, Any]] = []
    positions = connection.positions
    for assignment in connection.assignments:
        key = assignment.tp
        # Partitions added after the subscribe have no position until a record is taken from them.
        position = positions.get(key, assignment.offset)
        high = latest.get(key)
        lag = None if high is None else max(high - position, 0)
        partitions.append(
            {
                "topic": key.topic,
                "partition": key.partition,
                "position": position,
                "lag": lag,
                "reading": reading_of(connection, key),
            }
        )
    return partitions


def reading_of(connection: Connection, tp: TopicPartition) -> str:
    """How a partition is read: ``tail`` (the shared live tail), ``catch-up`` (own consumer until it
    reaches the tail) or ``own`` (KASOCKI_LIVE_TAIL off)."""
    reader = connection.feed.reader
    if isinstance(reader, TailReader):
        return reader.state(tp) or "own"
    return "own"


def row_of(connection: Connection, latest: dict[tuple[str, int], int]) -> Row:
    """What the admin shows of one connection, as plain values safe to hand to a database thread."""
    assignments = connection.assignments
    return {
        "sid": connection.sid,
        "transport": connection.transport,
        "address": connection.address,
        "username": connection.principal.username,
        "subscriptions": None if assignments is None else [a.to_dict() for a in assignments],
        "filters": connection.filters,
        "delivered": connection.delivered,
        "partitions": partitions_of(connection, latest),
        "connected_since": datetime.fromtimestamp(connection.connected_at, UTC),
    }


async def in_thread(func: Callable[..., T], *args: Any) -> T:
    """Run a ``registry_store`` function in the database thread."""
    result: T = await database_sync_to_async(func)(*args)
    return result


class Publisher:
    """Keeps one service's ``LiveConnection`` rows current; runs as the service's background task."""

    def __init__(self, service: Service, process: str) -> None:
        self.service = service
        self.process = process
        self._latest: dict[tuple[str, int], int] = {}  # latest offsets found by the last watermark lookup
        self._lookup: asyncio.Task[dict[tuple[str, int], tuple[int, int]]] | None = None
        self._written: dict[str, Row] = {}  # the rows in the database, as this publisher last wrote them
        self._registered = False  # the database holds this process's heartbeat and ``_written``
        self._disconnecting: set[str] = set()
        self._failing = False

    async def run(self) -> None:
        """Publish every KASOCKI_REGISTRY_SECONDS and poll in between until cancelled; errors are logged."""
        logger.info("registry: publishing the live connections of %s", self.process)
        next_publish = 0.0
        try:
            while True:
                started = time.monotonic()
                publishing = started >= next_publish
                if publishing:
                    next_publish = started + conf.registry_seconds
                try:
                    await (self.publish() if publishing else self.poll())
                except Exception:
                    if not self._failing:
                        logger.exception("registry %s: publishing the live connections failed", self.process)
                    self._failing = True
                else:
                    if self._failing:
                        logger.info("registry %s: publishing works again", self.process)
                    self._failing = False
                pause = poll_seconds()
                await asyncio.sleep(max(pause - (time.monotonic() - started), pause / 10))
        finally:
            await self._stop()

    async def publish(self) -> None:
        """One round: refresh latest offsets, heartbeat, write what changed, reap, disconnect as asked."""
        if store.EXITING.is_set():
            return
        interval = conf.registry_seconds
        assigned: set[tuple[str, int]] = {a.tp for c in self.service.connections.values() for a in c.assignments or ()}
        await self._refresh_latest(assigned, poll_seconds() / 2)
        # Taken after the wait: connections that left meanwhile get no row.
        live = {sid: c for sid, c in self.service.connections.items() if not c.closed}
        rows = self._rows(live)
        changed = {sid for sid, row in rows.items() if self._written.get(sid) is not row}
        gone = self._written.keys() - rows.keys()
        registry_exit.may_have_rows(self.process)
        try:
            requested = await in_thread(store.publish, self.process, interval, rows, changed, gone, self._registered)
        except store.Exiting:
            return
        except BaseException:
            self._registered = False  # the database may hold either state: rewrite it all next time
            raise
        self._written, self._registered = rows, True
        self._disconnect(requested)
        await in_thread(store.reap, self.process)

    def _rows(self, live: dict[str, Connection]) -> dict[str, Row]:
        """Every live connection's row: fresh for new ones and the longest unwritten, as last written for the rest.

        At most ROWS_PER_ROUND rows are looked at again per publication, new connections first,
        then those written longest ago: the database's cost stays bounded with 10,000 clients
        (each row is then refreshed every ``connections / ROWS_PER_ROUND`` publications).
        """
        written = self._written
        fresh = [sid for sid in live if sid not in written][:ROWS_PER_ROUND]
        fresh += [sid for sid in written if sid in live][: ROWS_PER_ROUND - len(fresh)]  # oldest written first
        rows = {sid: row for sid, row in written.items() if sid in live}
        for sid in fresh:
            row = row_of(live[sid], self._latest)
            if written.get(sid) != row:
                rows.pop(sid, None)  # re-inserted last: written most recently
                rows[sid] = row
            else:
                rows[sid] = rows.pop(sid)  # looked at: its turn comes again after the others'
        for sid in live.keys() - rows.keys():  # new beyond this round's share: a first row all the same
            rows[sid] = row_of(live[sid], self._latest)
        return rows

    async def poll(self) -> None:
        """Disconnect the clients an admin marked since the last look."""
        if self._registered and self.service.connections and not store.EXITING.is_set():
            self._disconnect(await in_thread(store.requested, self.process))

    def _disconnect(self, requested: set[str]) -> None:
        self._disconnecting &= self.service.connections.keys()
        for sid in requested - self._disconnecting:
            connection = self.service.connections.get(sid)
            if connection is not None and not connection.closed:
                self._disconnecting.add(sid)
                logger.info("sid %s: disconnecting at an admin's request", sid)
                connection.spawn(connection.outbound.disconnect())

    async def _refresh_latest(self, partitions: set[tuple[str, int]], wait: float) -> None:
        """Update the latest offsets, waiting at most ``wait`` seconds: a slow Kafka only makes lag stale."""
        if self._lookup is None:
            if not partitions:
                self._latest = {}
                return
            self._lookup = asyncio.ensure_future(cluster.watermarks(sorted(partitions)))
        done, _ = await asyncio.wait({self._lookup}, timeout=wait)
        if not done:
            return
        lookup, self._lookup = self._lookup, None
        try:
            marks = lookup.result()
        except Exception as exc:  # a topic deleted under a subscription fails the batch until it is dropped
            logger.warning("registry %s: looking up latest offsets failed: %s", self.process, exc)
            return
        self._latest = {tp: high for tp, (_low, high) in marks.items()}

    async def _stop(self) -> None:
        """Cancel the lookup in flight and remove this process's rows (a clean exit need not wait for others)."""
        if self._lookup is not None:
            self._lookup.cancel()
            await asyncio.gather(self._lookup, return_exceptions=True)
            self._lookup = None
        if registry_exit.has_rows(self.process):
            try:
                await within(in_thread(store.forget, self.process), conf.registry_seconds + 5)
            except Exception as exc:  # left to the exit hook, or to expire
                logger.warning("registry %s: removing its rows failed: %s", self.process, exc)
            else:
                registry_exit.forgotten(self.process)
