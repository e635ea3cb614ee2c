"""One client process of the scale figures: ``python -m bench.swarm_worker --url URL --source 127.0.0.2``.

The load generator shares the machine's cores with the server, and one event loop
holding thousands of clients lags; so the scale figures spread their clients over
several of these processes (``bench/swarm.py`` drives them). Each opens clients
on request, from its own loopback address (its own range of ephemeral ports), and
keeps, per client and partition, the first and last offset received, the count
of records at or after a window's start and how often the offsets were not
consecutive. Per message that is a few integer operations, so the figures can
check every client's offsets exactly. Delivery latencies (receive - ``sent_at``)
are counted in a histogram of 0.1 ms buckets, merged by the parent.

A client is a socket.io one (``bench/client.py``) or, with ``"kind": "sse"``, an
HTTP stream (``bench/sse_client.py``): ``subscribe`` is then the stream's topics,
or assignments with offsets sent as its ``Last-Event-ID``; it starts at once. Each
SSE message's ``id`` must hold its partition's next offset (the offset + 1).

Commands are JSON lines on stdin; each is answered by one JSON line on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Protocol

import orjson

from bench.client import LeanClient
from bench.servers import raise_open_files
from bench.sse_client import SSEClient, id_holds

BUCKETS_PER_SECOND = 10_000  # latency histogram resolution: 0.1 ms


class Client(Protocol):
    """What the worker uses of a client, socket.io or SSE."""

    @property
    def closed(self) -> asyncio.Future[None]: ...
    async def close(self) -> None: ...


class Tracked:
    """One client and what it received, per partition."""

    __slots__ = ("broken_at", "client", "counted", "disorder", "first", "gaps", "ids_wrong", "last")

    def __init__(self, client: Client, partitions: int) -> None:
        self.client = client
        self.first = [-1] * partitions
        self.last = [-1] * partitions
        self.counted = 0  # records at or after the window's start
        self.gaps = 0  # an offset more than one after the previous (expected under a filter)
        self.disorder = 0  # an offset at or before the previous: a duplicate or a reordering
        self.broken_at: list[int] | None = None  # the first [partition, previous offset, offset] not consecutive
        self.ids_wrong = 0  # SSE messages whose id does not hold their partition's next offset


class Worker:
    def __init__(self, url: str, source: str | None, partitions: int) -> None:
        self.url = url
        self.source = source
        self.partitions = partitions
        self.clients: list[Tracked] = []
        self.window_from = [0] * partitions
        self.recording = False
        self.latency: Counter[int] = Counter()

    def handler(self, tracked: Tracked) -> Callable[[Any], None]:
        now = time.time
        latency = self.latency

        def on_message(message: dict[str, Any]) -> None:
            meta = message["_kafka"]
            partition = meta["partition"]
            offset = meta["offset"]
            last = tracked.last[partition]
            if last < 0:
                tracked.first[partition] = offset
            elif offset != last + 1:
                if tracked.broken_at is None:
                    tracked.broken_at = [partition, last, offset]
                if offset <= last:
                    tracked.disorder += 1
                else:
                    tracked.gaps += 1
            tracked.last[partition] = offset
            if offset >= self.window_from[partition]:
                tracked.counted += 1
                if self.recording:
                    sent = message.get("sent_at")
                    if sent is not None:
                        latency[int((now() - sent) * BUCKETS_PER_SECOND)] += 1

        return on_message

    def sse_handler(self, tracked: Tracked) -> Callable[[dict[str, Any], bytes | None], None]:
        on_message = self.handler(tracked)

        def on_event(message: dict[str, Any], event_id: bytes | None) -> None:
            on_message(message)
            if not id_holds(event_id, message["_kafka"]):
                tracked.ids_wrong += 1

        return on_event

    async def _open_sse(self, command: dict[str, Any]) -> Tracked:
        timeout = command.get("timeout", 60.0)
        client = await SSEClient.connect(
            self.url, command["subscribe"], filter=command.get("filter"), timeout=timeout, source=self.source
        )
        tracked = Tracked(client, self.partitions)
        client.on_message(self.sse_handler(tracked))
        return tracked

    async def _open_one(self, command: dict[str, Any]) -> Tracked:
        if command.get("kind") == "sse":
            return await self._open_sse(command)
        timeout = command.get("timeout", 60.0)
        client = await LeanClient.connect(self.url, timeout=timeout, source=self.source)
        try:
            await client.next_event("ready", timeout=timeout)
            if command.get("subscribe") is None:  # connected only
                return Tracked(client, self.partitions)
            await client.ok("subscribe", command["subscribe"], timeout=timeout)
            if command.get("filter") is not None:
                await client.ok("filter", command["filter"], timeout=timeout)
            tracked = Tracked(client, self.partitions)
            on_message = self.handler(tracked)
            client.on("message", on_message)

            def on_messages(messages: list[dict[str, Any]]) -> None:
                for message in messages:
                    on_message(message)

            client.on("messages", on_messages)
            if command.get("start", True):
                await client.ok("start", command.get("start_options"), timeout=timeout)
        except BaseException:
            client.abort()  # synchronous: the attempt may be being cancelled
            raise
        return tracked

    async def open(self, command: dict[str, Any]) -> dict[str, Any]:
        """Open ``count`` clients, ``concurrency`` at a time; no new attempt after ``ramp`` s or too many failures.

        Each attempt is bounded by ``timeout``, so the answer comes within ``ramp + timeout`` seconds.
        """
        count = command["count"]
        gate = asyncio.Semaphore(command.get("concurrency", 20))
        give_up = max(20, count // 20)
        failures: list[str] = []
        before = len(self.clients)
        began = time.perf_counter()
        deadline = began + command.get("ramp", 300.0)

        async def one() -> None:
            async with gate:
                if len(failures) >= give_up or time.perf_counter() > deadline:
                    return
                try:
                    # One bound for the whole attempt (connect, ready, subscribe, filter, start).
                    opened = await asyncio.wait_for(self._open_one(command), command.get("timeout", 60.0))
                    self.clients.append(opened)
                except Exception as exc:
                    failures.append(repr(exc)[:400])

        await asyncio.gather(*(one() for _ in range(count)))
        return {
            "opened": len(self.clients) - before,
            "failed": len(failures),
            "failures": failures[:3],
            "seconds": round(time.perf_counter() - began, 2),
        }

    def window(self, command: dict[str, Any]) -> dict[str, Any]:
        """From now on, count records at or after ``from`` (per partition) and record their latency."""
        self.window_from = list(command["from"])
        for tracked in self.clients:
            tracked.counted = 0
        self.latency.clear()
        self.recording = bool(command.get("record", True))
        return {}

    def caught_up(self, until: list[int]) -> int:
        """Clients that have received, on every partition, up to ``until`` (exclusive)."""
        wanted = [(p, end - 1) for p, end in enumerate(until) if end > self.window_from[p]]
        return sum(1 for t in self.clients if all(t.last[p] >= last for p, last in wanted))

    def collect(self, command: dict[str, Any]) -> dict[str, Any]:
        """Stop recording; per-client counts, offset checks, and the latency histogram."""
        self.recording = False
        until: list[int] | None = command.get("until")
        first: list[int] | None = command.get("expect_first")
        reply: dict[str, Any] = {
            "counted": [t.counted for t in self.clients],
            "gaps": sum(t.gaps for t in self.clients),
            "disorder": sum(t.disorder for t in self.clients),
            "clients_with_gaps": sum(1 for t in self.clients if t.gaps),
            "clients_with_disorder": sum(1 for t in self.clients if t.disorder),
            "clients_with_wrong_ids": sum(1 for t in self.clients if t.ids_wrong),
            "disconnected": sum(1 for t in self.clients if t.client.closed.done()),
            "latency": list(self.latency.items()),
        }
        if until is not None:
            spans = [
                (p, start, end)
                for p, (start, end) in enumerate(zip(self.window_from, until, strict=True))
                if end > start
            ]
            expected = sum(end - start for _p, start, end in spans)
            reply["lost"] = [expected - t.counted for t in self.clients]
            inexact = []
            behind = 0
            for index, t in enumerate(self.clients):
                # Wrong offsets, as opposed to a client short of the end (slow, or disconnected on the way).
                arrived = all(t.last[p] >= end - 1 for p, _start, end in spans)
                wrong = t.gaps or t.disorder or t.ids_wrong or (arrived and t.counted != expected)
                wrong = wrong or any(t.last[p] >= end for p, _start, end in spans)  # beyond the log end
                if first is not None:  # the first offset of each partition that received any
                    wrong = wrong or any(t.first[p] not in (-1, first[p]) for p, _start, _end in spans)
                if wrong:
                    inexact.append(index)
                elif not arrived:
                    behind += 1
            reply["inexact"] = len(inexact)
            reply["behind"] = behind
            reply["inexact_examples"] = [
                {
                    "first": self.clients[i].first,
                    "last": self.clients[i].last,
                    "counted": self.clients[i].counted,
                    "expected": expected,
                    "gaps": self.clients[i].gaps,
                    "disorder": self.clients[i].disorder,
                    "broken_at": self.clients[i].broken_at,
                    "ids_wrong": self.clients[i].ids_wrong,
                    "disconnected": self.clients[i].client.closed.done(),
                }
                for i in inexact[:2]
            ]
        return reply

    async def close(self, keep: int) -> dict[str, Any]:
        """Close every client past the first ``keep``."""
        doomed, self.clients = self.clients[keep:], self.clients[:keep]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(t.client.close() for t in doomed), return_exceptions=True), 30)
        return {}

    async def handle(self, command: dict[str, Any]) -> dict[str, Any]:
        op = command["op"]
        if op == "open":
            reply = await self.open(command)
        elif op == "window":
            reply = self.window(command)
        elif op == "caught_up":
            reply = {"caught_up": self.caught_up(command["until"])}
        elif op == "collect":
            reply = self.collect(command)
        elif op == "close":
            reply = await self.close(command.get("keep", 0))
        elif op in ("ping", "quit"):
            reply = {}
        else:
            raise ValueError(f"unknown command {op!r}")
        reply["clients"] = len(self.clients)
        reply["cpu"] = time.process_time()
        return reply


async def serve(worker: Worker) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        command = orjson.loads(line)
        try:
            reply = await worker.handle(command)
        except Exception as exc:
            reply = {"error": repr(exc)[:500]}
        sys.stdout.buffer.write(orjson.dumps(reply) + b"\n")
        sys.stdout.buffer.flush()
        if command.get("op") == "quit":
            break
    await worker.close(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--source", help="local address to connect from, e.g. 127.0.0.2")
    parser.add_argument("--partitions", type=int, required=True)
    args = parser.parse_args(argv)
    raise_open_files()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(serve(Worker(args.url, args.source, args.partitions)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
