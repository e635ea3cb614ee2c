"""The project under each way of serving it: runserver (daphne), daphne and uvicorn, as real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from django.db import connections

from kasocki_app.models import WhitelistedTopic
from tests.clients import RecordingClient
from tests.e2e import http_status
from tests.live_server import free_port
from tests.rawws import RawWebSocket
from tests.sse_client import open_stream

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {
    "runserver": [sys.executable, "manage.py", "runserver", "--noreload", "127.0.0.1:{port}"],
    "daphne": [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", "{port}", "kasocki_project.asgi:application"],
    "uvicorn": [sys.executable, "-m", "uvicorn", "--port", "{port}", "kasocki_project.asgi:application"],
}


class ServerProcess:
    def __init__(self, kind: str, kafka, extra_env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.port = port or free_port()  # a port of its own, or a killed server's to take over
        self.url = f"http://127.0.0.1:{self.port}"
        database = connections["default"].settings_dict["NAME"]
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
            "DATABASE_URL": f"sqlite:///{database}",
            "KASOCKI_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }
        command = [part.format(port=self.port) for part in COMMANDS[kind]]
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if http_status(f"{self.url}/healthz") == 200:
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{kind} did not start:\n{self.output}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        output, _ = self.process.communicate()  # also closes the pipe
        self.output = output.decode(errors="replace") if output else ""


@pytest.fixture(params=sorted(COMMANDS))
def server(request, kafka, transactional_db) -> Iterator[ServerProcess]:
    process = ServerProcess(request.param, kafka)
    yield process
    process.stop()


async def test_server_serves_django_socketio_and_streams(server, kafka, make_topic):
    topic = make_topic()
    assert http_status(f"{server.url}/healthz") == 200
    assert http_status(f"{server.url}/readyz") == 200
    assert http_status(f"{server.url}/admin/login/") == 200
    # The whitelist in the admin's database reaches the server process within 5 seconds.
    await WhitelistedTopic.objects.acreate(topic=topic)
    for transports in (["websocket"], ["polling"]):
        deadline = time.monotonic() + 5
        while True:
            client = await RecordingClient().connect(server.url, transports=transports)
            ready = await client.next("ready")
            await client.close()
            if topic in ready or time.monotonic() > deadline:
                break
        assert ready == [topic]
    client = await RecordingClient().connect(server.url)
    assert await client.next("ready") == [topic]
    assert await client.ok("subscribe", topic) == [{"topic": topic, "partition": 0, "offset": 0}]
    await client.close()
    # HTTP streams: a message and its id, then a stream ended by the client.
    kafka.produce(topic, [{"i": 0}])
    event_id = orjson.dumps([{"topic": topic, "partition": 0, "offset": 0}]).decode()
    stream = await open_stream(f"{server.url}/v2/stream/{topic}", {"Last-Event-ID": event_id})
    assert stream.status == 200 and stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    (message,) = await stream.messages(1)
    assert message["i"] == 0 and orjson.loads(stream.last_event_id)[0]["offset"] == 1
    await stream.close()


def stalled_daphne(kafka: Any, make_topic: Any) -> tuple[str, ServerProcess]:
    """A daphne process with 60 MB to stream from a topic, a 1 MB backlog cap and a 4 s slow-client timeout."""
    topic = make_topic()
    kafka.produce(topic, [{"i": i, "pad": "x" * 1000} for i in range(60_000)])
    env = {
        "KASOCKI_ALLOWED_TOPICS": topic,
        "KASOCKI_MAX_BACKLOG_BYTES": str(1024 * 1024),
        "KASOCKI_SLOW_CLIENT_TIMEOUT": "4",
    }
    return topic, ServerProcess("daphne", kafka, env)


def assert_bounded_then_cut(server: ServerProcess, rss_before: int, sock: socket.socket) -> None:
    """The client behind ``sock`` stopped reading: the server must pause, then drop it, growing little."""
    process = psutil.Process(server.process.pid)
    deadline = time.monotonic() + 30
    while _holds(process, sock) and time.monotonic() < deadline:
        time.sleep(0.2)
    closed = not _holds(process, sock)
    growth = process.memory_info().rss - rss_before
    assert growth < 50 * 1024 * 1024, f"daphne grew by {growth / 2**20:.0f} MB"
    assert closed, "the stalled client was not disconnected"


def test_daphne_keeps_a_stalled_client_bounded(kafka, make_topic, transactional_db):
    """daphne's websocket send has no backpressure: the service must bound what waits for a stalled client."""
    topic, server = stalled_daphne(kafka, make_topic)
    try:
        rss_before = psutil.Process(server.process.pid).memory_info().rss
        ws = RawWebSocket(server.url, "/socket.io/?EIO=4&transport=websocket")
        assert ws.recv().startswith("0{")
        ws.send("40")
        while not ws.recv().startswith("40"):
            pass
        ws.send("420" + orjson.dumps(["subscribe", {"topic": topic, "partition": 0, "offset": 0}]).decode())
        while not ws.recv().startswith("430"):
            pass
        ws.send('421["start",null]')
        assert_bounded_then_cut(server, rss_before, ws.sock)  # from here on it reads nothing
    finally:
        ws.close()
        server.stop()


def test_daphne_keeps_a_stalled_http_stream_bounded(kafka, make_topic, transactional_db):
    """An HTTP stream under daphne too: its backlog is read from Twisted's buffer, paused, then cut."""
    topic, server = stalled_daphne(kafka, make_topic)
    reader = socket.socket()
    try:
        rss_before = psutil.Process(server.process.pid).memory_info().rss
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        reader.connect(("127.0.0.1", server.port))
        event_id = orjson.dumps([{"topic": topic, "partition": 0, "offset": 0}]).decode()
        host = f"127.0.0.1:{server.port}"
        reader.sendall(f"GET /v2/stream/{topic} HTTP/1.1\r\nHost: {host}\r\nLast-Event-ID: {event_id}\r\n\r\n".encode())
        assert reader.recv(12) == b"HTTP/1.1 200"
        assert_bounded_then_cut(server, rss_before, reader)  # from here on it reads nothing
    finally:
        reader.close()
        server.stop()


def _holds(process: psutil.Process, sock: socket.socket) -> bool:
    """True while the server process still has this TCP connection open."""
    ours = sock.getsockname()[1]
    return any(c.raddr and c.raddr.port == ours and c.status == "ESTABLISHED" for c in process.net_connections())
