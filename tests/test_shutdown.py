"""kasocki_app.shutdown over fakes: the stop signal, ending streams and sessions, refusing what comes meanwhile."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from types import FrameType
from typing import Any

import orjson
import pytest

from kasocki_app import calls, shutdown, sse_view
from kasocki_app.service import Service
from kasocki_app.sse import EventStream
from tests.fakes import FakeOutbound, settle
from tests.sse_client import parse_events, positions_of

ENGINEIO_PATH = "/socket.io/"


class FakeSession:
    """An engine.io session: closing it closes its connection, as the disconnect handler does."""

    def __init__(self, service: Service, sid: str) -> None:
        self.service = service
        self.sid = sid
        self.closes: list[dict[str, Any]] = []

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        self.closes.append({"wait": wait, "abort": abort})
        await self.service.close(self.sid)


class FakeServer:
    """python-socketio's server as the stop sees it: ``eio.sockets``."""

    def __init__(self) -> None:
        self.eio = type("Eio", (), {})()
        self.eio.sockets = {}


class FakeTransport:
    """An asyncio transport under one request (what ``outbound.server_transport`` finds)."""

    def __init__(self) -> None:
        self.aborted = False

    def get_write_buffer_size(self) -> int:
        return 0

    def abort(self) -> None:
        self.aborted = True


class FakeProtocol:
    """An ASGI server's protocol: ``send`` is its bound method, as uvicorn's is."""

    def __init__(self, transport: FakeTransport | None) -> None:
        if transport is not None:
            self.transport = transport
        self.sent: list[dict[str, Any]] = []

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)


async def disconnected() -> dict[str, Any]:
    return {"type": "http.disconnect"}


@pytest.fixture
async def service(log: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Service]:
    """The process's service, over the fake log."""
    own = Service(log.open_reader, log)
    monkeypatch.setattr(shutdown, "process_service", lambda: own)
    monkeypatch.setattr(sse_view, "process_service", lambda: own)
    yield own
    for sid in list(own.connections):
        await own.close(sid)
    await own.shutdown()


