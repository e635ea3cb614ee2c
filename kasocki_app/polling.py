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

from typing import Any

import engineio
from engineio.async_socket import AsyncSocket

from .websocket import WebSocketSession

# python-engineio's client limit (engineio.payload.Payload.max_decode_packets).
MAX_PACKETS_PER_POLL = 16


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
        if closing and abort:
            # An aborted close (the client sent CLOSE, or its websocket ended) queues nothing, so a
            # poll in progress would hang until its timeout (45 s), delaying the client's disconnect.
            self.queue.put_nowait(None)


def carried_bytes(socket: Any) -> int:
    """Bytes taken off a session's queue but not yet sent (they count in the client's backlog)."""
    return sum(len(p.data) for p in socket.__dict__.get("carried", ()) if isinstance(p.data, str))


class EngineServer(engineio.AsyncServer):  # type: ignore[misc]  # python-engineio ships no type information
    """python-engineio's server, with sessions whose polls every client can read."""

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
