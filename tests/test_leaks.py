"""Thousands of short connections must leave the server as they found it: threads, descriptors, memory, state.

Each cycle connects over a raw websocket, subscribes, consumes one message and leaves in
one of four ways: cleanly (socket.io disconnect and websocket close), or by dropping the
TCP connection without any websocket close: with an RST, with a consume still waiting,
or while streaming. The clients are asyncio streams in the test's own loop, so they add
no threads.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import logging
import os
import socket
import struct
import time
import types
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

import orjson
import psutil
import pytest
from engineio.async_socket import AsyncSocket

from kasocki_app import kafka as kasocki_kafka
from kasocki_app import outbound
from kasocki_app.kafka import ConsumerCounts
from tests.e2e import server_service, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

WARMUP = 100
CYCLES = 2000
CONCURRENCY = 12
MESSAGES = 50
CYCLE_TIMEOUT = 30.0
# What may differ between after the warm-up and after the run, once cleanup has settled.
THREAD_MARGIN = 2
FD_MARGIN = 8
RSS_MARGIN = 32 * 1024 * 1024  # the allocator still grows by some 10 MiB over the first thousands
OBJECT_MARGIN = CYCLES // 4  # anything left behind by every connection would add at least CYCLES


class RawSocketIO:
    """A socket.io client (engine.io v4 over a websocket) that the test can drop at any moment."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, url: str) -> RawSocketIO:
        address = urlsplit(url)
        reader, writer = await asyncio.open_connection(address.hostname, address.port)
        client = cls(reader, writer)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {address.netloc}\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        response = await reader.readuntil(b"\r\n\r\n")
        assert response.startswith(b"HTTP/1.1 101"), response
        assert (await client.recv()).startswith("0{")  # engine.io open
        await client.send("40")  # socket.io connect to "/"
        await client.recv_until("40")
        return client

    async def recv(self) -> str:
        """The next text message; close frames raise ConnectionError."""
        message = b""
        while True:
            first, second = await self.reader.readexactly(2)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack(">H", await self.reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack(">Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(length)
            opcode = first & 0x0F
            if opcode == 0x8:
                raise ConnectionError("closed by the server")
            if opcode in (0x9, 0xA):
                continue
            message += payload
            if first & 0x80:
                return message.decode()

    async def recv_until(self, prefix: str) -> str:
        while True:
            frame = await self.recv()
            if frame == "2":
                await self.send("3")  # engine.io ping
            elif frame.startswith(prefix):
                return frame

    async def send(self, text: str, opcode: int = 0x1) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        if len(payload) < 126:
            header = bytes([0x80 | opcode, 0x80 | len(payload)])
        else:
            header = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack(">H", len(payload))
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(header + mask + masked)
        await self.writer.drain()

    async def call(self, ack_id: int, event: str, arg: Any) -> tuple[Any, Any]:
        await self.send(f"42{ack_id}" + orjson.dumps([event, arg]).decode())
        prefix = f"43{ack_id}"
        err, res = orjson.loads((await self.recv_until(prefix))[len(prefix) :])
        return err, res

    async def close_cleanly(self) -> None:
        """socket.io disconnect, then a websocket close handshake."""
        await self.send("41")
        await self.send("", opcode=0x8)
        try:
            while True:
                await self.recv()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        self.writer.close()
        await self.writer.wait_closed()

    def drop(self, reset: bool) -> None:
        """Close the TCP connection at once, without any websocket close; ``reset`` sends an RST."""
        if reset:
            sock = self.writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


async def cycle(url: str, topic: str, index: int, kinds: Counter[str]) -> None:
    offset = index % MESSAGES
    client = await RawSocketIO.connect(url)
    try:
        err, positions = await client.call(0, "subscribe", {"topic": topic, "partition": 0, "offset": offset})
        assert err is None, err
        assert positions == [{"topic": topic, "partition": 0, "offset": offset}]
        err, message = await client.call(1, "consume", None)
        assert err is None, err
        assert message["_kafka"]["offset"] == offset and message["i"] == offset
        kind = ("clean", "reset", "waiting consume", "streaming")[index % 4]
        if kind == "clean":
            await client.close_cleanly()
        elif kind == "reset":
            client.drop(reset=True)
        elif kind == "waiting consume":
            err, _ = await client.call(2, "filter", {"never": True})  # nothing passes: the consume waits
            assert err is None, err
            await client.send('423["consume",null]')
            client.drop(reset=False)
        else:
            await client.send('424["start",null]')
            if offset < MESSAGES - 1:
                await client.recv_until('42["message"')
            client.drop(reset=False)
        kinds[kind] += 1
    except BaseException:
        client.drop(reset=True)
        raise


async def run_cycles(url: str, topic: str, start: int, count: int, kinds: Counter[str]) -> list[float]:
    """``count`` cycles, CONCURRENCY at a time; returns each cycle's duration."""
    indexes = iter(range(start, start + count))
    durations: list[float] = []

    async def worker() -> None:
        for index in indexes:
            began = time.monotonic()
            await asyncio.wait_for(cycle(url, topic, index, kinds), CYCLE_TIMEOUT)
            durations.append(time.monotonic() - began)

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return durations


def figures() -> dict[str, int]:
    gc.collect()
    process = psutil.Process(os.getpid())
    return {
        "threads": process.num_threads(),
        "fds": process.num_fds(),
        "rss": process.memory_info().rss,
        "objects": sum(1 for obj in gc.get_objects() if not _coverage_record(obj)),
    }


def _coverage_record(obj: object) -> bool:
    """True for coverage.py's own bookkeeping, which is not the server's to free.

    Under coverage, every thread started (each consumer closes in a thread of its own) leaves a
    tracer whose bound methods coverage keeps until the end of the run.
    """
    return isinstance(obj, types.MethodType) and type(obj.__self__).__module__.startswith("coverage")


def show(label: str, values: dict[str, int]) -> str:
    return (
        f"{label}: {values['threads']} threads, {values['fds']} fds, {values['rss'] / 2**20:.1f} MiB RSS, "
        f"{values['objects']} Python objects tracked by the garbage collector"
    )


def engineio_sockets_alive() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, AsyncSocket))


