"""A lean socket.io v5 client on engine.io v4 long-polling, for the memory figure (17).

One GET is outstanding at a time while the client reads; a client that stops polling
is a stalled long-polling client (the server queues for it until its backlog cap).
A payload carries several packets separated by ``\\x1e``; pings (``2``) are answered
with pongs (``3``) in a POST. Only what figure 17 needs: the default namespace,
``subscribe``/``start`` calls with acks, and counting ``message`` events.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import orjson

PATH = "/socket.io/?EIO=4&transport=polling"
SEPARATOR = "\x1e"


class PollingClient:
    """One long-polling socket.io connection."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, sid: str) -> None:
        self._session = session
        self._url = f"{base_url.rstrip('/')}{PATH}&sid={sid}"
        self.messages = 0
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._next_id = 0
        self._poller: asyncio.Task[None] | None = None
        self._connected = asyncio.get_running_loop().create_future()

    @classmethod
    async def connect(cls, session: aiohttp.ClientSession, base_url: str, timeout: float = 10.0) -> PollingClient:
        async with asyncio.timeout(timeout):
            async with session.get(f"{base_url.rstrip('/')}{PATH}") as response:
                text = await response.text()
            if not text.startswith("0{"):
                raise ConnectionError(f"engine.io open refused: {text[:200]}")
            client = cls(session, base_url, orjson.loads(text[1:])["sid"])
            await client._post("40")
            client.resume()
            await asyncio.shield(client._connected)
        return client

    def resume(self) -> None:
        """Poll again (and from then on), reading what the server sends."""
        if self._poller is None or self._poller.done():
            self._poller = asyncio.ensure_future(self._poll())

    async def pause(self) -> None:
        """Stop polling, like a client that hangs: the server queues what it sends."""
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)

    async def call(self, event: str, arg: Any, timeout: float = 30.0) -> Any:
        """Emit ``event`` with an ack; the ack's arguments (polls until it arrives)."""
        ack_id = self._next_id
        self._next_id += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = future
        await self._post(f"42{ack_id}" + orjson.dumps([event, arg]).decode())
        self.resume()
        async with asyncio.timeout(timeout):
            return await future

    async def close(self) -> None:
        await self.pause()
        with contextlib.suppress(Exception):
            await self._post("1")

    async def _post(self, payload: str) -> None:
        async with self._session.post(self._url, data=payload.encode()) as response:
            await response.read()
            if response.status != 200:
                raise ConnectionError(f"POST answered {response.status}")

    async def _poll(self) -> None:
        while True:
            async with self._session.get(self._url) as response:
                text = await response.text()
                if response.status != 200:
                    raise ConnectionError(f"poll answered {response.status}: {text[:200]}")
            for packet in text.split(SEPARATOR):
                await self._on_packet(packet)

    async def _on_packet(self, packet: str) -> None:
        if packet == "2":
            await self._post("3")
        elif packet.startswith('42["message"'):
            self.messages += 1
        elif packet.startswith("40") and not self._connected.done():
            self._connected.set_result(None)
        elif packet.startswith("43"):
            digits = len(packet) - len(packet[2:].lstrip("0123456789"))
            future = self._acks.pop(int(packet[2:digits]), None)
            if future is not None and not future.done():
                future.set_result(orjson.loads(packet[digits:]))
        elif packet == "1":
            raise ConnectionError("closed by the server")
