"""A lean socket.io v5 / engine.io v4 client over one raw websocket.

Every benchmark figure uses this client, so that the client is the same for all
of them and costs as little as possible: websocket transport only, no
reconnection, the default namespace only, no binary attachments. The websocket
is the ``websockets`` package's sans-I/O protocol driven by a plain asyncio
protocol: frames are handled as the socket delivers them, with no task or
future per frame. Frames are read as bytes and decoded with orjson after
stripping the packet prefix.

engine.io v4 packets (one per websocket frame): ``0`` open (JSON handshake),
``1`` close, ``2`` ping (answered with ``3`` pong), ``4`` message, ``6`` noop.
socket.io v5 packets travel inside ``4``: ``40`` connect, ``41`` disconnect,
``42[id]["event", ...]`` event, ``43<id>[...]`` ack, ``44{...}`` connect error.

Server events are handed to a callback registered with ``on()``; events without
a callback are kept until ``next_event()`` takes them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import orjson
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

PATH = "/socket.io/?EIO=4&transport=websocket"

# Packet type characters as byte values.
_OPEN, _CLOSE, _PING, _MESSAGE, _NOOP = b"01246"
_SIO_CONNECT, _SIO_DISCONNECT, _SIO_EVENT, _SIO_ACK, _SIO_CONNECT_ERROR = b"01234"
_DIGITS = frozenset(b"0123456789")


class ProtocolError(Exception):
    """The server said something this client does not expect, or refused the connection."""


def websocket_url(base_url: str) -> str:
    """``http://host:port`` (or ``ws://...``) to the engine.io websocket endpoint."""
    if base_url.startswith("http"):
        base_url = "ws" + base_url[4:]
    return base_url.rstrip("/") + PATH