@pytest.fixture
def handlers() -> Iterator[None]:
    """Put the process's SIGTERM and SIGINT handlers back after the test."""
    saved = {signum: signal.getsignal(signum) for signum in shutdown.SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


async def open_stream(service: Service, sid: str) -> AsyncIterator[bytes]:
    """A stream of t/0 from offset 0, as sse_view opens it; its body."""
    stream = EventStream(ndjson=False, transport=None)
    connection = service.open(sid, stream, transport="sse")
    await sse_view._begin(connection, None, [{"topic": "t", "partition": 0, "offset": 0}], stream)
    return stream.body(lambda: service.close(sid))


async def test_a_stop_ends_streams_after_a_last_id_and_closes_sessions_without_a_disconnect(service, log):
    log.create_topic("t")
    log.produce("t", [{"i": i} for i in range(3)])
    body = await open_stream(service, "sse-1")
    read = b""
    while b'"offset":2,' not in read:  # the third message
        read += await asyncio.wait_for(anext(body), 5)
    socketio = FakeServer()
    session = socketio.eio.sockets["eio-1"] = FakeSession(service, "sid-1")
    service.open("sid-1", FakeOutbound())
    stopping = asyncio.ensure_future(shutdown.GracefulStop(socketio, ENGINEIO_PATH).stop())
    read += b"".join([chunk async for chunk in body])  # ends
    await asyncio.wait_for(stopping, 5)
    events = parse_events(read)
    assert events[-1].data is None and positions_of(events[-1].id) == {("t", 0): 3}
    assert [e.json()["i"] for e in events if e.data] == [0, 1, 2]
    # engine.io's CLOSE packet would tell python-socketio's client not to reconnect: an aborted close sends none.
    assert session.closes == [{"wait": False, "abort": True}]
    assert service.stopping and not service.connections
    assert service.tail.closed and not service.watch.running  # the service stopped too


async def test_a_stop_waits_for_the_apps_own_calls_to_return(service):
    # A stream's connection closes before its response writes the last chunk, a websocket's before its call
    # returns: the server must not stop its loop in between (calls.py).
    released = asyncio.Event()

    async def respond() -> None:
        with calls.serving():
            await released.wait()

    response = asyncio.ensure_future(respond())
    await settle()
    stopping = asyncio.ensure_future(shutdown.GracefulStop(FakeServer(), ENGINEIO_PATH).stop())
    await settle()
    assert service.stopping and not stopping.done()
    released.set()
    await asyncio.wait_for(stopping, 5)
    await response


async def test_connections_that_do_not_end_are_cut_after_the_drain(service, monkeypatch):
    monkeypatch.setattr(shutdown, "DRAIN_SECONDS", 0.05)
    stalled = FakeOutbound()  # its session never closes it (a client that does not read, say)
    service.open("sid-1", stalled)
    await asyncio.wait_for(shutdown.GracefulStop(FakeServer(), ENGINEIO_PATH).stop(), 5)
    assert stalled.aborted


async def test_the_servers_handler_runs_after_the_stop_and_at_once_on_a_second_signal(service, handlers, monkeypatch):
    monkeypatch.setattr(shutdown, "DRAIN_SECONDS", 0.3)
    stalled = FakeOutbound()
    service.open("sid-1", stalled)  # holds the stop for DRAIN_SECONDS
    calls: list[int] = []
    called = asyncio.Event()

    def server_handler(signum: int, frame: FrameType | None) -> None:
        calls.append(signum)
        called.set()

    signal.signal(signal.SIGTERM, server_handler)
    default_sigint = signal.getsignal(signal.SIGINT)
    graceful = shutdown.GracefulStop(FakeServer(), ENGINEIO_PATH)
    assert await graceful.admit({"type": "lifespan"}, disconnected, FakeProtocol(None).send)  # the first call
    assert signal.getsignal(signal.SIGTERM) is not server_handler
    if default_sigint is signal.default_int_handler:  # Python's own: not the server's, left alone
        assert signal.getsignal(signal.SIGINT) is default_sigint
    signal.raise_signal(signal.SIGTERM)
    await settle()  # the handler ran (in this thread); the stop began on the loop
    assert calls == [] and service.stopping
    signal.raise_signal(signal.SIGTERM)  # impatient: straight to the server
    assert calls == [signal.SIGTERM]
    called.clear()
    await asyncio.wait_for(called.wait(), 5)
    assert calls == [signal.SIGTERM, signal.SIGTERM] and stalled.aborted


async def test_no_handler_is_chained_outside_the_main_thread(service, handlers):
    def server_handler(signum: int, frame: FrameType | None) -> None:
        raise AssertionError("not called")

    signal.signal(signal.SIGTERM, server_handler)
    graceful = shutdown.GracefulStop(FakeServer(), ENGINEIO_PATH)
    await asyncio.to_thread(graceful.install)
    assert graceful.installed and signal.getsignal(signal.SIGTERM) is server_handler


@pytest.mark.parametrize(
    ("kind", "path", "admitted"),
    [
        pytest.param("http", "/socket.io/?EIO=4&transport=polling", False, id="handshake"),
        pytest.param("websocket", "/socket.io/?EIO=4&transport=websocket", False, id="websocket"),
        pytest.param("http", "/socket.io/?EIO=4&transport=polling&sid=x", False, id="ended-session"),
        pytest.param("http", "/v2/stream/t", True, id="stream"),
        pytest.param("http", "/admin/", True, id="django"),
    ],
)
async def test_engineio_requests_are_cut_while_stopping(service, kind, path, admitted):
    path, _, query = path.partition("?")
    scope = {"type": kind, "path": path, "query_string": query.encode()}
    graceful = shutdown.GracefulStop(FakeServer(), ENGINEIO_PATH)
    graceful.installed = True
    transport = FakeTransport()
    server = FakeProtocol(transport)
    assert await graceful.admit(scope, disconnected, server.send)  # not stopping: everything is served
    service.stopping = True
    assert await graceful.admit(scope, disconnected, server.send) is admitted
    # Cut, not answered: the client connects again (to another process) as after any failed connection.
    assert transport.aborted is not admitted and server.sent == []


async def test_where_the_connection_cannot_be_cut_engineio_requests_are_refused(service):
    graceful = shutdown.GracefulStop(FakeServer(), ENGINEIO_PATH)
    graceful.installed = True
    service.stopping = True
    server = FakeProtocol(None)
    assert not await graceful.admit({"type": "websocket", "path": "/socket.io/"}, disconnected, server.send)
    assert not await graceful.admit({"type": "http", "path": "/socket.io/"}, disconnected, server.send)
    close, start, body = server.sent
    assert close == {"type": "websocket.close", "code": 1013}
    headers = dict(start["headers"])
    assert start["status"] == 503 and headers[b"retry-after"] == b"1"
    assert int(headers[b"content-length"]) == len(body["body"])
    assert orjson.loads(body["body"])["name"] == "ServerStoppingError"


class Query:
    """A stream request as sse_view reads it."""

    method = "GET"
    headers: dict[str, str] = {}
    query: dict[str, list[str]] = {}
    peer = "127.0.0.1"
    origin = "http://testserver"
    cookies = ""
    transport = None


async def test_streams_asked_for_while_stopping_are_refused_with_503_and_retry_after(service, log, monkeypatch):
    log.create_topic("t")
    service.stopping = True
    answer = await sse_view.answer(Query(), "t")
    assert answer.status == 503 and answer.headers["Retry-After"] == "1" and answer.body is None
    assert orjson.loads(answer.content)["name"] == "ServerStoppingError"
    assert not service.connections and service.limiter.total == 0
