"""A server told to stop (SIGTERM) ends its HTTP streams and socket.io sessions, exits, and clients resume elsewhere."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from typing import Any

import orjson
import pytest

from kasocki_app.client import KasockiClient
from tests.sse_client import Event, Stream, open_stream, positions_of
from tests.test_servers import ServerProcess

pytestmark = pytest.mark.django_db(transaction=True)

BOTH = ("websocket", "polling")
# How the servers run: the command of tests/test_servers.py, the environment on top and the
# socket.io transports that work there (long-polling needs every request of a session to reach
# one process, which ``--workers`` does not do: docs/deployment.md).
SERVERS: dict[str, tuple[str, dict[str, str], tuple[str, ...]]] = {
    "uvicorn": ("uvicorn", {}, BOTH),
    # The backstop, far away: the stop must not need it.
    "uvicorn-graceful-timeout": ("uvicorn", {"UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN": "30"}, BOTH),
    "uvicorn-2-workers": ("uvicorn", {"UVICORN_WORKERS": "2"}, ("websocket",)),
    "daphne": ("daphne", {}, BOTH),
    "runserver": ("runserver", {}, BOTH),
}
EXIT_WITHIN = 10.0  # seconds from SIGTERM to the process's exit
STEP = 20.0  # seconds any other single step may take
FAST_RECONNECT = {"reconnection_delay": 0.1, "reconnection_delay_max": 0.5, "randomization_factor": 0}


async def events_to_the_end(stream: Stream) -> list[Event]:
    """Every event until the body ends (fails after EXIT_WITHIN)."""
    events = []
    try:
        async with asyncio.timeout(EXIT_WITHIN):
            while (event := await stream.event()) is not None:
                events.append(event)
    except TimeoutError:
        raise AssertionError(f"the stream still runs {EXIT_WITHIN:g}s after SIGTERM: {events}") from None
    return events


async def wait_for_exit(server: ServerProcess, since: float) -> float:
    """Seconds from ``since`` to the server's exit (fails after EXIT_WITHIN)."""
    try:
        await asyncio.to_thread(server.process.wait, EXIT_WITHIN - (time.monotonic() - since))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the server still runs {EXIT_WITHIN:g}s after SIGTERM") from None
    return time.monotonic() - since


@pytest.mark.parametrize("kind", sorted(SERVERS))
async def test_sigterm_ends_streams_and_sessions_and_clients_resume_on_the_next_server(
    kind: str, kafka: Any, make_topic: Any, transactional_db: Any
) -> None:
    command, env, transports = SERVERS[kind]
    topic = make_topic()
    env = {**env, "KASOCKI_ALLOWED_TOPICS": topic}
    kafka.produce(topic, [{"i": i} for i in range(5)])
    server = ServerProcess(command, kafka, env)
    clients = {
        transport: KasockiClient(server.url, transports=[transport], **FAST_RECONNECT) for transport in transports
    }
    try:
        start = orjson.dumps([{"topic": topic, "partition": 0, "offset": 0}]).decode()
        stream = await open_stream(f"{server.url}/v2/stream/{topic}", {"Last-Event-ID": start})
        assert [m["i"] for m in await stream.messages(5)] == [0, 1, 2, 3, 4]
        left: dict[str, asyncio.Event] = {}
        for transport, client in clients.items():
            await asyncio.wait_for(client.connect(), STEP)
            await asyncio.wait_for(client.subscribe({"topic": topic, "partition": 0, "offset": 0}), STEP)
            await asyncio.wait_for(client.start(), STEP)
            got = [await asyncio.wait_for(anext(client.messages()), STEP) for _ in range(5)]
            assert [m["i"] for m in got] == [0, 1, 2, 3, 4]
            left[transport] = asyncio.Event()
            client.on("disconnect", lambda reason, event=left[transport]: event.set())

        began = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        rest = await events_to_the_end(stream)
        ended = time.monotonic() - began
        await stream.close()
        for event in left.values():
            await asyncio.wait_for(event.wait(), EXIT_WITHIN)
        took = await wait_for_exit(server, began)
        print(f"{kind}: stream ended {ended:.2f}s, process exited {took:.2f}s after SIGTERM")
        # The stream ended as a response ends, after an id-only event with the position after message 4.
        assert stream.complete, "the response was cut, not ended"
        assert rest and all(event.data is None for event in rest), rest
        assert positions_of(rest[-1].id) == {(topic, 0): 5}

        # Elsewhere (a new server on the same address): the stream resumes from that id, the
        # socket.io clients reconnect by themselves and resume; nothing lost, nothing repeated.
        kafka.produce(topic, [{"i": i} for i in range(5, 8)])
        server.stop()
        server = ServerProcess(command, kafka, env, port=server.port)
        resumed = await open_stream(f"{server.url}/v2/stream/{topic}", {"Last-Event-ID": rest[-1].id})
        assert [m["i"] for m in await resumed.messages(3)] == [5, 6, 7]
        await resumed.close()
        for client in clients.values():
            got = [await asyncio.wait_for(anext(client.messages()), STEP) for _ in range(3)]
            assert [m["i"] for m in got] == [5, 6, 7]
    finally:
        try:
            for client in clients.values():
                await asyncio.wait_for(client.close(), STEP)
        finally:
            server.stop()
