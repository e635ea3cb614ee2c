"""What a connection sends, and how much of it is still waiting to reach the client.

engine.io queues outgoing packets without bound, and daphne's websocket send has
no backpressure (what the client does not read piles up in Twisted's buffer).
So the service measures a client's backlog: the bytes in its engine.io queue plus
the bytes the ASGI server still holds for its websocket, read from the server's
transport where the server exposes one (daphne, uvicorn). The stream loop stops
reading Kafka for a client whose backlog is over KASOCKI_MAX_BACKLOG_BYTES.

The same ASGI wrapper ends a long-polling request whose client left mid-poll,
which engine.io alone would not notice (see LongPollWatch). It looks only at
engine.io's requests and the HTTP streams: the site's own requests and websockets
reach the site's application as they came, and their errors its server.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import orjson
import socketio
from engineio import packet as eio_packet

from . import calls, jsonshim, metrics
from .polling import queued_bytes
from .types import Taken

logger = logging.getLogger(__name__)

# Where an HTTP request's scope carries the ASGI server's send callable (see ``server_transport``).
SEND_KEY = "kasocki.send"


class ServerTransport:
    """The ASGI server's transport under one websocket: its buffered bytes, and a way to cut it."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport
        if hasattr(transport, "get_write_buffer_size"):  # asyncio transports (uvicorn)
            self.buffered: Callable[[], int] = transport.get_write_buffer_size
        else:  # Twisted FileDescriptor (daphne)
            self.buffered = lambda: len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    def abort(self) -> None:
        """Close at once, dropping unsent data (a graceful close would wait for the client to read)."""
        if hasattr(self._transport, "abortConnection"):
            self._transport.abortConnection()
        else:
            self._transport.abort()


# The ASGI server's transport of each websocket, by engine.io session id.
_transports: dict[str, ServerTransport] = {}


def unsent_bytes(eio_sid: str) -> int | None:
    """Bytes the ASGI server still holds for an engine.io session's websocket; None when that is unknown."""
    transport = _transports.get(eio_sid)
    if transport is None:
        return None
    try:
        return transport.buffered()
    except Exception:  # a closed transport
        return None


def server_transport(send: Any) -> ServerTransport | None:
    """The transport behind an ASGI ``send`` callable, where the server lets us find it."""
    # daphne passes partial(Server.handle_reply, protocol); uvicorn the protocol's bound asgi_send.
    owner = send.args[0] if isinstance(send, functools.partial) and send.args else getattr(send, "__self__", None)
    transport = getattr(owner, "transport", None)
    if hasattr(transport, "get_write_buffer_size") or (
        hasattr(transport, "dataBuffer") and hasattr(transport, "_tempDataLen")
    ):
        return ServerTransport(transport)
    return None


class LongPollWatch:
    """receive and send for one long-polling GET, calling ``on_disconnect`` when the client leaves mid-poll.

    engine.io reads the request once, then waits for packets (up to a ping interval)
    without calling receive() again: it never sees ``http.disconnect``, and daphne kills
    the application instance after its close timeout. Once the request is complete, this
    reads receive() itself, so the client leaving is seen at once.
    """

    def __init__(self, receive: Any, send: Any, on_disconnect: Callable[[], None]) -> None:
        self._receive = receive
        self._send = send
        self._on_disconnect = on_disconnect
        self._watcher: asyncio.Task[dict[str, Any]] | None = None
        self._responded = False

    async def receive(self) -> dict[str, Any]:
        if self._watcher is not None:
            # The request is complete: the only message left is the disconnect the watcher waits for.
            return await asyncio.shield(self._watcher)
        message: dict[str, Any] = await self._receive()
        if message["type"] == "http.request" and not message.get("more_body"):
            self._watcher = asyncio.ensure_future(self._watch())
        return message

    async def send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self._responded = True  # servers also report a disconnect after a complete response
        await self._send(message)

    async def _watch(self) -> dict[str, Any]:
        while True:
            message: dict[str, Any] = await self._receive()
            if message["type"] == "http.disconnect":
                if not self._responded:
                    self._on_disconnect()
                return message

    async def close(self) -> None:
        """Stop watching (the request is over)."""
        if self._watcher is None:
            return
        self._watcher.cancel()
        await asyncio.wait([self._watcher])
        if not self._watcher.cancelled() and self._watcher.exception() is not None:
            logger.warning("watching a long-poll for its client leaving failed: %r", self._watcher.exception())


def _under(scope: dict[str, Any], path: str | None) -> bool:
    """Whether a request is for engine.io, mounted at ``path`` (None: engine.io takes every request)."""
    return path is None or (scope.get("path", "") + "/").startswith(path)


def _long_poll_sid(scope: dict[str, Any]) -> str | None:
    """The engine.io session of a long-polling GET; None for any other engine.io request."""
    if scope.get("method") != "GET":
        return None
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    if query.get("transport", ["polling"])[0] != "polling":
        return None
    sids = query.get("sid")
    return sids[0] if sids else None


