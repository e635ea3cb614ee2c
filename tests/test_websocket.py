"""engine.io's websocket transport (kasocki_app/websocket.py) over a fake websocket: order, replies, endings."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from engineio import packet

from kasocki_app.polling import EngineServer
from kasocki_app.websocket import WebSocketSession
from tests.fakes import settle


class FakeWebSocket:
    """engine.io's ASGI websocket as the session sees it: frames in from ``client``, frames out in ``sent``."""

    def __init__(self) -> None:
        self.client: asyncio.Queue[str | None] = asyncio.Queue()
        self.sent: list[str] = []
        self.hold: asyncio.Event | None = None  # the next send waits for it (a server whose buffer is full)
        self.broken = False  # sends fail, as to a client that left
        self.closed = False

    async def wait(self) -> str | None:
        frame = await self.client.get()
        if frame is None:
            raise OSError("the client left")
        return frame

    async def send(self, frame: str) -> None:
        hold, self.hold = self.hold, None
        if hold is not None:
            await hold.wait()
        if self.broken:
            raise OSError("the client left")
        self.sent.append(frame)

    async def close(self) -> None:
        self.closed = True


def message(text: str) -> packet.Packet:
    return packet.Packet(packet.MESSAGE, data=text)


@pytest.fixture
async def session() -> Any:
    """A session on the websocket from the start, its reader and writer running."""
    server = EngineServer(async_mode="asgi")
    socket = WebSocketSession(server, "sid-1")
    ws = FakeWebSocket()
    handler = asyncio.ensure_future(socket._websocket_handler(ws))
    await settle()
    yield socket, ws, handler
    ws.client.put_nowait(None)
    await asyncio.wait_for(handler, 5)


async def test_a_reply_is_written_at_once_when_the_writer_waits_with_nothing_queued(session):
    socket, ws, _ = session
    await socket.send_now(message("3 reply"))
    assert ws.sent == ["43 reply"]  # before any other task ran


async def test_a_reply_follows_what_was_queued_before_it(session):
    socket, ws, _ = session
    await socket.send(message("2 event"))
    await socket.send_now(message("3 reply"))
    await settle()
    assert ws.sent == ["42 event", "43 reply"]


async def test_what_is_sent_after_a_reply_held_by_the_server_follows_it(session):
    socket, ws, _ = session
    hold = ws.hold = asyncio.Event()
    reply = asyncio.ensure_future(socket.send_now(message("3 first")))
    await settle()
    await socket.send(message("2 second"))  # queued: the writer must not overtake the held reply
    await socket.send_now(message("3 third"))
    await settle()
    assert ws.sent == [] and not reply.done()
    hold.set()
    await reply
    await settle()
    assert ws.sent == ["43 first", "42 second", "43 third"]


async def test_a_client_silent_for_the_ping_timeouts_ends_the_session():
    server = EngineServer(async_mode="asgi", ping_interval=0.05, ping_timeout=0.05)
    socket = WebSocketSession(server, "sid-1")
    ws = FakeWebSocket()
    await asyncio.wait_for(socket._websocket_handler(ws), 5)
    assert socket.closed and ws.closed


async def test_a_packet_over_the_size_limit_ends_the_session():
    server = EngineServer(async_mode="asgi", max_http_buffer_size=10)
    socket = WebSocketSession(server, "sid-1")
    ws = FakeWebSocket()
    ws.client.put_nowait("4" + "x" * 10)
    await asyncio.wait_for(socket._websocket_handler(ws), 5)
    assert socket.closed and ws.closed


async def test_a_reply_that_cannot_be_written_ends_the_writer_and_closes_the_websocket(session):
    socket, ws, _ = session
    ws.broken = True
    await socket.send_now(message("3 reply"))
    await settle()
    assert ws.closed


async def test_the_writer_sends_what_was_queued_before_the_end_then_closes(session):
    socket, ws, _ = session
    hold = ws.hold = asyncio.Event()
    await socket.send(message("2 first"))
    await settle()  # the writer holds "first"
    await socket.send(message("2 second"))
    socket.queue.put_nowait(None)  # the session ends after what is queued
    hold.set()
    await settle()
    assert ws.sent == ["42 first", "42 second"] and ws.closed


async def upgrading(*frames: str | None) -> tuple[WebSocketSession, FakeWebSocket, asyncio.Task[None]]:
    """A long-polling session upgrading over a websocket on which the client sends ``frames``."""
    socket = WebSocketSession(EngineServer(async_mode="asgi"), "sid-1")
    socket.connected = True
    ws = FakeWebSocket()
    for frame in frames:
        ws.client.put_nowait(frame)
    handler = asyncio.ensure_future(socket._websocket_handler(ws))
    await settle()
    return socket, ws, handler


async def test_an_upgrade_answers_the_probe_then_reads_the_websocket():
    socket, ws, handler = await upgrading("2probe", "5")
    assert socket.upgraded and not socket.upgrading and ws.sent[0] == "3probe"
    await socket.send_now(message("3 reply"))
    assert ws.sent[-1] == "43 reply"
    ws.client.put_nowait(None)
    await asyncio.wait_for(handler, 5)
    assert socket.closed


@pytest.mark.parametrize(
    ("frames", "upgraded"),
    [
        pytest.param(["4hello"], False, id="no-probe"),
        pytest.param(["2probe", "4hello"], False, id="no-upgrade-packet"),
        pytest.param(["2probe", None], False, id="client-left-mid-upgrade"),
    ],
)
async def test_a_failed_upgrade_leaves_the_session_on_long_polling(frames, upgraded):
    socket, ws, handler = await upgrading(*frames)
    await asyncio.wait_for(handler, 5)
    assert socket.upgraded is upgraded and not socket.upgrading and not socket.closed and not ws.closed
