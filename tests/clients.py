"""A socket.io test client that records server events and makes acked calls easy."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

import socketio

EVENTS = ("ready", "message", "messages", "err", "connect_error")


class RecordingClient:
    """socketio.AsyncClient plus one queue per server event."""

    def __init__(self, **client_options: Any) -> None:
        self.sio = socketio.AsyncClient(reconnection=False, **client_options)
        self.queues: dict[str, asyncio.Queue[Any]] = defaultdict(asyncio.Queue)
        for event in EVENTS:
            self.sio.on(event, self._recorder(event))

    def _recorder(self, event: str) -> Any:
        async def record(*args: Any) -> None:
            self.queues[event].put_nowait(args[0] if len(args) == 1 else args)

        return record

    async def connect(
        self,
        url: str,
        transports: list[str] | None = None,
        auth: Any = None,
        headers: dict[str, str] | None = None,
    ) -> RecordingClient:
        try:
            await self.sio.connect(
                url, transports=transports or ["websocket"], auth=auth, headers=headers or {}, wait_timeout=10
            )
        except socketio.exceptions.ConnectionError:
            await self.sio.eio.disconnect()  # engine.io keeps its aiohttp session open after a refused connect
            raise
        return self

    async def next(self, event: str, timeout: float = 10) -> Any:
        """The next ``event`` payload, waiting at most ``timeout`` seconds."""
        return await asyncio.wait_for(self.queues[event].get(), timeout)

    def pending(self, event: str) -> list[Any]:
        """Payloads of ``event`` received and not yet taken."""
        items = []
        while not self.queues[event].empty():
            items.append(self.queues[event].get_nowait())
        return items

    async def call(self, event: str, *args: Any, timeout: float = 15) -> tuple[Any, Any]:
        """Emit ``event`` with ``args`` and return the ack as (err, res)."""
        result = await self.sio.call(event, data=tuple(args), timeout=timeout)
        assert isinstance(result, tuple) and len(result) == 2, f"unexpected ack {result!r}"
        return result

    async def ok(self, event: str, *args: Any, timeout: float = 15) -> Any:
        """Call ``event`` and return its result, failing on an error ack."""
        err, res = await self.call(event, *args, timeout=timeout)
        assert err is None, f"{event} failed: {err}"
        return res

    async def close(self) -> None:
        if self.sio.connected:
            await self.sio.disconnect()
