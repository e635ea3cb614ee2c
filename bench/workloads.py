"""One round of each figure's workload. Each returns a dict of plain numbers for the JSON report.

Client-side workloads are coroutines over ``LeanClient``; the run's orchestrator
gives each round a fresh event loop. Throughput rounds stop at a target count or
a time cap, whichever comes first, and also report how busy the server process
(all threads) and this client process were, as a fraction of one core.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from confluent_kafka import OFFSET_END, Consumer, TopicPartition

from bench.client import LeanClient
from bench.data import FILTER_BUCKET
from bench.servers import ProcessStats, describe


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


class Busy:
    """CPU used by the server process and by this (client) process over a measured interval."""

    def __init__(self, server_pid: int | None) -> None:
        self.server = ProcessStats(server_pid) if server_pid else None

    def __enter__(self) -> Busy:
        self.wall = time.perf_counter()
        self.client_cpu = time.process_time()
        self.server_cpu = self.server.cpu() if self.server else 0.0
        return self

    def __exit__(self, *exc: Any) -> None:
        wall = max(time.perf_counter() - self.wall, 1e-9)
        self.client = (time.process_time() - self.client_cpu) / wall
        self.served = (self.server.cpu() - self.server_cpu) / wall if self.server else math.nan

    def report(self) -> dict[str, float]:
        return {"server_cpu": round(self.served, 2), "client_cpu": round(self.client, 2)}


def all_partitions(topic: str, partitions: int, offset: int | None = 0) -> list[dict[str, Any]]:
    """A subscribe payload for every partition, from ``offset`` (None: the latest)."""
    items: list[dict[str, Any]] = [{"topic": topic, "partition": p} for p in range(partitions)]
    if offset is not None:
        for item in items:
            item["offset"] = offset
    return items


async def connect_ready(url: str, **options: Any) -> tuple[LeanClient, list[str]]:
    client = await LeanClient.connect(url, **options)
    topics = await client.next_event("ready")
    return client, topics


# --- 1. ceiling K -----------------------------------------------------------------


def ceiling_kafka(
    bootstrap: str,
    topic: str,
    partitions: int,
    target: int,
    cap: float,
    server_settings: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Raw confluent-kafka consume in batches + orjson decode.

    With librdkafka's defaults (the ceiling), or with the server's consumer
    settings (``server_settings``: what one server-side consumer can fetch).
    """
    from kasocki_app.kafka import CONSUMER_DEFAULTS, CONSUMER_OVERRIDES

    config: dict[str, Any] = {**CONSUMER_DEFAULTS} if server_settings else {}
    config.update(extra or {})
    config.update(CONSUMER_OVERRIDES)
    config.update({"bootstrap.servers": bootstrap, "client.id": "kasocki-bench"})
    consumer = Consumer(config)
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        loads = orjson.loads
        count = 0
        with Busy(None) as busy:
            began = time.perf_counter()
            while count < target and time.perf_counter() - began < cap:
                for message in consumer.consume(num_messages=500, timeout=0.5):
                    if message.error() is None:
                        loads(message.value())
                        count += 1
            elapsed = time.perf_counter() - began
    finally:
        consumer.close()
    return {
        "messages": count,
        "seconds": round(elapsed, 3),
        "rate": count / elapsed,
        "capped": count < target,
        **busy.report(),
    }


# --- 2. ceiling S -----------------------------------------------------------------


async def ceiling_socketio(url: str, count: int, cap: float, server_pid: int, mode: str = "eio") -> dict[str, Any]:
    client = await LeanClient.connect(url)  # the ceiling app sends no ``ready``
    try:
        return await _receive(client, count, cap, server_pid, lambda: client.ok("emit", {"count": count, "mode": mode}))
    finally:
        await client.close()


