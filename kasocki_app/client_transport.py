"""What KasockiClient reads its connection through, and the errors that come back over it.

The python-socketio subclasses let the client hold the engine.io read loop while its buffer is
full (so the server sees backpressure), and tell it when a closed connection is fully reset.
Inbox holds what messages() yields and is what the gate waits on. KasockiClientError wraps the
server's error objects, connection refusals and the client's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import engineio
import socketio
from engineio import packet as eio_packet

ORIGIN = "KasockiClient"  # the ``origin`` of errors the client makes itself, as in kasocki-client.js
_END = object()  # queued by Inbox.end(): ends the message iteration


class KasockiClientError(Exception):
    """An error object of the server (or of this client): ``name``, ``message``, ``event``, ``details``."""

    def __init__(self, error: Any) -> None:
        plain = error if isinstance(error, dict) else {"message": str(error)}
        self.error: dict[str, Any] = plain
        self.name = str(plain.get("name") or "KasockiClientError")
        self.message = str(plain.get("message") or "Kasocki error")
        self.origin, self.event = plain.get("origin"), plain.get("event")
        self.details = {k: v for k, v in plain.items() if k not in ("name", "message", "origin", "event")}
        super().__init__(f"{self.name}: {self.message}")


def client_error(name: str, message: str, **extra: Any) -> KasockiClientError:
    """An error of the client itself (ClosedError, ResumeError, ...)."""
    return KasockiClientError({"name": name, "message": message, "origin": ORIGIN, "event": None, **extra})


def closed_error(event: str | None) -> KasockiClientError:
    """What calls get once the client is closed."""
    return client_error("ClosedError", "the Kasocki client was closed", event=event)


def refusal(data: Any) -> dict[str, Any]:
    """The error object of a ``connect_error``."""
    # A Kasocki refusal is {"message", "data": <error object>}; engine.io failures are strings.
    inner, message = (data.get("data"), data.get("message")) if isinstance(data, dict) else (None, data)
    if isinstance(inner, dict) and "name" in inner:
        return {"origin": ORIGIN, "event": "connect", **inner}
    error: dict[str, Any] = {"name": "ConnectionError", "origin": ORIGIN, "event": "connect"}
    error.update({"message": str(message)} if message else {})
    return error


class GatedEngine(engineio.AsyncClient):  # type: ignore[misc]  # python-engineio ships no type information
    """engine.io client: the read loop waits in ``gate`` before message packets; ``on_reset`` ends a close."""

    gate: Callable[[], Awaitable[None]] | None = None
    on_reset: Callable[[], None] | None = None

    async def _reset(self) -> None:
        await super()._reset()
        if self.on_reset is not None:
            self.on_reset()

    async def _receive_packet(self, pkt: Any) -> None:
        if pkt.packet_type != eio_packet.MESSAGE or self.gate is None:
            await super()._receive_packet(pkt)
            return
        await self.gate()
        await super()._receive_packet(pkt)
        await asyncio.sleep(0)  # the packet's handler task runs before the next packet is read


class GatedSocketIO(socketio.AsyncClient):  # type: ignore[misc]  # python-socketio ships no type information
    """socket.io client over GatedEngine."""

    def _engineio_client_class(self) -> type[engineio.AsyncClient]:
        return GatedEngine


class Inbox:
    """The streamed messages messages() yields; while it is full, hold() keeps the read loop waiting."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()  # bounded by hold(), not by the queue
        self._wake = asyncio.Event()  # hold() may end

    def __len__(self) -> int:
        return self._queue.qsize()

    def put(self, message: Any) -> None:
        self._queue.put_nowait(message)

    def wake(self) -> None:
        """Make hold() check its condition again."""
        self._wake.set()

    def end(self) -> None:
        """End every iteration after the messages held."""
        self._wake.set()
        self._queue.put_nowait(_END)

    async def get(self) -> dict[str, Any]:
        """The next message; StopAsyncIteration once ended."""
        item: dict[str, Any] = await self._queue.get()
        self._wake.set()
        if item is _END:
            self._queue.put_nowait(_END)  # for the other iterations
            raise StopAsyncIteration
        return item

    async def hold(self, may_hold: Callable[[], bool]) -> None:
        """Wait while ``may_hold()`` and the inbox is full."""
        while may_hold() and self._queue.qsize() >= self.size:
            self._wake.clear()
            await self._wake.wait()
