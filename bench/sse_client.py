"""A lean reader of Kasocki's HTTP streams (``GET /v2/stream/<topics>``, Server-Sent Events) on a raw asyncio protocol.

The SSE counterpart of ``bench/client.py``, for the same reason: the load generator
shares the cores with the server, so each client costs as little as possible. One
HTTP/1.1 GET written by hand, the status line and headers parsed once, then the
body (chunked, or until the server closes) cut into lines as the socket delivers
it, with no task or future per event. Events are dispatched on a blank line as the
SSE spec says (https://html.spec.whatwg.org/multipage/server-sent-events.html):
``data:`` lines joined with newlines, ``id:`` kept as the last event id (also on an
event with no data), ``event:`` naming the type (``message`` by default), lines
starting with ``:`` are comments. Lines end in LF or CRLF (a lone CR is not taken as
an end of line: the server never sends one).

Kasocki's stream: ``:ok``, an id-only event with every assigned partition and its
next offset (the assignment, awaited by ``connect``), then ``message`` events (id +
data with ``_kafka``), id-only progress events, ``: heartbeat`` comments, and
``error`` events (after some of which the server ends the stream).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

# A message and the raw ``id:`` of its event (None when the event had none).
MessageHandler = Callable[[dict[str, Any], bytes | None], None]


class StreamRefused(Exception):
    """The server answered the GET with something other than a 200 event stream."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(f"HTTP {status}: {body[:300]!r}")
        self.status = status
        self.body = body


def id_holds(event_id: bytes | None, meta: dict[str, Any]) -> bool:
    """Whether a message's ``id`` holds its partition (``_kafka``) at the next offset, as a resume must."""
    positions = orjson.loads(event_id) if event_id else ()
    return any(p.get("topic") == meta["topic"] and p.get("partition") == meta["partition"]
               and p.get("offset") == meta["offset"] + 1 for p in positions)  # fmt: skip


def stream_path(topics: list[str], filter: Any = None) -> str:
    """The request path of a stream of ``topics`` (with a JSON ``filter`` when given)."""
    path = "/v2/stream/" + ",".join(quote(t, safe="") for t in topics)
    if filter is not None:
        path += "?filter=" + quote(orjson.dumps(filter).decode(), safe="")
    return path


