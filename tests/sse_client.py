"""A Python reader of HTTP streams: raw HTTP/1.1 over asyncio, parsed as the SSE spec (and EventSource) does."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson


@dataclass
class Event:
    """One dispatched block: ``data`` None for an id-only event (EventSource dispatches no message then)."""

    event: str
    data: str | None
    id: str | None  # the id field of this block, if it had one
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        assert self.data is not None
        return orjson.loads(self.data)


Positions = dict[tuple[str, int], int]


def positions_of(event_id: str | None) -> Positions:
    """An event id as next offsets by (topic, partition)."""
    assert event_id is not None
    return {(e["topic"], e["partition"]): e["offset"] for e in orjson.loads(event_id)}


def parse_events(body: bytes) -> list[Event]:
    """The dispatched blocks of a whole SSE body (comments are dropped)."""
    events = []
    for block in body.decode().split("\n\n"):
        kind, data, event_id = "", [], None
        for line in block.split("\n"):
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "event":
                kind = value
            elif name == "data":
                data.append(value)
            elif name == "id":
                event_id = value
        if data or event_id is not None:
            events.append(Event(kind or "message", "\n".join(data) if data else None, event_id))
    return events


def check_ids(start: Positions, events: list[Event]) -> Positions:
    """Every id is the position after exactly what came before it: ``start``, then each message's offset + 1.

    For streams without a filter over logs without holes (every offset a record): a message
    must also be the next offset of its partition, so nothing is skipped or repeated.
    Returns the position after the last event.
    """
    expected = dict(start)
    for index, event in enumerate(events):
        if event.event == "message" and event.data is not None:
            where = event.json()["_kafka"]
            tp = (where["topic"], where["partition"])
            assert where["offset"] == expected[tp], (index, where, expected)
            expected[tp] = where["offset"] + 1
        if event.id is not None:
            assert positions_of(event.id) == expected, (index, event, expected)
    return expected


class Stream:
    """One response: its status, headers, then its body as SSE events or NDJSON lines."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunked = False
        self._left = -1  # bytes left of the current chunk (or of a Content-Length body)
        self._buffer = b""
        self.last_event_id = ""  # as an EventSource keeps it
        self.comments: list[str] = []
        self.complete = False  # the body ended as it should (a chunked body's last chunk), not cut

    async def _head(self) -> None:
        status_line = await self._reader.readline()
        self.status = int(status_line.split()[1])
        while True:
            line = (await self._reader.readline()).decode("latin-1").rstrip("\r\n")
            if not line:
                break
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()
        self._chunked = self.headers.get("transfer-encoding", "").lower() == "chunked"
        if not self._chunked and "content-length" in self.headers:
            self._left = int(self.headers["content-length"])

    async def _more(self) -> bool:
        """Read more of the body into the buffer; False at its end."""
        if self._chunked:
            size_line = await self._reader.readline()
            if not size_line:
                return False
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                self.complete = True
                return False
            data = await self._reader.readexactly(size)
            await self._reader.readexactly(2)
            self._buffer += data
            return True
        if self._left == 0:
            self.complete = True
            return False
        data = await self._reader.read(65536 if self._left < 0 else min(65536, self._left))
        if not data:
            return False
        if self._left > 0:
            self._left -= len(data)
        self._buffer += data
        return True

    async def body(self) -> bytes:
        while await self._more():
            pass
        data, self._buffer = self._buffer, b""
        return data

    async def json(self) -> Any:
        return orjson.loads(await self.body())

    async def line(self, timeout: float = 15) -> str | None:
        """The next line of the body; None at its end."""
        async with asyncio.timeout(timeout):
            while b"\n" not in self._buffer:
                if not await self._more():
                    if self._buffer:
                        line, self._buffer = self._buffer, b""
                        return line.decode()
                    return None
            line, _, self._buffer = self._buffer.partition(b"\n")
            return line.decode().rstrip("\r")

    async def event(self, timeout: float = 15) -> Event | None:
        """The next dispatched block (comments before it attached); None at the end of the body."""
        kind, data, event_id, comments = "", [], None, []
        async with asyncio.timeout(timeout):
            while True:
                line = await self.line(timeout)
                if line is None:
                    return None
                if line == "":
                    if event_id is None and not data:
                        if comments:  # a lone comment: keep it for the test, dispatch nothing
                            self.comments.extend(comments)
                            comments = []
                        continue
                    if event_id is not None:
                        self.last_event_id = event_id
                    return Event(kind or "message", "\n".join(data) if data else None, event_id, comments)
                if line.startswith(":"):
                    comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if name == "event":
                    kind = value
                elif name == "data":
                    data.append(value)
                elif name == "id":
                    event_id = value

    async def messages(self, count: int, timeout: float = 15) -> list[Any]:
        """The next ``count`` message events' data within ``timeout``, skipping id-only events."""
        found: list[Any] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(found) < count:
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"{len(found)} of {count} messages within {timeout}s"
            event = await self.event(left)
            assert event is not None, f"the stream ended after {len(found)} of {count} messages"
            if event.data is not None:
                assert event.event == "message", event
                found.append(event.json())
        return found

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


async def open_stream(
    url: str, headers: dict[str, str] | None = None, method: str = "GET", source: str | None = None
) -> Stream:
    """Send a request and read the response's head."""
    parts = urlsplit(url)
    local = (source, 0) if source else None
    tls = None
    if parts.scheme == "https":  # test deployments have self-signed certificates
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port, local_addr=local, ssl=tls)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {parts.netloc}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    stream = Stream(reader, writer)
    await stream._head()
    return stream