async def _receive(
    client: LeanClient,
    target: int,
    cap: float,
    server_pid: int,
    begin: Callable[[], Awaitable[Any]],
    event: str = "message",
) -> dict[str, Any]:
    """Count ``event`` messages (lists count per element) from ``begin()`` until ``target`` or ``cap``."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    count = 0

    def on_message(_message: Any) -> None:
        nonlocal count
        count += 1
        if count >= target and not done.done():
            done.set_result(None)

    def on_messages(messages: list[Any]) -> None:
        nonlocal count
        count += len(messages)
        if count >= target and not done.done():
            done.set_result(None)

    client.on(event, on_messages if event == "messages" else on_message)
    with Busy(server_pid) as busy:
        began = time.perf_counter()
        await begin()
        await asyncio.wait([done], timeout=cap)
        elapsed = time.perf_counter() - began
    return {
        "messages": count,
        "seconds": round(elapsed, 3),
        "rate": count / elapsed,
        "capped": count < target,
        **busy.report(),
    }


# --- 3. consume acks --------------------------------------------------------------


async def consume_acks(
    url: str, topic: str, partitions: int, target: int, cap: float, in_flight: int, server_pid: int
) -> dict[str, Any]:
    client, _ = await connect_ready(url)
    try:
        await client.ok("subscribe", all_partitions(topic, partitions))
        issued = 0
        received = 0
        errors = 0
        deadline = time.perf_counter() + cap

        async def worker() -> None:
            nonlocal issued, received, errors
            while issued < target and time.perf_counter() < deadline:
                issued += 1
                err, _res = await client.call("consume", None)
                if err is None:
                    received += 1
                else:
                    errors += 1

        with Busy(server_pid) as busy:
            began = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(in_flight)))
            elapsed = time.perf_counter() - began
        return {
            "messages": received,
            "errors": errors,
            "seconds": round(elapsed, 3),
            "rate": received / elapsed,
            "capped": received < target,
            **busy.report(),
        }
    finally:
        await client.close()


# --- 4, 5. start / batch ----------------------------------------------------------


async def stream(
    url: str, topic: str, partitions: int, target: int, cap: float, server_pid: int, batch: int | None = None
) -> dict[str, Any]:
    client, _ = await connect_ready(url)
    try:
        await client.ok("subscribe", all_partitions(topic, partitions))
        options = {"batch": batch} if batch else None
        event = "messages" if batch else "message"
        return await _receive(client, target, cap, server_pid, lambda: client.ok("start", options), event)
    finally:
        await client.close()


# --- 6. filtered scan -------------------------------------------------------------


async def filtered_scan(url: str, topic: str, highs: list[int], cap: float, server_pid: int) -> dict[str, Any]:
    """Read every partition from 0 with a 1 % filter; done when each partition's last record arrives.

    When the time cap comes first, the offsets covered are estimated from the
    last delivered offset of each partition (at 1 % that is within about 100).
    """
    client, _ = await connect_ready(url)
    try:
        await client.ok("subscribe", all_partitions(topic, len(highs)))
        await client.ok("filter", {"bucket": FILTER_BUCKET})
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        covered = [0] * len(highs)  # offsets covered per partition, as far as deliveries show
        remaining = {p for p, high in enumerate(highs) if high > 0}
        delivered = 0

        def on_message(message: dict[str, Any]) -> None:
            nonlocal delivered
            delivered += 1
            meta = message["_kafka"]
            partition = meta["partition"]
            covered[partition] = max(covered[partition], meta["offset"] + 1)
            if covered[partition] >= highs[partition]:
                remaining.discard(partition)
                if not remaining and not done.done():
                    done.set_result(None)

        client.on("message", on_message)
        with Busy(server_pid) as busy:
            began = time.perf_counter()
            await client.ok("start", None)
            await asyncio.wait([done], timeout=cap)
            elapsed = time.perf_counter() - began
        scanned = sum(covered)
        return {
            "scanned": scanned,
            "delivered": delivered,
            "pass_rate": round(delivered / max(1, scanned), 4),
            "seconds": round(elapsed, 3),
            "rate": scanned / elapsed,
            "capped": bool(remaining),
            **busy.report(),
        }
    finally:
        await client.close()


# --- 7. latency -------------------------------------------------------------------


class ControlConsumer:
    """A plain consumer in a thread, no server: the latency Kafka and the producer add by themselves.

    It reads the same records as the clients from the end of every partition and,
    while recording, keeps receive - sent_at for each.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.recording = False
        self._samples: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="control-consumer", daemon=True)

    def start(self) -> ControlConsumer:
        self._thread.start()
        return self

    def _run(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": "kasocki-bench-control",
                "enable.auto.commit": False,
                "socket.nagle.disable": True,  # as the server's consumers
            }
        )
        try:
            consumer.assign([TopicPartition(self.topic, p, OFFSET_END) for p in range(self.partitions)])
            loads = orjson.loads
            while not self._stop.is_set():
                # poll() returns as soon as one record is there; consume(n, timeout) would wait for n.
                first = consumer.poll(0.1)
                if first is None:
                    continue
                for message in [first, *consumer.consume(num_messages=500, timeout=0)]:
                    if self.recording and message.error() is None:
                        latency = time.time() - loads(message.value())["sent_at"]
                        with self._lock:
                            self._samples.append(latency)
        finally:
            consumer.close()

    def take(self) -> list[float]:
        with self._lock:
            samples, self._samples = self._samples, []
        return samples

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)