async def settled(service: Any, consumers: int) -> None:
    """Wait for the server to finish tearing down every connection of the cycles."""
    from kasocki_project.asgi import application

    await wait_until(lambda: not service.connections, timeout=30, what="every connection closed")
    await wait_until(lambda: ConsumerCounts.open == consumers, timeout=30, what="every consumer closed")
    await wait_until(lambda: not application.sio.eio.sockets, timeout=30, what="every engine.io socket gone")
    await wait_until(lambda: not outbound._transports, timeout=30, what="every transport forgotten")
    # engine.io holds closed sockets a while (see the intervals set in the test); and its idle
    # service task keeps the last socket it looked at in a loop variable: one, never more.
    await wait_until(lambda: engineio_sockets_alive() <= 1, timeout=60, what="engine.io socket objects freed")


@pytest.mark.timeout(300)
async def test_connection_cycles_leak_nothing(kafka, make_topic, allow, settings, asgi_server, caplog, monkeypatch):
    from kasocki_project.asgi import application

    # Every cycle comes from 127.0.0.1: connection limits per address must not refuse the test itself.
    settings.KASOCKI_MAX_CONNECTIONS_PER_IP = 10_000
    settings.KASOCKI_MAX_CONNECTION_RATE_PER_IP = 1_000_000
    # pytest keeps every log record of a test in memory: the INFO lines of thousands of
    # connections would look like a leak. Warnings and errors are still recorded.
    caplog.set_level(logging.WARNING, logger="kasocki_app")
    # engine.io holds on to closed sockets for a while: each one's ping task sleeps a ping
    # interval (25s) before it sees the socket closed, and the service task walks a copy of
    # the socket table over one ping timeout (20s). Shorter intervals let the test see every
    # socket object freed without waiting that long.
    monkeypatch.setattr(application.sio.eio, "ping_interval", 3)
    monkeypatch.setattr(application.sio.eio, "ping_timeout", 4)
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"i": i} for i in range(MESSAGES)])
    service = server_service()
    consumers = ConsumerCounts.open
    abandoned = ConsumerCounts.abandoned
    kinds: Counter[str] = Counter()

    # Warm up: the Kafka pool grows to its full size, caches and allocators fill.
    pool = kasocki_kafka.executor()
    list(pool.map(time.sleep, [0.05] * pool._max_workers))
    await run_cycles(asgi_server.url, topic, 0, WARMUP, kinds)
    await settled(service, consumers)
    before = figures()

    began = time.monotonic()
    durations = await run_cycles(asgi_server.url, topic, WARMUP, CYCLES, kinds)
    elapsed = time.monotonic() - began
    await settled(service, consumers)
    # Closing consumers and sockets finishes in the background: give it a moment to be done
    # (and if it never is, show the figures before the assertions below fail).
    with contextlib.suppress(AssertionError):
        await wait_until(
            lambda: (
                figures()["threads"] <= before["threads"] + THREAD_MARGIN
                and figures()["fds"] <= before["fds"] + FD_MARGIN
            ),
            timeout=30,
            what="threads and descriptors back down",
        )
    after = figures()

    durations.sort()
    print(f"\n{CYCLES} cycles after {WARMUP} warm-up ones, {CONCURRENCY} at a time, in {elapsed:.1f}s")
    print(
        f"per cycle: {1000 * elapsed / CYCLES:.1f} ms of wall time; one cycle took median "
        f"{1000 * durations[len(durations) // 2]:.0f} ms, 99th percentile "
        f"{1000 * durations[int(len(durations) * 0.99)]:.0f} ms, max {1000 * durations[-1]:.0f} ms"
    )
    print(f"ways of leaving: {dict(kinds)}")
    print(show("after warm-up", before))
    print(show("after the run", after))
    assert sum(kinds.values()) == WARMUP + CYCLES
    assert after["threads"] <= before["threads"] + THREAD_MARGIN
    assert after["fds"] <= before["fds"] + FD_MARGIN
    assert after["rss"] <= before["rss"] + RSS_MARGIN, f"RSS grew by {(after['rss'] - before['rss']) / 2**20:.1f} MiB"
    assert after["objects"] <= before["objects"] + OBJECT_MARGIN, f"{after['objects'] - before['objects']} more objects"
    assert ConsumerCounts.abandoned == abandoned
