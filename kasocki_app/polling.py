"""engine.io long-polling responses that every client can read: at most 16 packets each.

python-engineio's server answers a poll with everything queued for the client, while
python-engineio's client refuses a payload of more than 16 packets
(``Payload.max_decode_packets``) and reconnects: a Python client on long-polling could
never receive a stream. The socket class below hands a poll at most
``MAX_PACKETS_PER_POLL`` packets and carries the rest, in order, to the next poll (or to
the websocket writer after an upgrade, which also calls ``poll``). A session closed by
its client ends the poll in progress at once instead of after the poll timeout.
"""

from __future__ import annotations

import asyncio
from typing import Any

import engineio
from engineio import packet
from engineio.async_socket import AsyncSocket

from .websocket import WebSocketSession

# python-engineio's client limit (engineio.payload.Payload.max_decode_packets).
MAX_PACKETS_PER_POLL = 16
# What a queued packet costs beside its text: engine.io's Packet object, the string's header and
# malloc's rounding (measured with tracemalloc: 113 + 49 + ~16 bytes). Counted in the backlog, so that
# the cap bounds memory, also for small messages (100-byte ones cost almost three times their text).
PACKET_OVERHEAD = 180


class CappedPollSocket(WebSocketSession):
    """An engine.io session whose polls return at most MAX_PACKETS_PER_POLL packets (and see websocket.py)."""

    carried: list[Any]

    async def poll(self) -> list[Any]:
        carried: list[Any] = self.__dict__.setdefault("carried", [])
        if not carried:
            carried.extend(await super().poll())
            if not carried:
                return []  # closed
        packets = carried[:MAX_PACKETS_PER_POLL]
        del carried[:MAX_PACKETS_PER_POLL]
        return packets

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        closing = not self.closed and not self.closing
        await super().close(wait=wait, abort=abort, reason=reason)
        if closing and not wait:
            # Nobody will read what waits for the client: let go of it now, not when the session object is
            # collected (it sits in reference cycles until a full garbage collection, holding the whole backlog).
            discard_messages(self)
        if closing and abort:
            # An aborted close (the client sent CLOSE, or its websocket ended) queues nothing, so a
            # poll in progress would hang until its timeout (45 s), delaying the client's disconnect.
            self.queue.put_nowait(None)


def discard_messages(socket: Any) -> None:
    """Drop the messages queued and carried for a session that will send no more (control packets stay)."""
    queue = socket.queue
    kept = []
    while not queue.empty():
        pkt = queue.get_nowait()
        queue.task_done()
        if pkt is None or pkt.packet_type != packet.MESSAGE:
            kept.append(pkt)
    for pkt in kept:
        queue.put_nowait(pkt)
    socket.__dict__.get("carried", []).clear()


def queued_bytes(socket: Any) -> int:
    """What waits in a session for its client: queued, or taken off the queue for a poll and not yet sent."""
    queue = socket.queue
    queued = queue.bytes if isinstance(queue, MeteredQueue) else sum(map(cost, list(queue._queue)))
    return queued + sum(map(cost, socket.__dict__.get("carried", ())))


def cost(pkt: Any) -> int:
    """The memory a queued packet takes, as counted in the client's backlog."""
    return len(pkt.data) + PACKET_OVERHEAD if pkt is not None and isinstance(pkt.data, str) else 0


class MeteredQueue(asyncio.Queue[Any]):
    """A session's outgoing packets and what they cost, counted as they come and go (not summed at each look)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bytes = 0

    def _put(self, item: Any) -> None:
        super()._put(item)  # asyncio.Queue's hook for subclasses, as LifoQueue's
        self.bytes += cost(item)

    def _get(self) -> Any:
        item = super()._get()
        self.bytes -= cost(item)
        return item


class EngineServer(engineio.AsyncServer):  # type: ignore[misc]  # python-engineio ships no type information
    """python-engineio's server, with sessions whose polls every client can read."""

    def create_queue(self, *args: Any, **kwargs: Any) -> MeteredQueue:
        """Each session's queue (the library's only use of it), counting what waits in it."""
        return MeteredQueue(*args, **kwargs)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The library creates its sessions inline (in _handle_connect): each becomes the capped
        # class as it is registered, before the first poll reaches it.
        self.sockets: dict[str, Any] = _CappingSockets(self.sockets)


class _CappingSockets(dict[str, Any]):
    """The server's sessions by sid; a session stored here becomes a CappedPollSocket."""

    def __setitem__(self, sid: str, socket: Any) -> None:
        if type(socket) is AsyncSocket:
            socket.__class__ = CappedPollSocket
        super().__setitem__(sid, socket)
