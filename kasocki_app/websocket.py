"""engine.io's websocket transport without a task of its own per packet, and replies written at once.

python-engineio (4.x) waits for each packet a client sends in a new task under
``asyncio.wait_for``, and for each packet to send under ``wait_for`` too, which wraps
the wait in another task; and every packet to send goes through a queue to a writer
task. With one request in flight, those trips through the event loop cost more than
the ``consume`` behind the request now does. ``WebSocketSession`` is engine.io's transport loop
with the same behaviour, waiting in the connection's own reader and writer tasks under
the same timeouts (``asyncio.timeout``): a client silent for ping_interval +
ping_timeout, a packet over the size limit or a closed websocket ends the session as
before, and the upgrade from long-polling is engine.io's handshake. ``send_now``
writes a reply (socket.io's ack, see server.py) from the replying task when the writer
waits with nothing queued; packets still leave in the order they were sent.
"""

from __future__ import annotations

import asyncio
from typing import Any

from engineio import exceptions, packet
from engineio.async_socket import AsyncSocket

# Packets a writer sends before it lets the event loop run others; as many as a stream emits in one
# step (KASOCKI_CONSUME_BATCH_SIZE's default), so that the writer keeps up with the stream it writes for.
WRITES_PER_TURN = 100


class WebSocketSession(AsyncSocket):  # type: ignore[misc]  # python-engineio ships no type information
    """An engine.io session whose websocket reader and writer wait without a task per packet."""

    connected: bool
    upgrading: bool
    upgraded: bool
    # Sessions become this class after engine.io created them (polling.py): no __init__ runs.
    _ws: Any = None  # the websocket, while the writer runs
    _idle = False  # the writer waits for a packet: with nothing queued, send_now writes at once
    _sending: asyncio.Future[None] | None = None  # such a write, while it is under way

    async def send_now(self, pkt: Any) -> None:
        """Send a reply: written at once when the writer waits with nothing queued, else queued as ``send``.

        Written at once, it may wait for room in the ASGI server's buffer (uvicorn): only
        the request it answers waits, and what is sent after it follows it.
        """
        if not (self._idle and self._sending is None and self.queue.empty()):
            await self.send(pkt)
            return
        if not await self.check_ping_timeout():
            return
        sending = self._sending = asyncio.get_running_loop().create_future()
        try:
            await self._ws.send(pkt.encode())
        except Exception:  # as a failed send of the writer: the writer ends and closes the websocket
            self.queue.put_nowait(None)
        finally:
            self._sending = None
            sending.set_result(None)
        data = "<binary>" if isinstance(pkt.data, bytes) else pkt.data
        self.server.logger.info("%s: Sending packet %s data %s", self.sid, packet.packet_names[pkt.packet_type], data)

    async def poll(self) -> list[Any]:
        """The packets queued for the client, waiting for a first one (engine.io's poll, without wait_for)."""
        queue = self.queue
        if queue.empty():
            try:
                async with asyncio.timeout(self.server.ping_interval + self.server.ping_timeout):
                    first = await queue.get()
            except (TimeoutError, asyncio.CancelledError):
                raise exceptions.QueueEmpty() from None
        else:
            first = queue.get_nowait()
        queue.task_done()
        if first is None:
            return []
        packets = [first]
        while not queue.empty():
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is None:
                queue.put_nowait(None)  # the end, for the next poll
                break
            packets.append(pkt)
        return packets

    async def _websocket_handler(self, ws: Any) -> None:
        if self.connected:  # an upgrade from long-polling
            if not await self._upgrade(ws):
                return
        else:
            self.connected = True
            self.upgraded = True
        writer = asyncio.ensure_future(self._write(ws))
        self.server.logger.info("%s: Upgrade to websocket successful", self.sid)
        timeout = self.server.ping_interval + self.server.ping_timeout
        while True:
            try:
                async with asyncio.timeout(timeout):
                    data = await self._wait(ws)
            except BaseException:  # closed, too large, silent too long or cancelled: ends, as engine.io's loop
                break
            if data is None:  # closed by the client
                break
            try:
                await self.receive(packet.Packet(encoded_packet=data))
            except exceptions.UnknownPacketError:
                pass
            except exceptions.SocketIsClosedError:
                self.server.logger.info("Receive error -- socket is closed")
                break
            except BaseException:  # as engine.io's loop: log it and read on
                self.server.logger.exception("Unknown receive error")
        await self.queue.put(None)  # the writer ends after what is queued
        await writer
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

    async def _wait(self, ws: Any) -> Any:
        data = await ws.wait()
        if data and len(data) > self.server.max_http_buffer_size:
            raise ValueError("packet is too large")
        return data

    async def _write(self, ws: Any) -> None:
        self._ws = ws
        sent = 0
        while True:
            self._idle = True
            try:
                packets = await self.poll()
            except exceptions.QueueEmpty:
                break
            finally:
                self._idle = False
            if not packets:  # closing
                break
            if self._sending is not None:  # a reply written at once before these is still under way: it goes first
                await self._sending
            try:
                for pkt in packets:
                    await ws.send(pkt.encode())
            except BaseException:  # as engine.io's writer: a failed send ends it
                break
            sent += len(packets)
            if sent >= WRITES_PER_TURN:
                # A send that finds room in the server's buffer does not suspend: without this, a writer with
                # thousands of packets queued (a client catching up) would hold the event loop until it is done.
                sent = 0
                await asyncio.sleep(0)
        await ws.close()

    async def _upgrade(self, ws: Any) -> bool:
        """engine.io's upgrade handshake on the new websocket (probe, answer, upgrade); False when it failed."""
        self.upgrading = True  # hold packet sends during the upgrade
        try:
            data = await self._wait(ws)
        except OSError:
            return False
        probe = packet.Packet(encoded_packet=data)
        if probe.packet_type != packet.PING or probe.data != "probe":
            self.server.logger.info("%s: Failed websocket upgrade, no PING packet", self.sid)
            self.upgrading = False
            return False
        await ws.send(packet.Packet(packet.PONG, data="probe").encode())
        await self.queue.put(packet.Packet(packet.NOOP))  # end the poll in progress
        try:
            data = await self._wait(ws)
        except OSError:
            self.upgrading = False
            return False
        if packet.Packet(encoded_packet=data).packet_type != packet.UPGRADE:
            self.upgraded = False
            self.server.logger.info(
                "%s: Failed websocket upgrade, expected UPGRADE packet, received %s instead.", self.sid, data
            )
            self.upgrading = False
            return False
        self.upgraded = True
        self.upgrading = False
        return True
