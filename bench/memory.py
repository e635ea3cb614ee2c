"""Figure 17: ten clients catching up from offset 0 at once, per server and transport: what they cost and what stays.

For each server (uvicorn, daphne, ``manage.py runserver``), transport (socket.io over a
websocket, socket.io over long-polling, HTTP streams) and mode, ten clients subscribe
to every partition of a topic larger than ten times the backlog cap, from offset 0:

* ``idle``: subscribed, nothing else (not for HTTP streams, which start as they open);
* ``reading``: started, reading everything as fast as they can;
* ``stalled``: started, then reading nothing (the TCP window closes; a long-polling
  client stops polling).

Each combination first runs with one client (the warm-up), then, after the server
settled, with ten while the server's RSS is sampled: the baseline is taken before they
connect, the peak while they run, and the RSS once more ``--settle`` seconds after they left. Meanwhile a
probe client reads a steady topic at its head, so the latency of the other clients shows.
Targets (issue 17): peak growth <= clients x (cap + 4 MB); RSS back within 20 % of the
baseline; the probe's p99 close to its own before the clients came.

    .venv/bin/python -m bench.memory                     # every server, transport and mode
    .venv/bin/python -m bench.memory --servers uvicorn --transports websocket --modes stalled
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench.client import LeanClient
from bench.kafka_setup import Topics, produce_dataset, start_or_reuse_broker
from bench.polling_client import PollingClient
from bench.servers import (
    PROJECT_APP,
    ProcessStats,
    ServerProcess,
    daphne_command,
    free_port,
    migrate,
    project_env,
    uvicorn_command,
)
from bench.sse_client import SSEClient
from bench.workloads import all_partitions, percentile

ROOT = Path(__file__).resolve().parent.parent
SERVERS = ("uvicorn", "daphne", "runserver")
TRANSPORTS = ("websocket", "polling", "sse")
MODES = ("idle", "reading", "stalled")
CAP_MB = 8.0  # KASOCKI_MAX_BACKLOG_BYTES's default
ALLOWANCE_MB = 4.0  # per client, beside its backlog cap (issue 17)
CLIENTS = 10
PARTITIONS = 4
PROBE_RATE = 20.0  # records per second on the probe's topic
SAMPLE_SECONDS = 0.2


def server_command(kind: str, port: int) -> list[str]:
    if kind == "uvicorn":
        return uvicorn_command(PROJECT_APP, port)
    if kind == "daphne":
        return daphne_command(PROJECT_APP, port)
    return ["manage.py", "runserver", "--noreload", "-v", "0", f"127.0.0.1:{port}"]


class Client:
    """One of the ten: opened in a mode, then closed."""

    def __init__(self, close: Callable[[], Awaitable[None]], count: Callable[[], int]) -> None:
        self.close = close
        self.count = count


async def open_client(transport: str, mode: str, url: str, topic: str, session: aiohttp.ClientSession) -> Client:
    subscription = all_partitions(topic, PARTITIONS, offset=0)
    if transport == "websocket":
        ws = await LeanClient.connect(url, timeout=30)
        await ws.next_event("ready", timeout=30)
        received = 0

        def on_message(_message: Any) -> None:
            nonlocal received
            received += 1

        ws.on("message", on_message)
        await ws.ok("subscribe", subscription, timeout=30)
        if mode != "idle":
            await ws.ok("start", None, timeout=30)
        if mode == "stalled":
            ws.stop_reading()
        return Client(lambda: ws.close(timeout=1.0), lambda: received)
    if transport == "polling":
        poll = await PollingClient.connect(session, url, timeout=30)
        err, _ = await poll.call("subscribe", subscription)
        if err is not None:
            raise RuntimeError(f"subscribe failed: {err}")
        if mode != "idle":
            await poll.call("start", None)
        if mode == "stalled":
            await poll.pause()
        return Client(poll.close, lambda: poll.messages)
    stream = await SSEClient.connect(url, subscription, timeout=30)
    stream.on_message(lambda _message, _id: None)
    if mode == "stalled":
        stream.stop_reading()
    return Client(lambda: stream.close(timeout=1.0), lambda: stream.messages)


class Probe:
    """A client at the head of a steady topic: delivery latencies with the time they were seen."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, float]] = []
        self.client: LeanClient | None = None

    async def start(self, url: str, topic: str) -> None:
        self.client = await LeanClient.connect(url, timeout=30)
        await self.client.next_event("ready", timeout=30)
        self.client.on("message", self._on_message)
        await self.client.ok("subscribe", all_partitions(topic, 1, offset=None), timeout=30)
        await self.client.ok("start", None, timeout=30)

    def _on_message(self, message: dict[str, Any]) -> None:
        now = time.time()
        self.samples.append((time.monotonic(), now - message["sent_at"]))

    def percentiles_ms(self, since: float, until: float) -> tuple[float, float, int]:
        """p50, p99 of the latencies seen in [since, until), and how many."""
        window = [latency for at, latency in self.samples if since <= at < until]
        return round(percentile(window, 50) * 1000, 1), round(percentile(window, 99) * 1000, 1), len(window)

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close(timeout=1.0)


