"""Publish this process's live connections for the admin, and carry out the disconnects it asks for.

Each server process runs one publisher task, owned by its ``Service`` and started
at the first connection (daphne sends no lifespan events, so no startup hook).
Every KASOCKI_REGISTRY_SECONDS it upserts one ``LiveConnection`` row per
connection, deletes its rows for connections that left, deletes the rows of
processes that published nothing for ``DEAD_AFTER`` intervals, and disconnects
the connections whose row an admin marked. Hosts compare ``last_seen`` times
written by each other, so their clocks must agree (NTP) to well within an interval.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import os
import socket
import time
import weakref
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async
from django.db import transaction

from .conf import conf
from .kafka import cluster
from .models import LiveConnection

if TYPE_CHECKING:
    from .service import Connection, Service

logger = logging.getLogger(__name__)

TASK_NAME = "kasocki-registry"
# A process whose rows were not refreshed for this many intervals is gone: its rows are deleted.
DEAD_AFTER = 3
# Upserts refresh these columns; ``disconnect_requested`` belongs to the admin and is never overwritten.
UPDATE_FIELDS = ["address", "username", "subscriptions", "filters", "delivered", "lag", "last_seen"]

Row = dict[str, Any]

_process_ids: weakref.WeakKeyDictionary[Service, str] = weakref.WeakKeyDictionary()
_numbers = itertools.count()


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
    # A fresh context: the task serves the whole process, not the connection whose connect started it.
    publisher = Publisher(service, process_id(service))
    task = loop.create_task(publisher.run(), name=TASK_NAME, context=contextvars.Context())
    service.background.add(task)
    task.add_done_callback(service.background.discard)


def lag_of(connection: Connection, latest: dict[tuple[str, int], int]) -> dict[str, int | None] | None:
    """Latest offset minus the next offset to read, by ``topic/partition``; None where the latest is unknown."""
    if connection.assignments is None:
        return None
    lag: dict[str, int | None] = {}
    positions = connection.positions
    for assignment in connection.assignments:
        key = assignment.tp
        # Partitions added after the subscribe have no position until a record is taken from them.
        position = positions.get(key, assignment.offset)
        high = latest.get(key)
        lag[f"{key[0]}/{key[1]}"] = None if high is None else max(high - position, 0)
    return lag


def row_of(connection: Connection, latest: dict[tuple[str, int], int]) -> Row:
    """What the admin shows of one connection, as plain values safe to hand to a database thread."""
    assignments = connection.assignments
    return {
        "sid": connection.sid,
        "address": connection.address,
        "username": connection.principal.username,
        "subscriptions": None if assignments is None else [a.to_dict() for a in assignments],
        "filters": connection.filters,
        "delivered": connection.delivered,
        "lag": lag_of(connection, latest),
        "connected_since": datetime.fromtimestamp(connection.connected_at, UTC),
    }


@database_sync_to_async
def store(process: str, rows: list[Row], replace: bool, dead_after: float) -> set[str]:
    """Write this process's rows, drop the dead processes' rows; the sids an admin asked to disconnect.

    ``replace`` False means this process has no rows to write and wrote none last time:
    then nothing is written unless a dead process left rows (an idle process only reads).
    """
    now = datetime.now(UTC)
    requested: set[str] = set()
    if replace:
        with transaction.atomic():
            LiveConnection.objects.bulk_create(
                [LiveConnection(process=process, last_seen=now, **row) for row in rows],
                update_conflicts=True,
                unique_fields=["process", "sid"],
                update_fields=UPDATE_FIELDS,
                batch_size=500,
            )
            # Every row written above has last_seen == now: older ones are connections that left.
            LiveConnection.objects.filter(process=process, last_seen__lt=now).delete()
            flagged = LiveConnection.objects.filter(process=process, disconnect_requested=True)
            requested = set(flagged.values_list("sid", flat=True))
    dead = LiveConnection.objects.filter(last_seen__lt=now - timedelta(seconds=dead_after)).exclude(process=process)
    if dead.exists():
        processes = sorted(set(dead.values_list("process", flat=True)))
        count, _ = dead.delete()
        logger.info("registry: removed %d rows of server processes gone quiet: %s", count, ", ".join(processes))
    return requested


@database_sync_to_async
def forget(process: str) -> None:
    LiveConnection.objects.filter(process=process).delete()


class Publisher:
    """Keeps one service's ``LiveConnection`` rows current; runs as the service's background task."""

    def __init__(self, service: Service, process: str) -> None:
        self.service = service
        self.process = process
        self._latest: dict[tuple[str, int], int] = {}  # latest offsets found by the last watermark lookup
        self._lookup: asyncio.Task[dict[tuple[str, int], tuple[int, int]]] | None = None
        self._disconnecting: set[str] = set()
        self._published = False  # rows of this process may exist
        self._failing = False

    async def run(self) -> None:
        """Publish every KASOCKI_REGISTRY_SECONDS until cancelled; errors are logged and the loop goes on."""
        logger.info("registry: publishing the live connections of %s", self.process)
        try:
            while True:
                started = time.monotonic()
                try:
                    await self.publish()
                except Exception:
                    if not self._failing:
                        logger.exception("registry %s: publishing the live connections failed", self.process)
                    self._failing = True
                else:
                    if self._failing:
                        logger.info("registry %s: publishing works again", self.process)
                    self._failing = False
                interval = conf.registry_seconds
                await asyncio.sleep(max(interval - (time.monotonic() - started), interval / 10))
        finally:
            await self._stop()

    async def publish(self) -> None:
        """One round: refresh latest offsets, write the rows, disconnect the clients an admin marked."""
        interval = conf.registry_seconds
        assigned: set[tuple[str, int]] = {a.tp for c in self.service.connections.values() for a in c.assignments or ()}
        await self._refresh_latest(assigned, interval / 2)
        # Taken after the wait: connections that left meanwhile get no row.
        connections = [c for c in self.service.connections.values() if not c.closed]
        rows = [row_of(c, self._latest) for c in connections]
        requested = await store(self.process, rows, bool(rows) or self._published, interval * DEAD_AFTER)
        self._published = bool(rows)
        self._disconnecting &= {c.sid for c in connections}
        for connection in connections:
            if connection.sid in requested and connection.sid not in self._disconnecting and not connection.closed:
                self._disconnecting.add(connection.sid)
                logger.info("sid %s: disconnecting at an admin's request", connection.sid)
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
        if self._published:
            try:
                await asyncio.wait_for(forget(self.process), conf.registry_seconds)
            except Exception as exc:
                logger.warning("registry %s: removing its rows failed: %s", self.process, exc)