class SSEClient(asyncio.Protocol):
    """One event stream from the server."""

    def __init__(self, host: str, request: bytes) -> None:
        self.host = host
        self._request = request
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.last_id: bytes | None = None
        self.assignment: list[dict[str, Any]] = []  # the first id: every assigned partition, its next offset
        self.messages = 0
        self.progress = 0  # id-only events
        self.heartbeats = 0  # comments other than :ok
        self.errors: list[Any] = []  # data of the ``error`` events
        self._transport: Any = None  # uvloop's transports are not asyncio.Transport
        self._head = bytearray()  # the response head until its blank line
        self._raw = bytearray()  # body bytes not yet de-chunked
        self._chunked = False
        self._left = 0  # bytes left in the current chunk; -1: the CRLF after a chunk is due
        self._refused_body: bytearray | None = None
        self._lines = bytearray()  # de-chunked body not yet cut into lines
        self._event = b""
        self._data: list[bytes] = []
        self._event_id: bytes | None = None
        self._handler: MessageHandler | None = None
        self._pending: list[tuple[dict[str, Any], bytes | None]] = []
        loop = asyncio.get_running_loop()
        self.ok: asyncio.Future[None] = loop.create_future()  # the ``:ok`` comment arrived
        self.assigned: asyncio.Future[None] = loop.create_future()  # the first id arrived
        self.closed: asyncio.Future[None] = loop.create_future()

    @classmethod
    async def connect(
        cls,
        base_url: str,
        subscribe: str | list[Any],
        *,
        filter: Any = None,
        timeout: float = 10.0,
        source: str | None = None,
    ) -> SSEClient:
        """Open the stream and wait for its first id (the assignment); ``source``: the local address to use.

        ``subscribe`` as socket.io's ``subscribe`` takes it: a topic, topics, or assignments
        (``{"topic", "partition", "offset"}``), which go as the ``Last-Event-ID`` header.
        """
        items = [subscribe] if isinstance(subscribe, str) else subscribe
        topics = list(dict.fromkeys(a["topic"] if isinstance(a, dict) else a for a in items))
        last_event_id = [a for a in items if isinstance(a, dict)]
        url = urlsplit(base_url)
        host, port = url.hostname or "127.0.0.1", url.port or 80
        lines = [
            f"GET {stream_path(topics, filter)} HTTP/1.1",
            f"Host: {host}:{port}",
            "Accept: text/event-stream",
            "Cache-Control: no-cache",
        ]
        if last_event_id:
            lines.append("Last-Event-ID: " + orjson.dumps(last_event_id).decode())
        client = cls(host, ("\r\n".join(lines) + "\r\n\r\n").encode())
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                local = (source, 0) if source else None
                await loop.create_connection(lambda: client, host, port, local_addr=local)
                await asyncio.shield(client.assigned)
        except BaseException:
            client.abort()
            raise
        return client

    def on_message(self, handler: MessageHandler) -> None:
        """Call ``handler(message, id)`` for each message, first those that arrived before this call."""
        self._handler = handler
        pending, self._pending = self._pending, []
        for message, event_id in pending:
            handler(message, event_id)

    # --- the protocol -----------------------------------------------------------

    def stop_reading(self) -> None:
        """Stop reading the socket, like a client that hangs: its buffers fill up and stay full."""
        if self._transport is not None:
            self._transport.pause_reading()

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        try:
            if self.status is None:
                self._head += data
                end = self._head.find(b"\r\n\r\n")
                if end < 0:
                    return
                data = bytes(self._head[end + 4 :])
                self._response_head(bytes(self._head[:end]))
            if self._chunked:
                self._dechunk(data)
            else:
                self._feed(data)
        except Exception as exc:
            self._fail(exc)
            self.abort()

    def _response_head(self, head: bytes) -> None:
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        self.status = int(status_line.split(" ", 2)[1])
        for line in header_lines:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = "chunked" in self.headers.get("transfer-encoding", "").lower()
        content_type = self.headers.get("content-type", "")
        if self.status != 200 or not content_type.startswith("text/event-stream"):
            self._refused_body = bytearray()  # the error's JSON body, until its length, last chunk or close

    def _dechunk(self, data: bytes) -> None:
        raw = self._raw
        raw += data
        pos = 0
        while pos < len(raw):
            if self._left > 0:
                take = min(self._left, len(raw) - pos)
                self._feed(raw[pos : pos + take])
                pos += take
                self._left -= take
                if self._left == 0:
                    self._left = -1
            elif self._left < 0:
                if len(raw) - pos < 2:
                    break
                pos += 2
                self._left = 0
            else:
                end = raw.find(b"\r\n", pos)
                if end < 0:
                    break
                size = int(raw[pos:end].split(b";", 1)[0], 16)
                pos = end + 2
                if size == 0:  # the last chunk: the server ended the response
                    self._end_of_body()
                    break
                self._left = size
        del raw[:pos]

    def _end_of_body(self) -> None:
        self._fail(self._why_ended())
        self.abort()

    def _why_ended(self) -> BaseException:
        if self._refused_body is not None and self.status is not None:
            return StreamRefused(self.status, bytes(self._refused_body))
        if self.errors:
            return ConnectionError(f"the server ended the stream after an error event: {self.errors[-1]}")
        return ConnectionError("the server ended the stream")

    def _feed(self, data: bytes | bytearray) -> None:
        if self._refused_body is not None:
            self._refused_body += data
            length = self.headers.get("content-length")
            if length is not None and len(self._refused_body) >= int(length):
                self._end_of_body()
            return
        buf = self._lines
        buf += data
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            line = bytes(buf[start : end - 1 if end > start and buf[end - 1] == 13 else end])
            start = end + 1
            self._line(line)
        del buf[:start]

    def _line(self, line: bytes) -> None:
        if not line:
            self._dispatch()
            return
        if line[0] == 58:  # ":" a comment
            if line == b":ok" and not self.ok.done():
                self.ok.set_result(None)
            else:
                self.heartbeats += 1
            return
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"id":
            self._event_id = value
        elif field == b"event":
            self._event = value

    def _dispatch(self) -> None:
        event, data, event_id = self._event or b"message", self._data, self._event_id
        self._event, self._data, self._event_id = b"", [], None
        if event_id is not None:
            self.last_id = event_id
            if not self.assigned.done():
                self.assignment = orjson.loads(event_id)
                self.assigned.set_result(None)
        if not data:
            if event_id is not None:
                self.progress += 1
            return
        payload = orjson.loads(b"\n".join(data))
        if event == b"message":
            self.messages += 1
            if self._handler is not None:
                self._handler(payload, event_id)
            else:
                self._pending.append((payload, event_id))
        elif event == b"error":
            self.errors.append(payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(self._why_ended() if exc is None or self._refused_body is not None else exc)

    def _fail(self, exc: BaseException) -> None:
        """Fail whatever still waits; the first reason wins."""
        for future in (self.ok, self.assigned):
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: connect() may have given up already
        if not self.closed.done():
            self.closed.set_result(None)

    # --- closing --------------------------------------------------------------

    async def close(self, timeout: float = 2.0) -> None:
        """Close the socket (an HTTP stream has no closing handshake), waiting up to ``timeout`` for it to go."""
        if self._transport is not None:
            self._transport.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        self.abort()

    def abort(self) -> None:
        """Drop the socket at once."""
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        self._fail(ConnectionError("the client closed the stream"))
