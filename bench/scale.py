"""Figure 11: fan-in at scale. N clients in one server process read one 4-partition topic.

Every client subscribes to the whole topic at the latest offsets and starts; a
producer writes ``sent_at``-stamped records at 2 msg/s in total; each client must
receive every record. One server is ramped through the levels (1,000, 3,000,
10,000 clients) with the producer stopped; at each, the producer starts and,
after a warm-up, a window counts from the log end of that moment; then the
producer stops, the clients drain, and each client's count is compared with the
log (lost = expected - received). Then a coarse search for
the largest N that holds p99 <= 1 s with no loss: doubling from the top level up
to what the open-file limit allows, then one bisect step, within a time bound.
The same at the first level with ``KASOCKI_LIVE_TAIL=False`` is printed for
comparison (every client its own consumer: bounded by ``KASOCKI_MAX_CONSUMERS``),
and figure 16 measures one level the same way with SSE clients (HTTP streams,
``GET /v2/stream/<topic>``) instead of socket.io ones.
"""

from __future__ import annotations

import asyncio
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bench import report
from bench.kafka_setup import LogEnds, broker_port
from bench.servers import SCALE_BACKLOG, ProcessStats, ServerProcess, describe, raise_open_files, settle
from bench.swarm import Swarm, ascrape

PARTITIONS = 4
HOLD_P99_MS = 1000.0  # what the search holds


@dataclass(frozen=True)
class ScalePlan:
    """Counts and time bounds of figures 11-16."""

    fan_levels: tuple[int, int, int]
    fan_rate: float  # msg/s in total over the topic
    fan_processes: int  # client processes
    fan_concurrency: int  # connection attempts at a time, per client process
    fan_warmup: float
    fan_window: float
    fan_drain: float  # seconds the clients get to receive the last records after the producer stops
    fan_settle: float  # at most this long for the server's CPU to settle after a ramp
    fan_search_seconds: float  # time bound of the search above the top level
    fan_ramp: float  # seconds, at most, to open one level's clients
    tail_off_clients: int
    sse_clients: int  # figure 16
    idle_clients: int
    idle_cpu_clients: int
    idle_cpu_seconds: float
    storm_clients: int
    # Records behind the head per partition: 1,250 x 4 = the "5,000 records behind the head" per client.
    # (5,000 per partition would be 20 million deliveries for 1,000 clients: ten minutes on two cores.)
    storm_behind: int
    storm_rate: float
    storm_cap: float
    group_clients: int
    group_filters: int
    group_rate: float
    group_window: float
    group_ramp: float  # seconds, at most, to open the clients of all filters
    backlog_records: int


FULL_SCALE = ScalePlan(
    fan_levels=(1000, 3000, 10_000), fan_rate=2.0, fan_processes=8, fan_concurrency=25,
    fan_warmup=3.0, fan_window=15.0, fan_drain=10.0, fan_settle=60.0, fan_search_seconds=360.0, fan_ramp=300.0,
    tail_off_clients=1000, sse_clients=1000,
    idle_clients=10_000, idle_cpu_clients=1000, idle_cpu_seconds=20.0,
    storm_clients=1000, storm_behind=1250, storm_rate=20.0, storm_cap=300.0,
    group_clients=2000, group_filters=20, group_rate=500.0, group_window=15.0, group_ramp=180.0,
    backlog_records=60_000,
)  # fmt: skip
QUICK_SCALE = ScalePlan(
    fan_levels=(50, 100, 200), fan_rate=2.0, fan_processes=2, fan_concurrency=20,
    fan_warmup=1.0, fan_window=4.0, fan_drain=5.0, fan_settle=10.0, fan_search_seconds=45.0, fan_ramp=60.0,
    tail_off_clients=200, sse_clients=100,
    idle_clients=200, idle_cpu_clients=100, idle_cpu_seconds=5.0,
    storm_clients=100, storm_behind=250, storm_rate=20.0, storm_cap=60.0,
    group_clients=200, group_filters=20, group_rate=200.0, group_window=4.0, group_ramp=30.0,
    backlog_records=20_000,
)  # fmt: skip
LEVEL_KEYS = ("scale_fan_in_1", "scale_fan_in_2", "scale_fan_in_3")
# Clients per client process. Figure 11's swarm is sized for its largest level (10,000 clients: 8 processes),
# so its 1,000-client level is spread over 8 processes: figure 16 spreads its clients as thinly, so that
# the two differ by the protocol, not by how far the clients' event loops lag.
PER_PROCESS = 1250
SSE_PER_PROCESS = 125


