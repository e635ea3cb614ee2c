"""A polling client that leaves mid-poll: its request ends at once, its session lives on for its next poll.

engine.io's long-poll waits for packets without reading the request again, so it did not
see the client leave: daphne killed the application instance after its close timeout
(logging "took too long to shut down and was killed", and the kill closed the session),
and under uvicorn the abandoned poll took the next packet meant for the client.
"""

from __future__ import annotations

import asyncio
import http.client
import time
from collections.abc import Callable, Iterator

import orjson
import psutil
import pytest

from kasocki_app.outbound import LongPollWatch
from tests import test_servers
from tests.test_servers import ServerProcess

pytestmark = pytest.mark.django_db(transaction=True)

CLOSE_TIMEOUT = 2  # daphne's --application-close-timeout (10 s by default)
KILLED = "took too long to shut down and was killed"


class PollingClient:
    """engine.io long-polling by hand, each request on a TCP connection of its own."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.path = ""

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)

    def request(self, method: str, body: bytes = b"") -> list[str]:
        """The packets of the response (or its status and body, if it is not a 200)."""
        connection = self.connection()
        try:
            connection.request(method, self.path or "/socket.io/?EIO=4&transport=polling", body=body)
            response = connection.getresponse()
            text = response.read().decode()
            return text.split("\x1e") if response.status == 200 else [f"{response.status} {text}"]
        finally:
            connection.close()

    def open(self) -> None:
        """Handshake, connect to the namespace, and read packets until the ``ready`` event."""
        self.sid = orjson.loads(self.request("GET")[0][1:])["sid"]
        self.path = f"/socket.io/?EIO=4&transport=polling&sid={self.sid}"
        assert self.request("POST", b"40") == ["OK"]
        while not any(packet.startswith('42["ready"') for packet in self.request("GET")):
            pass

    def start_poll(self) -> http.client.HTTPConnection:
        connection = self.connection()
        connection.request("GET", self.path)
        return connection

    def ack_roundtrip(self, ack_id: int) -> list[str]:
        """Poll on a new connection and emit an event asking for an ack: what the poll returns ([] if nothing)."""
        poll = self.start_poll()
        try:
            posted = self.request("POST", f'42{ack_id}["filter",null]'.encode())
            if posted != ["OK"]:
                return posted
            poll.sock.settimeout(5)
            return poll.getresponse().read().decode().split("\x1e")
        except TimeoutError:
            return []
        finally:
            poll.close()


def server_holds(server: ServerProcess, port: int) -> bool:
    """True while the server process has the TCP connection from our ``port`` open."""
    connections = psutil.Process(server.process.pid).net_connections()
    return any(c.raddr and c.raddr.port == port and c.status == "ESTABLISHED" for c in connections)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.01)


@pytest.fixture(params=["daphne", "uvicorn"])
def server(request, kafka, transactional_db, monkeypatch) -> Iterator[ServerProcess]:
    daphne = [*test_servers.COMMANDS["daphne"], "--application-close-timeout", str(CLOSE_TIMEOUT)]
    monkeypatch.setitem(test_servers.COMMANDS, "daphne", daphne)
    process = ServerProcess(request.param, kafka)
    try:
        yield process
    finally:
        if process.process.poll() is None:  # the test stops it itself to read its log
            process.stop()
        print(process.output)  # shown when the test fails


def test_a_poll_whose_client_left_ends_and_the_session_serves_the_next_poll(server):
    client = PollingClient(server.port)
    client.open()
    abandoned = client.start_poll()
    port = abandoned.sock.getsockname()[1]
    wait_until(lambda: server_holds(server, port), "the server accepted the poll")
    abandoned.close()
    left_at = time.monotonic()
    # Whatever is emitted before the server saw the client leave goes to the abandoned poll (as
    # with any long-polling server): the next poll starts once the server closed its side.
    wait_until(lambda: not server_holds(server, port), "the server saw the client leave")

    # Past daphne's close timeout and its once-a-second check: by now it would have killed the
    # application instance (nothing to await: what must not happen is the kill).
    time.sleep(max(0.0, left_at + CLOSE_TIMEOUT + 2.5 - time.monotonic()))
    first = client.ack_roundtrip(1)
    second = client.ack_roundtrip(2)
    server.stop()

    assert KILLED not in server.output
    # The session outlived the abandoned poll, which took nothing meant for the next ones.
    assert first[:1] == ["431[null,null]"], first
    assert second[:1] == ["432[null,null]"], second
    assert "Traceback" not in server.output


async def test_the_watch_passes_the_body_through_and_sees_the_client_leave_after_it():
    messages: asyncio.Queue[dict] = asyncio.Queue()
    for part, more in ((b"4", True), (b"2", False)):
        messages.put_nowait({"type": "http.request", "body": part, "more_body": more})
    left = asyncio.Event()
    watch = LongPollWatch(messages.get, _ignore, left.set)
    try:
        # The application reads the whole body itself...
        assert (await asyncio.wait_for(watch.receive(), 5))["body"] == b"4"
        assert (await asyncio.wait_for(watch.receive(), 5))["body"] == b"2"
        # ...then the watch reads on, and sees the disconnect while the application waits elsewhere.
        messages.put_nowait({"type": "http.disconnect"})
        await asyncio.wait_for(left.wait(), 5)
        assert (await watch.receive())["type"] == "http.disconnect"  # and so does the application, if it asks
    finally:
        await watch.close()


async def test_the_watch_ignores_the_disconnect_that_follows_a_complete_response():
    messages: asyncio.Queue[dict] = asyncio.Queue()
    messages.put_nowait({"type": "http.request", "body": b""})
    left: list[bool] = []
    watch = LongPollWatch(messages.get, _ignore, lambda: left.append(True))
    try:
        await watch.receive()
        await watch.send({"type": "http.response.start", "status": 200, "headers": []})
        await watch.send({"type": "http.response.body", "body": b"6"})
        messages.put_nowait({"type": "http.disconnect"})  # servers send it once the response is done
        assert (await asyncio.wait_for(watch.receive(), 5))["type"] == "http.disconnect"
        assert left == []
    finally:
        await watch.close()


async def _ignore(message: dict) -> None:
    pass