async def one_round(
    transport: str, mode: str, url: str, topic: str, clients: int, hold: float, stats: ProcessStats
) -> dict[str, Any]:
    """``clients`` at once for ``hold`` seconds; the peak RSS meanwhile and what they received."""
    async with aiohttp.ClientSession() as session:
        opened = await asyncio.gather(
            *(open_client(transport, mode, url, topic, session) for _ in range(clients)), return_exceptions=True
        )
        good = [client for client in opened if isinstance(client, Client)]
        failures = [f"{type(e).__name__}: {e}"[:200] for e in opened if isinstance(e, BaseException)]
        began = time.monotonic()
        series = [(0.0, stats.rss())]
        while (elapsed := time.monotonic() - began) < hold:
            await asyncio.sleep(SAMPLE_SECONDS)
            series.append((elapsed, stats.rss()))
        received = sum(client.count() for client in good)
        await asyncio.gather(*(client.close() for client in good), return_exceptions=True)
    return {"peak": max(rss for _at, rss in series), "series": series, "received": received, "failures": failures}


async def combination(
    server: ServerProcess,
    transport: str,
    mode: str,
    topic: str,
    probe: Probe,
    clients: int,
    hold: float,
    settle: float,
) -> dict[str, Any]:
    stats = ProcessStats(server.pid)
    # The warm-up: one client the same way, so that code paths, buffers and a consumer were used once.
    await one_round(transport, mode, server.url, topic, 1, min(hold, 5.0), stats)
    await asyncio.sleep(settle)
    quiet_since = time.monotonic() - settle / 2
    baseline = stats.rss()
    began = time.monotonic()
    result = await one_round(transport, mode, server.url, topic, clients, hold, stats)
    ended = time.monotonic()
    await asyncio.sleep(settle)
    after = stats.rss()
    mb = 2**20
    bound = clients * (CAP_MB + ALLOWANCE_MB)
    growth = (result["peak"] - baseline) / mb
    _p50_before, p99_before, _ = probe.percentiles_ms(quiet_since, began)
    p50_during, p99_during, probed = probe.percentiles_ms(began, ended)
    return {
        "server": server.name,
        "transport": transport,
        "mode": mode,
        "clients": clients - len(result["failures"]),
        "baseline_mb": round(baseline / mb, 1),
        "peak_growth_mb": round(growth, 1),
        "bound_mb": bound,
        "after_mb": round(after / mb, 1),
        "left_pct": round(100 * (after - baseline) / baseline, 1),
        "messages_received": result["received"],
        "probe_p99_before_ms": p99_before,
        "probe_p50_during_ms": p50_during,
        "probe_p99_during_ms": p99_during,
        "probe_messages": probed,
        "failures": result["failures"][:3],
        # RSS growth over the baseline, the highest of each second the clients were there
        "growth_by_second_mb": [
            round((max(rss for at, rss in result["series"] if second <= at < second + 1) - baseline) / mb, 1)
            for second in range(int(hold))
        ],
        "peak_met": growth <= bound,
        "release_met": after <= 1.2 * baseline,
    }


def start_server(kind: str, env: dict[str, str], scratch: Path) -> ServerProcess:
    port = free_port()
    return ServerProcess(kind, server_command(kind, port), port, env, scratch / f"{kind}.log", "/healthz").start()