async def latency(
    url: str, topic: str, partitions: int, warmup: float, duration: float, control: ControlConsumer | None = None
) -> dict[str, Any]:
    """Receive - sent_at for every message of a steady producer, after a warm-up."""
    client, _ = await connect_ready(url)
    try:
        await client.ok("subscribe", all_partitions(topic, partitions, offset=None))
        samples: list[float] = []
        recording = False
        now = time.time

        def on_message(message: dict[str, Any]) -> None:
            if recording:
                samples.append(now() - message["sent_at"])

        client.on("message", on_message)
        await client.ok("start", None)
        await asyncio.sleep(warmup)
        recording = True
        if control is not None:
            control.take()
            control.recording = True
        await asyncio.sleep(duration)
        recording = False
        result = latency_summary(samples, duration)
        if control is not None:
            control.recording = False
            result["control_p99_ms"] = percentile(control.take(), 99) * 1000
        return result
    finally:
        await client.close()


def latency_summary(samples: list[float], seconds: float) -> dict[str, Any]:
    return {
        "messages": len(samples),
        "rate": len(samples) / seconds,
        "p50_ms": percentile(samples, 50) * 1000,
        "p99_ms": percentile(samples, 99) * 1000,
        "max_ms": (max(samples) if samples else math.nan) * 1000,
    }


# --- 9. connect storm -------------------------------------------------------------


async def connect_storm(url: str, topic: str, clients: int, server_pid: int, broker_port: int) -> dict[str, Any]:
    """``clients`` at once: connect, wait for ``ready``, subscribe; time each until the subscribe ack."""
    stats = ProcessStats(server_pid, broker_port)
    connections_before = stats.broker_connections()
    opened: list[LeanClient] = []

    async def one() -> tuple[float, float, float]:
        began = time.perf_counter()
        client = await LeanClient.connect(url, timeout=30)
        opened.append(client)
        await client.next_event("ready", timeout=30)
        ready = time.perf_counter()
        await client.ok("subscribe", topic, timeout=30)
        done = time.perf_counter()
        return ready - began, done - ready, done - began

    try:
        results = await asyncio.gather(*(one() for _ in range(clients)), return_exceptions=True)
    finally:
        await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)
    ok = [r for r in results if isinstance(r, tuple)]
    failures = [repr(r)[:200] for r in results if not isinstance(r, tuple)]
    # Let the server close the consumers (and their broker connections) before the next round.
    deadline = time.monotonic() + 20
    while stats.broker_connections() > connections_before and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    totals = [r[2] for r in ok]
    return {
        "clients": clients,
        "failed": len(failures),
        "failures": failures[:3],
        "p50_ms": percentile(totals, 50) * 1000,
        "p99_ms": percentile(totals, 99) * 1000,
        "ready_p50_ms": percentile([r[0] for r in ok], 50) * 1000,
        "subscribe_p50_ms": percentile([r[1] for r in ok], 50) * 1000,
        "subscribe_p99_ms": percentile([r[1] for r in ok], 99) * 1000,
    }


# --- 10. slow client --------------------------------------------------------------