class LeanClient(asyncio.Protocol):
    """One socket.io connection to the default namespace."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.handshake: dict[str, Any] = {}
        self.sid: str | None = None
        self.frames = 0  # frames received, for diagnostics
        self._ws = ClientProtocol(parse_uri(url), max_size=None)
        self._transport: Any = None
        self._fragments: list[bytes] = []
        self._handlers: dict[str, Callable[[Any], None]] = {}
        self._pending: dict[str, deque[Any]] = defaultdict(deque)
        self._waiters: dict[str, deque[asyncio.Future[Any]]] = defaultdict(deque)
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        loop = asyncio.get_running_loop()
        self._upgraded: asyncio.Future[None] = loop.create_future()
        self._connected: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    # --- connecting -----------------------------------------------------------

    @classmethod
    async def connect(cls, base_url: str, *, timeout: float = 10.0, source: str | None = None) -> LeanClient:
        """Open the websocket and connect the ``/`` namespace (after engine.io's open packet).

        ``source``: the local address to connect from (e.g. ``127.0.0.2``), each with its own port range.
        """
        url = websocket_url(base_url)
        client = cls(url)
        uri = parse_uri(url)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                local = (source, 0) if source else None
                await loop.create_connection(lambda: client, uri.host, uri.port, local_addr=local)
                await asyncio.shield(client._upgraded)
                await asyncio.shield(client._connected)
        except BaseException:
            client.abort()
            raise
        return client

    def connection_made(self, transport: Any) -> None:  # uvloop's transports are not asyncio.Transport
        self._transport = transport
        self._ws.send_request(self._ws.connect())
        self._flush()

    # --- sending --------------------------------------------------------------

    def _send(self, payload: bytes) -> None:
        if self._ws.state is not State.OPEN:
            raise ConnectionError("the connection is closed")
        self._ws.send_text(payload)
        self._flush()

    def _flush(self) -> None:
        transport = self._transport
        if transport is None:
            return
        for chunk in self._ws.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()

    async def emit(self, event: str, arg: Any = None) -> None:
        """Send an event without asking for an ack."""
        self._send(b"42" + orjson.dumps([event, arg]))

    def call_soon(self, event: str, arg: Any = None) -> asyncio.Future[Any]:
        """Send an event asking for an ack; the future resolves to the ack's arguments list."""
        ack_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = future
        try:
            self._send(b"42" + str(ack_id).encode() + orjson.dumps([event, arg]))
        except ConnectionError as exc:
            self._acks.pop(ack_id, None)
            future.set_exception(exc)
        return future

    async def call(self, event: str, arg: Any = None, *, timeout: float = 15.0) -> tuple[Any, Any]:
        """Send an event and wait for the Kasocki ack ``(err, res)``."""
        args = await asyncio.wait_for(self.call_soon(event, arg), timeout)
        err = args[0] if args else None
        res = args[1] if len(args) > 1 else None
        return err, res

    async def ok(self, event: str, arg: Any = None, *, timeout: float = 15.0) -> Any:
        """Like ``call`` but raise ProtocolError on an error ack."""
        err, res = await self.call(event, arg, timeout=timeout)
        if err is not None:
            raise ProtocolError(f"{event} failed: {err}")
        return res

    # --- receiving ------------------------------------------------------------

    def on(self, event: str, handler: Callable[[Any], None] | None) -> None:
        """Call ``handler(first_argument)`` for each ``event`` from now on (None: keep them for next_event)."""
        if handler is None:
            self._handlers.pop(event, None)
        else:
            self._handlers[event] = handler

    async def next_event(self, event: str, timeout: float = 10.0) -> Any:
        """The first argument of the next ``event`` not handled by a callback."""
        if self._pending[event]:
            return self._pending[event].popleft()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiters[event].append(future)
        try:
            return await asyncio.wait_for(future, timeout)
        finally:
            with contextlib.suppress(ValueError):
                self._waiters[event].remove(future)

    def stop_reading(self) -> None:
        """Stop reading the socket, like a client that hangs: its buffers fill up and stay full."""
        if self._transport is not None:
            self._transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        ws = self._ws
        ws.receive_data(data)
        try:
            for event in ws.events_received():
                if isinstance(event, Frame):
                    self._on_frame(event)
                elif isinstance(event, Response):
                    self._on_upgrade()
        except Exception as exc:
            self._fail(exc)
            self.abort()
            return
        self._flush()  # pongs and close frames the protocol queued
        if ws.state is State.CLOSED:
            self.abort()

    def _on_upgrade(self) -> None:
        if self._ws.handshake_exc is not None:
            raise ProtocolError(f"websocket upgrade refused: {self._ws.handshake_exc}")
        if not self._upgraded.done():
            self._upgraded.set_result(None)

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
            if not frame.fin:
                self._fragments.append(frame.data)
                return
            data = frame.data
            if self._fragments:
                data = b"".join([*self._fragments, data])
                self._fragments.clear()
            self.frames += 1
            if data:
                self._on_packet(data)
        elif opcode is Opcode.CLOSE:
            self._fail(ConnectionError("the server closed the websocket"))

    def _on_packet(self, packet: bytes) -> None:
        kind = packet[0]
        if kind == _MESSAGE:
            self._on_socketio(packet)
        elif kind == _PING:
            self._send(b"3")
        elif kind == _OPEN:
            self.handshake = orjson.loads(memoryview(packet)[1:])
            self._send(b"40")
        elif kind == _CLOSE:
            self._fail(ConnectionError("the server closed the engine.io session"))
        elif kind != _NOOP:
            raise ProtocolError(f"unexpected engine.io packet {packet[:40]!r}")

    def _on_socketio(self, packet: bytes) -> None:
        kind = packet[1] if len(packet) > 1 else None
        if kind == _SIO_EVENT:
            start = 2
            while packet[start] in _DIGITS:  # an ack id the server asks for; Kasocki asks none
                start += 1
            data = orjson.loads(memoryview(packet)[start:])
            event = data[0]
            arg = data[1] if len(data) > 1 else None
            handler = self._handlers.get(event)
            if handler is not None:
                handler(arg)
                return
            waiters = self._waiters.get(event)
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(arg)
                    return
            self._pending[event].append(arg)
        elif kind == _SIO_ACK:
            end = 2
            while packet[end] in _DIGITS:
                end += 1
            future = self._acks.pop(int(packet[2:end]), None)
            if future is not None and not future.done():
                future.set_result(orjson.loads(memoryview(packet)[end:]))
        elif kind == _SIO_CONNECT:
            body = memoryview(packet)[2:]
            self.sid = orjson.loads(body).get("sid") if len(body) else None
            if not self._connected.done():
                self._connected.set_result(None)
        elif kind == _SIO_CONNECT_ERROR:
            raise ProtocolError(f"connection refused: {packet[2:200]!r}")
        elif kind == _SIO_DISCONNECT:
            self._fail(ConnectionError("the server disconnected this client"))
        else:
            raise ProtocolError(f"unexpected socket.io packet {packet[:40]!r}")

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(exc or ConnectionError("the connection is closed"))

    def _fail(self, exc: BaseException) -> None:
        """Fail everything still waiting; the first reason wins."""
        for future in (*self._acks.values(), *(w for ws in self._waiters.values() for w in ws)):
            if not future.done():
                future.set_exception(exc)
        self._acks.clear()
        for future in (self._upgraded, self._connected):
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: connect() may have given up already
        if not self.closed.done():
            self.closed.set_result(None)

    # --- closing --------------------------------------------------------------

    async def close(self, timeout: float = 2.0) -> None:
        """Send a websocket close frame, give the server ``timeout`` seconds to answer, then drop the socket."""
        if self._transport is not None and self._ws.state is State.OPEN:
            self._ws.send_close()
            self._flush()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.closed), timeout)
        self.abort()

    def abort(self) -> None:
        """Drop the socket at once."""
        if self._transport is not None:
            self._transport.abort()
            self._transport = None
        self._fail(ConnectionError("the client closed the connection"))
