"""The database side of the live-connections registry: what a process writes, reads and reaps.

Lock order: every transaction that changes one process's rows first writes that process's
``LiveProcess`` row (its owner updating the heartbeat, a reaper deleting it), then its
``LiveConnection`` rows, then its ``DisconnectRequest`` rows, and it touches no other process's
rows. Two writers of one process's rows so queue on one row and never deadlock; an admin only
inserts requests. Heartbeats and expiry use the database's clock (``Now()``), so hosts need not
agree on theirs. These functions are synchronous: call them from a thread.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

from .models import DisconnectRequest, LiveConnection, LiveProcess

logger = logging.getLogger(__name__)

# A process is counted as stopped only after this long without a heartbeat: publishing gaps of
# several intervals happen under load, and reaping a live process loses its admin's requests.
MIN_DEAD_AFTER_SECONDS = 30.0
DEAD_AFTER_INTERVALS = 10
# Upserts refresh these columns; ``connected_since`` never changes.
UPDATE_FIELDS = ["address", "username", "subscriptions", "filters", "delivered", "partitions", "updated"]
BATCH = 500

Row = dict[str, Any]

# Set once this process stops and removes its rows: no publication writes them again.
EXITING = threading.Event()
# One writer of this process's rows at a time: a publication, or the removal when it stops, whatever thread.
_writing = threading.Lock()


class Exiting(Exception):
    """Raised by a publication once the process stops: it wrote nothing."""


def dead_after(interval: float) -> float:
    """Seconds of silence after which a process publishing every ``interval`` seconds counts as stopped."""
    return max(MIN_DEAD_AFTER_SECONDS, DEAD_AFTER_INTERVALS * interval)


def publish(
    process: str, interval: float, rows: dict[str, Row], changed: set[str], gone: set[str], registered: bool
) -> set[str]:
    """Heartbeat and write the rows that changed (all when needed); the sids an admin asked to disconnect.

    ``rows`` are all current connections by sid; ``gone`` the sids written before that left.
    ``registered`` False (first publication, or the last one failed) writes everything and
    deletes any other row of ``process``; so does finding the process's heartbeat row gone
    (reaped while it was silent too long) or its row count off.
    """
    heartbeat = {
        "last_seen": Now(),
        "expires": Now() + timedelta(seconds=dead_after(interval)),
        "interval": interval,
        "connections": len(rows),
    }
    with _writing, transaction.atomic():
        if EXITING.is_set():
            raise Exiting
        full = not registered
        fields = heartbeat if registered else {**heartbeat, "started": Now()}
        if LiveProcess.objects.filter(process=process).update(**fields) == 0:
            LiveProcess.objects.create(process=process, started=Now(), **heartbeat)
            full = True
        mine = LiveConnection.objects.filter(process=process)
        if not full:
            _write(process, [rows[sid] for sid in changed])
            _delete(mine, gone)
            full = mine.count() != len(rows)  # rows lost or left behind some other way: rewrite
        if full:
            _write(process, list(rows.values()))
            _delete(mine, set(mine.values_list("sid", flat=True)) - rows.keys())
        requests = DisconnectRequest.objects.filter(process=process)
        requested = set(requests.values_list("sid", flat=True))
        _delete(requests, requested - rows.keys())  # connections that are gone need no disconnect
    return requested & rows.keys()


def _write(process: str, rows: list[Row]) -> None:
    now = timezone.now()
    LiveConnection.objects.bulk_create(
        [LiveConnection(process=process, updated=now, **row) for row in sorted(rows, key=lambda r: r["sid"])],
        update_conflicts=True,
        unique_fields=["process", "sid"],
        update_fields=UPDATE_FIELDS,
        batch_size=BATCH,
    )


def _delete(queryset: Any, sids: set[str]) -> None:
    ordered = sorted(sids)
    for start in range(0, len(ordered), BATCH):
        queryset.filter(sid__in=ordered[start : start + BATCH]).delete()


def requested(process: str) -> set[str]:
    """The sids of this process an admin asked to disconnect: one indexed read, cheap to poll."""
    return set(DisconnectRequest.objects.filter(process=process).values_list("sid", flat=True))


def reap(process: str) -> list[str]:
    """Remove the rows of processes whose heartbeat expired (never ``process``'s own); their names."""
    dead = LiveProcess.objects.filter(expires__lt=Now()).exclude(process=process).order_by("process")
    removed: list[str] = []
    for other in dead.values_list("process", flat=True):
        with transaction.atomic():
            # One DELETE ... WHERE (nothing refers to LiveProcess): a heartbeat that came meanwhile keeps it.
            count, _ = LiveProcess.objects.filter(process=other, expires__lt=Now()).delete()
            if count:
                LiveConnection.objects.filter(process=other).delete()
                DisconnectRequest.objects.filter(process=other).delete()
                removed.append(other)
    if removed:
        logger.info("registry: removed the rows of server processes gone quiet: %s", ", ".join(removed))
    return removed


def forget(process: str) -> None:
    """Remove all of this process's rows: its publisher stopped."""
    with _writing:
        _forget(process)


def forget_all(processes: list[str], timeout: float) -> bool:
    """Remove the rows of these processes for good, after any publication in flight; False on timeout."""
    EXITING.set()
    if not _writing.acquire(timeout=timeout):
        return False
    try:
        for process in processes:
            _forget(process)
    finally:
        _writing.release()
    return True


def _forget(process: str) -> None:
    with transaction.atomic():
        LiveProcess.objects.filter(process=process).delete()
        LiveConnection.objects.filter(process=process).delete()
        DisconnectRequest.objects.filter(process=process).delete()