class Host(Protocol):
    """What the scale figures use of the run (``bench.run.Bench``)."""

    bootstrap: str
    env: dict[str, str]
    scratch: Path

    def log(self, text: str) -> None: ...
    def remaining(self) -> float: ...
    def server(
        self,
        name: str,
        kind: str = ...,
        app: str = ...,
        extra_env: dict[str, str] | None = ...,
        backlog: int | None = ...,
    ) -> ServerProcess: ...
    def stop_server(self, server: ServerProcess | None) -> None: ...
    def producer(self, topic: str, partitions: int, rate: float, duration: float) -> subprocess.Popen[bytes]: ...
    def stop_producer(self, proc: subprocess.Popen[bytes]) -> dict[str, Any]: ...


class FanIn:
    """One server, its clients and a producer, measured level after level."""

    def __init__(
        self, host: Host, plan: ScalePlan, topic: str, server: ServerProcess, swarm: Swarm, kind: str = "socketio"
    ) -> None:
        self.host, self.plan, self.topic, self.server, self.swarm = host, plan, topic, server, swarm
        self.kind = kind  # of the clients: "socketio" or "sse"
        self.ends = LogEnds(host.bootstrap, topic, PARTITIONS)
        self.stats = ProcessStats(server.pid, broker_port(host.bootstrap))
        self.producer: subprocess.Popen[bytes] | None = None
        self.open_rate = math.nan  # clients per second in the last ramp, to budget the search

    def start_producer(self) -> None:
        if self.producer is None:
            self.producer = self.host.producer(self.topic, PARTITIONS, self.plan.fan_rate, 3600)

    def stop_producer(self) -> dict[str, Any]:
        proc, self.producer = self.producer, None
        return self.host.stop_producer(proc) if proc is not None else {}

    async def level(self, clients: int, concurrency: int | None = None) -> dict[str, Any]:
        """Ramp (or shrink) to ``clients``, then measure one window.

        The producer writes during the warm-up and the window only: a server saturated by the
        stream accepts new connections so slowly that the larger levels were never reached.
        """
        plan = self.plan
        ramp: dict[str, Any]
        if clients < self.swarm.clients:
            await self.swarm.close_to(clients)
            ramp = {"clients": self.swarm.clients, "wanted": clients, "closed_to": clients}
        else:
            before = self.swarm.clients
            ramp = await self.swarm.open(
                clients,
                ramp=plan.fan_ramp,
                subscribe=self.topic,
                concurrency=concurrency or plan.fan_concurrency,
                kind=self.kind,
            )
            if ramp["opened"]:
                self.open_rate = (self.swarm.clients - before) / max(ramp["seconds"], 0.1)
        ramp["settle_seconds"], ramp["settled_cpu"] = await settle(self.stats, plan.fan_settle)
        self.host.log(f"  {clients:,} wanted: {ramp}")
        self.start_producer()
        await asyncio.sleep(plan.fan_warmup)
        start = self.ends()
        await self.swarm.window(start)
        cpu, client_cpu, began = self.stats.cpu(), self.swarm.client_cpu(), time.perf_counter()
        await asyncio.sleep(plan.fan_window)
        sample = self.stats.sample(connections=True)
        elapsed = time.perf_counter() - began
        metrics = await ascrape(self.server.url)
        produced = self.stop_producer()
        until = self.ends()
        caught_up, waited = await self.swarm.wait_caught_up(until, plan.fan_drain)
        merged = await self.swarm.collect(until=until)
        client_seconds = time.perf_counter() - began
        result = {
            **merged,
            "wanted": clients,
            "records": sum(until) - sum(start),
            "caught_up": caught_up,
            "drain_seconds": waited,
            "server_cpu": round((sample.cpu - cpu) / elapsed, 3),
            "client_cpu": round((self.swarm.client_cpu() - client_cpu) / client_seconds, 2),
            **describe(sample),
            "consumers": metrics.get("kasocki_consumers", math.nan),
            "ramp": ramp,
            "producer": produced,
        }
        self.host.log(f"  {clients:,} clients: {_brief(result)}")
        return result


def holds(result: dict[str, Any]) -> bool:
    """Every wanted client connected, p99 within HOLD_P99_MS, nothing lost."""
    return bool(
        result["clients"] >= result["wanted"]
        and result["p99_ms"] <= HOLD_P99_MS
        and result.get("lost_total", 1) == 0
        and result["samples"] > 0
    )