class BacklogMeteredApp:
    """ASGI wrapper: measures each websocket's send buffer, and ends long-polls whose client left."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.sio: socketio.AsyncServer | None = None  # set by server.build_asgi_application
        # Answers the HTTP streams' route itself (sse_asgi.serve_if_stream); False: not a stream request.
        self.serve_stream: Callable[[dict[str, Any], Any, Any], Awaitable[bool]] | None = None
        # Sees every call first (shutdown.GracefulStop.admit); False: it refused the call (the server stops).
        self.admit: Callable[[dict[str, Any], Any, Any], Awaitable[bool]] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if self.admit is not None and not await self.admit(scope, receive, send):
            return
        if scope["type"] not in ("websocket", "http"):
            await self.app(scope, receive, send)
            return
        try:
            with calls.serving():
                if await self._serve_own(scope, receive, send):
                    return
        except Exception as exc:
            # Errors python-engineio lets escape on input it cannot parse (an undecodable
            # websocket frame, say): close that connection, keep the log to one line.
            logger.warning("%s %s failed: %s: %s", scope["type"], scope.get("path"), type(exc).__name__, exc)
            with contextlib.suppress(Exception):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1002})
                else:
                    await send({"type": "http.response.start", "status": 400, "headers": []})
                    await send({"type": "http.response.body", "body": b"bad request"})
            return
        # The site's own request or websocket (through socketio.ASGIApp, which hands it on untouched).
        if scope["type"] == "http":
            # An HTTP stream served by Django's view measures its backlog through the server's transport.
            scope[SEND_KEY] = send
        await self.app(scope, receive, send)

    async def _serve_own(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        """Serve a request for engine.io or an HTTP stream; False (nothing done) for any other."""
        if scope["type"] == "http" and self.serve_stream is not None and await self.serve_stream(scope, receive, send):
            return True
        if not _under(scope, getattr(self.app, "engineio_path", None)):
            return False
        if scope["type"] == "http":
            await self._serve_polling(scope, receive, send)
        else:
            await self._serve_websocket(scope, receive, send)
        return True

    async def _serve_websocket(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        transport = server_transport(send)
        if transport is None:
            await self.app(scope, receive, send)
            return
        sids = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("sid", [])
        session: dict[str, str | None] = {"sid": sids[0] if sids else None}
        if session["sid"]:
            _transports[session["sid"]] = transport

        async def send_and_learn_sid(message: dict[str, Any]) -> None:
            if session["sid"] is None and message.get("type") == "websocket.send":
                text = message.get("text") or ""
                if text.startswith("0{"):  # engine.io OPEN packet carries the new session id
                    sid: str | None = orjson.loads(text[1:]).get("sid")
                    session["sid"] = sid
                    if sid:
                        _transports[sid] = transport
            await send(message)

        try:
            await self.app(scope, receive, send_and_learn_sid)
        finally:
            if session["sid"]:
                _transports.pop(session["sid"], None)

    async def _serve_polling(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        sid = _long_poll_sid(scope)
        if sid is None or self.sio is None:
            await self.app(scope, receive, send)
            return
        watch = LongPollWatch(receive, send, functools.partial(self._end_poll, sid))
        try:
            await self.app(scope, watch.receive, watch.send)
        finally:
            await watch.close()

    def _end_poll(self, sid: str) -> None:
        """Make the poll of a client that left return now, keeping its engine.io session.

        Cancelling the poll would close the session (engine.io takes a cancelled wait for a
        transport error), though the client may poll again on a new connection. A NOOP is what
        engine.io itself sends to end a poll early: the response goes nowhere, the session
        stays until it answers a ping or times out as usual.
        """
        socket = self.sio.eio.sockets.get(sid) if self.sio is not None else None
        if socket is not None and not socket.closed and not socket.upgraded:
            socket.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))


class Outbound:
    """Sends events to one client: one JSON encode per packet, with the bytes counted."""

    def __init__(self, sio: socketio.AsyncServer, sid: str, namespace: str = "/") -> None:
        self._sio = sio
        self.sid = sid
        self.namespace = namespace
        self.eio_sid = sio.manager.eio_sid_from_sid(sid, namespace)
        self.bytes_sent = 0
        # socket.io v5 EVENT packet: type "2", namespace (omitted for "/"), then the JSON array.
        self._prefix = "2" if namespace == "/" else f"2{namespace},"

    async def emit(self, event: str, data: Any) -> None:
        encoded = self._prefix + jsonshim.dumps([event, data])
        self.bytes_sent += len(encoded)
        metrics.BYTES_SENT.inc(len(encoded))
        await self._sio.eio.send(self.eio_sid, encoded)

    async def emit_message(self, taken: Taken) -> None:
        await self.emit("message", taken[1])

    def backlog(self) -> int:
        """Bytes sent to this client that it has not yet taken off the wire."""
        socket = self._sio.eio.sockets.get(self.eio_sid)
        if socket is None:
            return 0
        total = queued_bytes(socket)
        transport = _transports.get(self.eio_sid)
        if transport is not None:
            try:
                total += transport.buffered()
            except Exception:  # a closed transport: nothing more will be sent
                logger.debug("sid %s: transport probe failed", self.sid, exc_info=True)
        return total

    async def disconnect(self) -> None:
        """Disconnect after what is already queued for the client (socket.io DISCONNECT packet)."""
        await self._sio.disconnect(self.sid, namespace=self.namespace)

    async def abort(self) -> None:
        """Drop the client at once: a graceful close would wait for it to read its backlog."""
        transport = _transports.pop(self.eio_sid, None)
        if transport is not None:
            transport.abort()
        socket = self._sio.eio.sockets.get(self.eio_sid)
        if socket is not None:
            # Fires the disconnect handlers (and so Connection.close) without waiting for the queue.
            await socket.close(wait=False, abort=True)
            self._sio.eio.sockets.pop(self.eio_sid, None)
