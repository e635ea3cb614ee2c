"""An HTTP stream's outbound: what its connection sends, framed as server-sent events or NDJSON.

The connection's stream emits into a buffer that the response body writes out. Its
backlog is that buffer plus what the ASGI server still holds for the socket, so the
backpressure and slow-client cut of socket.io streams apply unchanged.

Each message event carries as ``id`` the next offset of every assigned partition
after that message, so that a client resuming with ``Last-Event-ID`` loses and repeats
nothing. While a filter skips records or nothing arrives, an id-only event every
KASOCKI_SSE_PROGRESS_SECONDS carries the position forward (a browser's EventSource
takes its id without dispatching a message), and a comment every
KASOCKI_SSE_HEARTBEAT_SECONDS keeps proxies from cutting the idle stream.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from . import jsonshim, metrics
from .conf import conf
from .outbound import ServerTransport
from .types import Position, Taken, TopicPartition

logger = logging.getLogger(__name__)

OK = b":ok\n\n"
HEARTBEAT = b": heartbeat\n\n"
# Errors after which the stream ends: a topic left (nothing of it may follow), the client idled too long.
FINAL_ERRORS = frozenset({"TopicNotAvailableError", "IdleTimeoutError"})  # SlowClientError cuts at once

# What a pending event costs beside its bytes (the bytes object's header, malloc's rounding, the list's
# slot), counted in the backlog so that the cap bounds memory.
PENDING_OVERHEAD = 60
# The most of what is pending handed to the server in one write.
CHUNK_BYTES = 64 * 1024

Positions = Callable[[], "dict[TopicPartition, int] | None"]


def encode(data: Any) -> bytes:
    """JSON as the socket.io packets carry it (a live tail's encoded messages are inlined as they are)."""
    try:
        return orjson.dumps(data)
    except TypeError:  # what orjson refuses (integers beyond 64 bits): the same fallback as socket.io's
        return jsonshim.dumps(data).encode()


class EventStream:
    """The outbound of one HTTP stream (``types.Outbound``), and the body of its response."""

    def __init__(self, ndjson: bool, transport: ServerTransport | None) -> None:
        self.ndjson = ndjson
        self.bytes_sent = 0
        self.ending = False  # nothing more is sent: the body ends after what is pending
        self._transport = transport
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._wake: asyncio.Future[None] | None = None
        self._ids: dict[tuple[str, int], int] = {}  # the next offset of every assigned partition
        self._progress: Positions = lambda: None
        self._last_message = self._last_heartbeat = time.monotonic()  # the last message (or id) and comment
        self._started = False  # start_at was called: the first id is written
        self.body_started = asyncio.Event()

    def start_at(self, positions: list[Position], progress: Positions) -> None:
        """Where the subscription starts; ``progress`` gives the positions while the stream holds nothing.

        Called before the stream starts: the first id is written here, ahead of every message,
        so that it is the position the stream starts at whatever the stream emits before the
        body is read (records waiting in a live tail's ring are emitted at once).
        """
        self._ids = {(p.topic, p.partition): p.offset for p in positions}
        self._progress = progress
        if not self.ndjson:
            self._write(OK + self._id_event())
        self._started = True

    def finish(self) -> None:
        """End the body after a last id-only event with the position reached: the server stops.

        The client reconnects (an EventSource does when a response ends) and resumes from
        that id on another server, missing and repeating nothing.
        """
        if self.ending:
            return
        if self._started and not self.ndjson:
            self._take_progress()
            self._write(self._id_event())
        self._end()

    # --- types.Outbound -------------------------------------------------------

    async def emit(self, event: str, data: Any) -> None:
        if event == "err":
            self._error(data)
        elif event == "message":
            self._write(self._message(encode(data)))
        elif event == "messages":
            for message in data:
                self._write(self._message(encode(message)))

    async def emit_message(self, taken: Taken) -> None:
        topic, message, partition, offset = taken
        key = (topic, partition)
        # Never back: a message taken before an OffsetOutOfRangeError (reported first) is sent after it,
        # and the position is then where reading went on, past what the log lost.
        if offset >= self._ids.get(key, 0):
            self._ids[key] = offset + 1
        self._write(self._message(encode(message)))

    def backlog(self) -> int:
        total = self._pending_bytes
        if self._transport is not None:
            try:
                total += self._transport.buffered()
            except Exception:  # a closed transport: nothing more will be sent
                logger.debug("transport probe failed", exc_info=True)
        return total

    async def disconnect(self) -> None:
        self._end()

    async def abort(self) -> None:
        self._drop()

    def _drop(self) -> None:
        """Close the connection at once, dropping what is unsent (a graceful end would wait for the client)."""
        self._pending.clear()
        self._pending_bytes = 0
        if self._transport is not None:
            self._transport.abort()
        self._end()

    # --- the response body ----------------------------------------------------

    async def body(self, on_end: Callable[[], Awaitable[None]]) -> AsyncIterator[bytes]:
        """The bytes to write, as they come; ``on_end`` runs whatever ends the body (the client leaving too)."""
        self.body_started.set()
        try:
            progress_due = heartbeat_due = time.monotonic()
            while True:
                if self._pending:
                    yield self._take_chunk()
                    continue
                if self.ending:
                    return
                if self.ndjson:
                    await self._wait(None)
                    continue
                now = time.monotonic()
                progress_due = max(progress_due, self._last_message + conf.sse_progress_seconds)
                heartbeat_due = max(heartbeat_due, self._last_heartbeat + conf.sse_heartbeat_seconds)
                if now >= progress_due:
                    self._send_progress()
                    progress_due = now + conf.sse_progress_seconds
                if now >= heartbeat_due:
                    self._last_heartbeat = now
                    self._write(HEARTBEAT)
                    heartbeat_due = now + conf.sse_heartbeat_seconds
                if not self._pending:
                    await self._wait(min(progress_due, heartbeat_due) - now)
        finally:
            self.ending = True
            self._pending.clear()  # never written: not kept while the connection closes
            self._pending_bytes = 0
            await on_end()

    # --- framing --------------------------------------------------------------

    def _message(self, data: bytes) -> bytes:
        self._last_message = time.monotonic()
        if self.ndjson:
            return data + b"\n"
        return b"event: message\nid: " + self._id() + b"\ndata: " + data + b"\n\n"

    def _id(self) -> bytes:
        return orjson.dumps([{"topic": t, "partition": p, "offset": o} for (t, p), o in self._ids.items()])

    def _id_event(self) -> bytes:
        return b"id: " + self._id() + b"\n\n"

    def _send_progress(self) -> None:
        """An id-only event with the positions reached, when the stream holds nothing not yet sent."""
        if not self._take_progress():
            return
        self._last_message = time.monotonic()
        self._write(self._id_event())
        metrics.SSE_PROGRESS.inc()

    def _take_progress(self) -> bool:
        """Move the ids to the positions reached (past records a filter skipped) if the stream holds nothing."""
        positions = self._progress()
        if positions is None:
            return False
        for tp, offset in positions.items():
            self._ids[(tp.topic, tp.partition)] = offset
        return True

    def _error(self, error: dict[str, Any]) -> None:
        name = error.get("name")
        if name == "SlowClientError":
            # The client reads nothing, so the error would never reach it. Cut here, at once: a graceful
            # end let the response finish first, and the connection's close then cancelled the abort it
            # had spawned, leaving the stalled connection open (kept alive by the server).
            self._drop()
            return
        if name == "PartitionsChangedError":
            for added in error.get("added") or ():
                self._ids[(added["topic"], added["partition"])] = added["offset"]
        elif name == "OffsetOutOfRangeError" and "topic" in error:
            self._ids[(error["topic"], error["partition"])] = error["offset"]
        data = encode(error)
        if self.ndjson:
            self._write(b'{"error":' + data + b"}\n")
        else:
            self._write(b"event: error\ndata: " + data + b"\n\n")
        if name in FINAL_ERRORS:
            topic = error.get("topic")
            if topic is not None and not self.ndjson:
                # A reconnecting client resumes the other topics: its last id no longer names this one.
                self._ids = {tp: offset for tp, offset in self._ids.items() if tp[0] != topic}
                self._write(self._id_event())
            self._end()

    def _take_chunk(self) -> bytes:
        """What is pending, joined, up to CHUNK_BYTES: one write per wake for a fast client, yet a stalled
        one's backlog is not copied whole (the join, then the server's chunk framing, each a copy)."""
        pending = self._pending
        size = count = 0
        while count < len(pending) and (count == 0 or size + len(pending[count]) <= CHUNK_BYTES):
            size += len(pending[count])
            count += 1
        chunk = b"".join(pending[:count])
        del pending[:count]
        self._pending_bytes -= size + count * PENDING_OVERHEAD
        return chunk

    def _write(self, chunk: bytes) -> None:
        if self.ending:
            return
        self._pending.append(chunk)
        self._pending_bytes += len(chunk) + PENDING_OVERHEAD
        self.bytes_sent += len(chunk)
        metrics.BYTES_SENT.inc(len(chunk))
        if self._wake is not None:
            _settle(self._wake)

    def _end(self) -> None:
        self.ending = True
        if self._wake is not None:
            _settle(self._wake)

    async def _wait(self, timeout: float | None) -> None:
        # One future and at most one timer per wait: asyncio.wait() costs several times that, and a
        # stream waits once per event (measured: 13 % of the server's time at 10,000 streams).
        loop = asyncio.get_running_loop()
        wake = self._wake = loop.create_future()
        timer = None if timeout is None else loop.call_later(max(timeout, 0.0), _settle, wake)
        try:
            await wake
        finally:
            self._wake = None
            if timer is not None:
                timer.cancel()


def _settle(wake: asyncio.Future[None]) -> None:
    if not wake.done():
        wake.set_result(None)