def start_producer(bootstrap: str, topic: str, seconds: float) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "bench.producer", "--bootstrap", bootstrap, "--topic", topic,
            "--partitions", "1", "--rate", str(PROBE_RATE), "--duration", str(seconds)]  # fmt: skip
    return subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def run_servers(
    bootstrap: str,
    servers: list[str],
    transports: list[str],
    modes: list[str],
    clients: int,
    hold: float,
    settle: float,
    scratch: Path,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    topics = Topics(bootstrap)
    try:
        topic = topics.create("memory", PARTITIONS)
        records = int(clients * CAP_MB * 1.25 * 1024)  # ~1 KB each: more than ten times the cap
        produce_dataset(bootstrap, topic, PARTITIONS, records)
        probe_topic = topics.create("memory-probe", 1)
        env = project_env(bootstrap, [topic, probe_topic], f"sqlite:///{scratch / 'memory.sqlite3'}")
        env["KASOCKI_LOG_LEVEL"] = "WARNING"
        migrate(env, scratch / "migrate.log")
        producer = start_producer(bootstrap, probe_topic, 24 * 3600)
        results: list[dict[str, Any]] = []
        try:
            for kind in servers:
                server = start_server(kind, env, scratch)
                probe = Probe()
                try:
                    await probe.start(server.url, probe_topic)
                    for transport in transports:
                        for mode in modes:
                            if transport == "sse" and mode == "idle":
                                continue  # an HTTP stream is started as it opens
                            row = await combination(server, transport, mode, topic, probe, clients, hold, settle)
                            log(summary(row))
                            results.append(row)
                finally:
                    await probe.close()
                    server.stop()
        finally:
            producer.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                producer.wait(10)
        return results
    finally:
        topics.delete_all()


def worst(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The worst of every combination, as figure 17's numbers."""
    return {
        "combinations": len(rows),
        "worst_peak_growth_mb": max(row["peak_growth_mb"] for row in rows),
        "worst_peak_over_bound": max(row["peak_growth_mb"] / row["bound_mb"] for row in rows),
        "worst_left_pct": max(row["left_pct"] for row in rows),
        "worst_probe_p99_ms": max(row["probe_p99_during_ms"] for row in rows),
        "worst_probe_p99_before_ms": max(row["probe_p99_before_ms"] for row in rows),
        "missed": sum(not (row["peak_met"] and row["release_met"]) for row in rows),
    }


def summary(row: dict[str, Any]) -> str:
    peak = "met" if row["peak_met"] else "MISSED"
    release = "met" if row["release_met"] else "MISSED"
    return (
        f"{row['server']:9} {row['transport']:9} {row['mode']:8} clients {row['clients']:2}: "
        f"baseline {row['baseline_mb']:6.1f} MB, "
        f"peak +{row['peak_growth_mb']:6.1f} MB (<= {row['bound_mb']:.0f}: {peak}), "
        f"10 s after leaving {row['left_pct']:+5.1f} % (<= 20 %: {release}), "
        f"probe p99 {row['probe_p99_before_ms']} -> {row['probe_p99_during_ms']} ms "
        f"(p50 {row['probe_p50_during_ms']}), "
        f"{row['messages_received']} msgs"
        + (f"; failed: {row['failures']}" if row["failures"] else "")
        + f"\n    growth by second (MB): {row['growth_by_second_mb']}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--transports", default=",".join(TRANSPORTS))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--hold", type=float, default=15.0, help="seconds the clients stay")
    parser.add_argument("--settle", type=float, default=10.0, help="seconds after leaving before RSS is read")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args(argv)
    bootstrap, stop = start_or_reuse_broker()
    try:
        with tempfile.TemporaryDirectory(prefix="kasocki-memory-") as scratch:
            rows = asyncio.run(
                run_servers(
                    bootstrap,
                    args.servers.split(","),
                    args.transports.split(","),
                    args.modes.split(","),
                    args.clients,
                    args.hold,
                    args.settle,
                    Path(scratch),
                    lambda line: print(line, flush=True),
                )
            )
    finally:
        if stop is not None:
            stop()
    if args.out:
        Path(args.out).write_text(json.dumps({"figure": "17", "rows": rows}, indent=1) + "\n")
    return 0 if all(row["peak_met"] and row["release_met"] for row in rows) else 1


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