def _brief(result: dict[str, Any]) -> str:
    keys = (
        "clients",
        "p50_ms",
        "p99_ms",
        "lost_max",
        "clients_losing",
        "rss_mb",
        "threads",
        "broker_connections",
        "server_cpu",
        "client_cpu",
        "consumers",
    )
    return ", ".join(f"{k} {round(result[k], 1) if isinstance(result[k], float) else result[k]}" for k in keys)


def level_figure(key: str, result: dict[str, Any], title: str, **extra: Any) -> dict[str, Any]:
    fig = report.figure(key, [result], "p99_ms", clients=result["clients"], wanted_clients=result["wanted"], **extra)
    fig["title"] = title
    if result["clients"] < result["wanted"]:
        fig["partial"] = f"only {result['clients']:,} of {result['wanted']:,} clients connected ({result['ramp']})"
    return fig


async def search(fan: FanIn, measured: dict[int, dict[str, Any]], cap: int, deadline: float) -> dict[str, Any]:
    """Doubling above the largest level while it holds, then one bisect step; bounded by ``deadline``."""
    host, plan = fan.host, fan.plan
    steps: list[int] = []

    def bracket() -> tuple[int | None, int | None]:
        good = max((n for n, r in measured.items() if holds(r)), default=None)
        # A level whose p99 was over the bound fails at the clients it had connected (the server may
        # not have taken them all); one that merely could not connect them fails at the wanted count.
        failing = [
            r["clients"] if r["p99_ms"] > HOLD_P99_MS and r["clients"] else n
            for n, r in measured.items()
            if not holds(r)
        ]
        bad = min((n for n in failing if good is None or n > good), default=None)
        return good, bad

    def affordable(n: int) -> bool:
        ramp = max(0, n - fan.swarm.clients) / fan.open_rate if fan.open_rate > 0 else 60.0
        cost = ramp + plan.fan_settle / 2 + plan.fan_warmup + plan.fan_window + plan.fan_drain + 15
        return time.monotonic() + cost < deadline and host.remaining() > cost

    good, bad = bracket()
    while bad is None and good is not None and good < cap:
        n = min(2 * good, cap)
        if not affordable(n):
            break
        steps.append(n)
        measured[n] = await fan.level(n)
        good, bad = bracket()
    if bad is not None:
        low = good or 0
        n = _round((low + bad) // 2)
        if low < n < bad and affordable(n):
            steps.append(n)
            measured[n] = await fan.level(n)
            good, bad = bracket()
    return {"largest_holding": good, "smallest_failing": bad, "steps": steps, "cap": cap}


def _round(n: int) -> int:
    step = 100 if n >= 1000 else 10
    return max(1, n // step * step)


async def run_levels(
    host: Host,
    plan: ScalePlan,
    topic: str,
    extra_env: dict[str, str] | None,
    levels: list[int],
    search_seconds: float,
    concurrency: int | None = None,
    kind: str = "socketio",
) -> dict[str, Any]:
    """A fresh server and swarm of ``kind`` clients through ``levels``, then (if ``search_seconds``) the search."""
    name = "uvicorn-scale" if extra_env is None else "uvicorn-scale-tail-off"
    name += "-sse" if kind == "sse" else ""
    server = host.server(name, extra_env=extra_env, backlog=SCALE_BACKLOG)
    swarm: Swarm | None = None
    fan: FanIn | None = None
    try:
        idle = describe(ProcessStats(server.pid, broker_port(host.bootstrap)).sample(connections=True))
        per_process = SSE_PER_PROCESS if kind == "sse" else PER_PROCESS
        processes = min(plan.fan_processes, max(1, math.ceil(max(levels) / per_process)))
        swarm = await Swarm.start(server.url, PARTITIONS, processes, host.env, host.scratch / f"{name}-clients.log")
        fan = FanIn(host, plan, topic, server, swarm, kind)
        measured = {n: await fan.level(n, concurrency) for n in levels}
        found = None
        if search_seconds > 0:
            cap = raise_open_files() - 1000  # the server holds a descriptor per client
            found = await search(fan, measured, cap, time.monotonic() + search_seconds)
        return {"idle_server": idle, "measured": measured, "search": found, "client_processes": processes}
    finally:
        if fan is not None:
            fan.stop_producer()
            fan.ends.close()
        if swarm is not None:
            await swarm.stop()
        host.stop_server(server)
