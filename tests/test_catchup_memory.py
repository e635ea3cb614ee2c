"""Issue 17's first defect, as it was found: ten clients catching up from offset 0 at once, under uvicorn.

Each is a raw websocket (aiohttp's ``ws_connect``, no compression) that connects the
namespace and subscribes to every partition of a topic larger than ten times the backlog
cap, from offset 0: then does nothing (idle), or starts and reads nothing (stalled: its
TCP window closes), or starts and reads everything. Before, ten of them cost hundreds of
MB and most of it stayed after they left. Each may cost at most its backlog cap and 4 MB,
and the server's RSS must come back to within 20 % of where it was before they came.
``bench/memory.py`` (figure 17) measures the same for every server and transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import psutil
import pytest

from tests.test_servers import ServerProcess

pytestmark = pytest.mark.django_db(transaction=True)

MB = 1024 * 1024
CAP = 2 * MB  # KASOCKI_MAX_BACKLOG_BYTES here: the topic needs only ten times it
ALLOWANCE = 4 * MB  # what a client may cost beside its backlog
CLIENTS = 10
PARTITIONS = 4
RECORDS = 24_000  # ~1 KB each: 24 MB, more than ten times the cap
HOLD_SECONDS = 4.0


@pytest.fixture(scope="module")
def server(kafka, django_db_setup, django_db_blocker) -> Iterator[tuple[ServerProcess, str]]:
    topic = kafka.create_topic(PARTITIONS)
    for partition in range(PARTITIONS):
        kafka.produce(topic, [{"i": i, "pad": "x" * 1000} for i in range(RECORDS // PARTITIONS)], partition=partition)
    with django_db_blocker.unblock():
        process = ServerProcess(
            "uvicorn", kafka, {"KASOCKI_ALLOWED_TOPICS": topic, "KASOCKI_MAX_BACKLOG_BYTES": str(CAP)}
        )
    try:
        yield process, topic
    finally:
        process.stop()
        kafka.delete_topics([topic])


async def catching_up(
    session: aiohttp.ClientSession, url: str, topic: str, mode: str
) -> aiohttp.ClientWebSocketResponse:
    """One client as the issue describes it, subscribed from offset 0 of every partition."""
    ws = await session.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket", compress=0, autoping=False)
    assert (await ws.receive_str()).startswith("0{")
    await ws.send_str("40")
    while not (await ws.receive_str()).startswith("40"):
        pass
    subscription = [{"topic": topic, "partition": p, "offset": 0} for p in range(PARTITIONS)]
    await ws.send_str("421" + orjson.dumps(["subscribe", subscription]).decode())
    while not (await ws.receive_str()).startswith("431[null"):
        pass
    if mode != "idle":
        await ws.send_str('422["start",null]')
    return ws


async def read_all(ws: aiohttp.ClientWebSocketResponse) -> None:
    async for frame in ws:
        if frame.data == "2":
            await ws.send_str("3")


async def one_round(url: str, topic: str, mode: str, process: psutil.Process, count: int = CLIENTS) -> int:
    """``count`` clients for HOLD_SECONDS, then gone; the highest RSS meanwhile."""
    async with aiohttp.ClientSession() as session:
        clients = await asyncio.gather(*(catching_up(session, url, topic, mode) for _ in range(count)))
        readers = [asyncio.ensure_future(read_all(ws)) for ws in clients] if mode == "reading" else []
        peak = 0
        deadline = time.monotonic() + HOLD_SECONDS
        while time.monotonic() < deadline:
            peak = max(peak, process.memory_info().rss)
            await asyncio.sleep(0.1)
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        for ws in clients:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await ws.close()
    return peak


async def settled_rss(process: psutil.Process, limit: float = 10.0) -> int:
    """The RSS once it stopped moving (by more than 1 MB over a second), or after ``limit`` seconds."""
    samples: list[tuple[float, int]] = []
    began = time.monotonic()
    while True:
        now = time.monotonic()
        samples = [(at, rss) for at, rss in samples if now - at <= 1.0] + [(now, process.memory_info().rss)]
        values = [rss for _at, rss in samples]
        if (now - samples[0][0] >= 0.9 and max(values) - min(values) < MB) or now - began >= limit:
            return values[-1]
        await asyncio.sleep(0.1)


async def back_within(process: psutil.Process, ceiling: float, limit: float) -> int:
    """The RSS as soon as it is under ``ceiling``, or after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while (rss := process.memory_info().rss) > ceiling and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    return rss


@pytest.mark.parametrize("mode", ["idle", "stalled", "reading"])
async def test_ten_clients_catching_up_cost_their_cap_and_give_it_back(server: tuple[ServerProcess, Any], mode: str):
    process, topic = server
    server_process = psutil.Process(process.process.pid)
    await one_round(process.url, topic, mode, server_process, count=1)  # the warm-up: code paths and buffers used once
    baseline = await settled_rss(server_process)
    peak = await one_round(process.url, topic, mode, server_process)
    after = await back_within(server_process, 1.2 * baseline, limit=10.0)
    growth = peak - baseline
    assert growth <= CLIENTS * (CAP + ALLOWANCE), f"{mode}: +{growth / MB:.0f} MB for {CLIENTS} clients"
    assert after <= 1.2 * baseline, f"{mode}: {after / MB:.0f} MB 10 s after they left (before: {baseline / MB:.0f})"