async def slow_client(url: str, topic: str, partitions: int, seconds: float, server_pid: int) -> dict[str, Any]:
    """Subscribe from offset 0, start, then stop reading; follow the server's RSS for ``seconds``.

    The baseline is taken before the client connects: what its subscription costs (its consumer's
    prefetch) is the client's, and a baseline taken after subscribing hid it (issue 17).
    """
    stats = ProcessStats(server_pid)
    baseline = stats.sample()
    client, _ = await connect_ready(url)
    try:
        await client.ok("subscribe", all_partitions(topic, partitions))
        read = 0

        def on_message(_message: Any) -> None:
            nonlocal read
            read += 1

        client.on("message", on_message)
        await client.ok("start", None)
        client.stop_reading()
        series: list[tuple[float, float]] = []
        began = time.perf_counter()
        while (elapsed := time.perf_counter() - began) < seconds:
            await asyncio.sleep(min(0.5, seconds - elapsed))
            series.append((round(time.perf_counter() - began, 2), round((stats.rss() - baseline.rss) / 2**20, 1)))
        final = stats.sample()
        half = [g for t, g in series if t <= seconds / 2]
        midway = half[-1] if half else 0.0
        growth = round((final.rss - baseline.rss) / 2**20, 1)
        return {
            "seconds": seconds,
            "baseline_rss_mb": round(baseline.rss / 2**20, 1),
            "growth_mb": growth,
            "peak_growth_mb": max(g for _t, g in series),
            # MB per second over the second half: near 0 when the server stops buffering.
            "late_growth_mb_per_s": round((growth - midway) / (seconds / 2), 2),
            "server_cpu": round((final.cpu - baseline.cpu) / seconds, 2),
            "read_before_stopping": read,
            "series_mb": series,
        }
    finally:
        with contextlib.suppress(Exception):
            await client.close(timeout=1.0)


# --- 8. fan-in --------------------------------------------------------------------


class FanIn:
    """Many clients, each subscribed to one partition of a topic, all counted together."""

    def __init__(self, url: str, topic: str, partitions: int, server_pid: int, broker_port: int) -> None:
        self.url = url
        self.topic = topic
        self.partitions = partitions
        self.stats = ProcessStats(server_pid, broker_port)
        self.clients: list[LeanClient] = []
        self.failures: list[str] = []
        self.count = 0
        self.samples: list[float] = []
        self.recording = False

    def _on_message(self, message: dict[str, Any]) -> None:
        self.count += 1
        if self.recording:
            self.samples.append(time.time() - message["sent_at"])

    async def _open(self, index: int) -> None:
        client = await LeanClient.connect(self.url, timeout=60)
        try:
            await client.next_event("ready", timeout=60)
            await client.ok("subscribe", [{"topic": self.topic, "partition": index % self.partitions}], timeout=60)
            client.on("message", self._on_message)
            await client.ok("start", None, timeout=60)
        except BaseException:
            await client.close()
            raise
        self.clients.append(client)

    async def ramp(self, clients: int, concurrency: int, deadline: float) -> dict[str, Any]:
        """Open up to ``clients`` clients, ``concurrency`` at a time, until the monotonic ``deadline``."""
        began = time.perf_counter()
        client_cpu = time.process_time()
        server_cpu = self.stats.cpu()
        next_index = 0
        gate = asyncio.Semaphore(concurrency)

        async def opener() -> None:
            nonlocal next_index
            while next_index < clients and time.monotonic() < deadline and len(self.failures) < 50:
                index = next_index
                next_index += 1
                async with gate:
                    try:
                        await asyncio.wait_for(self._open(index), max(1.0, deadline - time.monotonic() + 30))
                    except Exception as exc:
                        self.failures.append(repr(exc)[:200])

        await asyncio.gather(*(opener() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
        return {
            "clients": len(self.clients),
            "wanted": clients,
            "failed": len(self.failures),
            "failures": self.failures[:3],
            "ramp_seconds": round(elapsed, 1),
            "server_cpu": round((self.stats.cpu() - server_cpu) / elapsed, 2),
            "client_cpu": round((time.process_time() - client_cpu) / elapsed, 2),
        }

    async def window(self, seconds: float, control: ControlConsumer | None = None) -> dict[str, Any]:
        self.samples = []
        count_before = self.count
        cpu_before = self.stats.cpu()
        client_cpu = time.process_time()
        if control is not None:
            control.take()
            control.recording = True
        self.recording = True
        began = time.perf_counter()
        await asyncio.sleep(seconds)
        elapsed = time.perf_counter() - began
        self.recording = False
        delivered = self.count - count_before
        sample = self.stats.sample(connections=True)
        result = {
            "delivered_rate": delivered / elapsed,
            "p50_ms": percentile(self.samples, 50) * 1000,
            "p99_ms": percentile(self.samples, 99) * 1000,
            "max_ms": (max(self.samples) if self.samples else math.nan) * 1000,
            "server_cpu": round((sample.cpu - cpu_before) / elapsed, 2),
            "client_cpu": round((time.process_time() - client_cpu) / elapsed, 2),
            **describe(sample),
        }
        if control is not None:
            control.recording = False
            result["control_p99_ms"] = percentile(control.take(), 99) * 1000
        return result

    async def close(self, timeout: float = 30) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True), timeout)
        self.clients.clear()
