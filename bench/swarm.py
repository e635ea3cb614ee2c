"""Many clients over several processes (``bench/swarm_worker.py``), driven as one, and the server's /metrics.

    swarm = await Swarm.start(url, partitions=4, processes=8, env=env, log=path)
    await swarm.open(10_000, subscribe=topic)              # spread over the processes
    await swarm.open(1_000, subscribe=topic, kind="sse")   # or HTTP streams (SSE)
    await swarm.window(from_offsets)                       # count from here, record latencies
    merged = await swarm.collect(until=end_offsets)        # lost per client, exactness, p50/p99

Worker ``i`` connects from 127.0.0.(2 + i): each source address has its own
ephemeral port range, and the figures never run short of ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench.swarm_worker import BUCKETS_PER_SECOND

ROOT = Path(__file__).resolve().parent.parent


class WorkerError(RuntimeError):
    """A client process failed a command or went away."""


class Swarm:
    """Client processes, each with its own loopback source address, commanded together."""

    def __init__(self, processes: list[asyncio.subprocess.Process]) -> None:
        self.processes = processes
        self.counts = [0] * len(processes)
        self.cpu = [0.0] * len(processes)

    @classmethod
    async def start(cls, url: str, partitions: int, processes: int, env: dict[str, str], log: Path) -> Swarm:
        started = []
        with open(log, "ab") as out:
            for index in range(processes):
                argv = [
                    sys.executable,
                    "-m",
                    "bench.swarm_worker",
                    "--url",
                    url,
                    "--partitions",
                    str(partitions),
                    "--source",
                    f"127.0.0.{2 + index}",
                ]
                started.append(
                    await asyncio.create_subprocess_exec(
                        *argv,
                        cwd=ROOT,
                        env=env,
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=out,
                        limit=2**26,
                        start_new_session=True,
                    )
                )
        swarm = cls(started)
        await swarm.each({"op": "ping"})
        return swarm

    @property
    def clients(self) -> int:
        return sum(self.counts)

    async def _call(self, index: int, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        proc = self.processes[index]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(orjson.dumps(command) + b"\n")
        await proc.stdin.drain()
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        if not line:
            raise WorkerError(f"client process {index} exited (code {proc.returncode})")
        reply: dict[str, Any] = orjson.loads(line)
        if "error" in reply:
            raise WorkerError(f"client process {index}: {reply['error']}")
        self.counts[index] = reply["clients"]
        self.cpu[index] = reply["cpu"]
        return reply

    async def each(self, command: dict[str, Any], timeout: float = 60) -> list[dict[str, Any]]:
        """The same command to every process; their replies in order."""
        return list(await asyncio.gather(*(self._call(i, command, timeout) for i in range(len(self.processes)))))

    def client_cpu(self) -> float:
        """CPU seconds used by all client processes so far (as of their last replies)."""
        return sum(self.cpu)

    async def open(self, total: int, ramp: float = 300, timeout: float = 60, **command: Any) -> dict[str, Any]:
        """Open clients until ``total`` are open, shared evenly; ``command``: subscribe, filter, start, ...

        No new attempt starts after ``ramp`` seconds; each attempt is bounded by ``timeout``.
        """
        shares = [0] * len(self.processes)
        wanted = max(0, total - self.clients)
        for _ in range(wanted):  # to the process with the fewest clients, so the load stays even
            index = min(range(len(shares)), key=lambda i: self.counts[i] + shares[i])
            shares[index] += 1
        began = time.perf_counter()
        replies = await asyncio.gather(
            *(
                self._call(
                    i, {"op": "open", "count": n, "ramp": ramp, "timeout": timeout, **command}, ramp + timeout + 60
                )
                for i, n in enumerate(shares)
                if n
            )
        )
        failures = [f for r in replies for f in r["failures"]]
        return {
            "clients": self.clients,
            "wanted": total,
            "opened": sum(r["opened"] for r in replies),
            "failed": sum(r["failed"] for r in replies),
            "failures": failures[:3],
            "seconds": round(time.perf_counter() - began, 1),
        }

    async def close_to(self, total: int) -> None:
        """Close clients until ``total`` remain, evenly."""
        keep = [0] * len(self.processes)
        for _ in range(min(total, self.clients)):
            index = min(range(len(keep)), key=lambda i: keep[i] if keep[i] < self.counts[i] else math.inf)
            keep[index] += 1
        await asyncio.gather(*(self._call(i, {"op": "close", "keep": k}, 60) for i, k in enumerate(keep)))

    async def window(self, start: list[int]) -> None:
        """Count records at or after ``start`` (per partition) from now on, and record latencies."""
        await self.each({"op": "window", "from": start})

    async def caught_up(self, until: list[int]) -> int:
        return sum(r["caught_up"] for r in await self.each({"op": "caught_up", "until": until}))

    async def wait_caught_up(self, until: list[int], timeout: float) -> tuple[int, float]:
        """(clients that received everything before ``until``, seconds waited), polling up to ``timeout``."""
        began = time.monotonic()
        while True:
            done = await self.caught_up(until)
            waited = time.monotonic() - began
            if done >= self.clients or waited >= timeout:
                return done, round(waited, 1)
            await asyncio.sleep(0.5)

    async def collect(self, until: list[int] | None = None, expect_first: list[int] | None = None) -> dict[str, Any]:
        """Merged counts: lost per client and exactness (with ``until``), gaps, and latency percentiles."""
        replies = await self.each({"op": "collect", "until": until, "expect_first": expect_first}, timeout=120)
        latency: Counter[int] = Counter()
        for reply in replies:
            latency.update(dict(reply["latency"]))
        counted = [c for r in replies for c in r["counted"]]
        merged: dict[str, Any] = {
            "clients": len(counted),
            "received_min": min(counted, default=0),
            "received_max": max(counted, default=0),
            "disconnected": sum(r["disconnected"] for r in replies),
            "clients_with_gaps": sum(r["clients_with_gaps"] for r in replies),
            "clients_with_disorder": sum(r["clients_with_disorder"] for r in replies),
            "clients_with_wrong_ids": sum(r["clients_with_wrong_ids"] for r in replies),  # SSE clients only
            "samples": sum(latency.values()),
            "p50_ms": hist_percentile(latency, 50),
            "p99_ms": hist_percentile(latency, 99),
            "max_ms": hist_percentile(latency, 100),
        }
        if until is not None:
            lost = [n for r in replies for n in r["lost"]]
            merged.update(
                lost_max=max(lost, default=0),
                lost_total=sum(lost),
                clients_losing=sum(1 for n in lost if n > 0),
                inexact=sum(r["inexact"] for r in replies),
                behind=sum(r["behind"] for r in replies),
                inexact_examples=[e for r in replies for e in r["inexact_examples"]][:3],
            )
        return merged

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.each({"op": "quit"}, timeout=60)
        for proc in self.processes:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 10)
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


def hist_percentile(hist: Counter[int], q: float) -> float:
    """Nearest-rank percentile in ms of a histogram of 0.1 ms buckets; NaN when empty."""
    total = sum(hist.values())
    if not total:
        return math.nan
    rank = max(1, math.ceil(q / 100 * total))
    seen = 0
    for bucket in sorted(hist):
        seen += hist[bucket]
        if seen >= rank:
            return bucket * 1000 / BUCKETS_PER_SECOND
    return math.nan


def scrape(url: str, timeout: float = 30) -> dict[str, float]:
    """The server's /metrics, every sample summed over its labels (``_created`` samples left out); {} on failure."""
    host, _, port = url.removeprefix("http://").partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        connection.request("GET", "/metrics")
        response = connection.getresponse()
        if response.status != 200:
            return {}
        text = response.read().decode()
    except OSError:
        return {}
    finally:
        connection.close()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if not sample.name.endswith("_created"):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


async def ascrape(url: str) -> dict[str, float]:
    """``scrape`` in a thread, so that a slow server does not hold the client loop."""
    return await asyncio.to_thread(scrape, url)
