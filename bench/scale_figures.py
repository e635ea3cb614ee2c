"""Figures 12-15: idle connections, a catch-up storm, filter groups, one full-speed reader's memory.

Each runs against a fresh server (so its memory and metrics start clean) with the
live tail as configured by default. The tail's metrics are read from /metrics
(``kasocki_catchup_readers``, ``kasocki_handovers_total``,
``kasocki_filter_evaluations_total``, ``kasocki_tail_records_total``,
``kasocki_message_encodes_total``); a server without them reports n/a.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from bench.kafka_setup import LogEnds, broker_port
from bench.scale import PARTITIONS, Host, ScalePlan
from bench.servers import SCALE_BACKLOG, ProcessStats, describe, settle
from bench.swarm import Swarm, ascrape
from bench.workloads import all_partitions, connect_ready

MB = 2**20
CATCHUP_READERS = "kasocki_catchup_readers"
HANDOVERS = "kasocki_handovers_total"
CONSUMERS = "kasocki_consumers"
EVALUATIONS = "kasocki_filter_evaluations_total"
TAIL_RECORDS = "kasocki_tail_records_total"
ENCODES = "kasocki_message_encodes_total"


def _processes(plan: ScalePlan, clients: int, per_process: int) -> int:
    return min(plan.fan_processes, max(1, math.ceil(clients / per_process)))


def _delta(after: dict[str, float], before: dict[str, float], name: str) -> float:
    if name not in after:
        return math.nan
    return after[name] - before.get(name, 0.0)


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator and not math.isnan(denominator) else math.nan


async def idle(host: Host, plan: ScalePlan, topic: str) -> dict[str, Any]:
    """Server CPU with ``idle_cpu_clients`` started clients on a silent topic, then RSS per connection at N."""
    server = host.server("uvicorn-idle", backlog=SCALE_BACKLOG)
    stats = ProcessStats(server.pid, broker_port(host.bootstrap))
    processes = _processes(plan, plan.idle_clients, 1250)
    swarm = await Swarm.start(server.url, PARTITIONS, processes, host.env, host.scratch / "idle-clients.log")
    try:
        # One client first: what the process's first subscription costs (a reader, caches) is in the baseline.
        warm = await swarm.open(1, subscribe=topic)
        await asyncio.sleep(2.0)
        before = stats.sample(connections=True)
        few = await swarm.open(
            1 + plan.idle_cpu_clients, subscribe=topic, concurrency=plan.fan_concurrency, ramp=plan.fan_ramp
        )
        few["settle_seconds"], few["settled_cpu"] = await settle(stats, plan.fan_settle)
        host.log(f"  {swarm.clients - 1:,} idle clients: {few}")
        cpu, began = stats.cpu(), time.perf_counter()
        await asyncio.sleep(plan.idle_cpu_seconds)
        cpu_few = (stats.cpu() - cpu) / (time.perf_counter() - began)
        few_clients = swarm.clients - 1
        many = await swarm.open(
            1 + plan.idle_clients, subscribe=topic, concurrency=plan.fan_concurrency, ramp=plan.fan_ramp
        )
        many["settle_seconds"], many["settled_cpu"] = await settle(stats, plan.fan_settle)
        host.log(f"  {swarm.clients - 1:,} idle clients: {many}")
        after = stats.sample(connections=True)
        cpu, began = stats.cpu(), time.perf_counter()
        await asyncio.sleep(min(10.0, plan.idle_cpu_seconds))
        cpu_many = (stats.cpu() - cpu) / (time.perf_counter() - began)
        metrics = await ascrape(server.url)
        clients = swarm.clients - 1
        return {
            "clients": clients,
            "wanted": plan.idle_clients,
            "rss_per_connection_kb": (after.rss - before.rss) / max(1, clients) / 1024,
            "rss_before_mb": round(before.rss / MB, 1),
            "rss_after_mb": round(after.rss / MB, 1),
            "threads_before": before.threads,
            **describe(after),
            "cpu_clients": few_clients,
            "cpu_per_1000": cpu_few / max(1, few_clients) * 1000,
            "server_cpu": round(cpu_few, 3),
            "server_cpu_all": round(cpu_many, 3),
            "consumers": metrics.get(CONSUMERS, math.nan),
            "ramps": [warm, few, many],
        }
    finally:
        await swarm.stop()
        host.stop_server(server)


async def storm(host: Host, plan: ScalePlan, topic: str) -> dict[str, Any]:
    """``storm_clients`` at once, each from ``storm_behind`` records behind the head of every partition."""
    server = host.server("uvicorn-storm", backlog=SCALE_BACKLOG)
    stats = ProcessStats(server.pid, broker_port(host.bootstrap))
    log_ends = LogEnds(host.bootstrap, topic, PARTITIONS)
    processes = _processes(plan, plan.storm_clients, 250)
    swarm = await Swarm.start(server.url, PARTITIONS, processes, host.env, host.scratch / "storm-clients.log")
    producer = None
    try:
        heads = log_ends()
        offsets = [max(0, head - plan.storm_behind) for head in heads]
        await swarm.window(offsets)  # count every record from the requested offsets on
        producer = host.producer(topic, PARTITIONS, plan.storm_rate, 3600)
        before = await ascrape(server.url)
        began = time.monotonic()
        cpu, client_cpu = stats.cpu(), swarm.client_cpu()
        subscribe = [{"topic": topic, "partition": p, "offset": o} for p, o in enumerate(offsets)]
        opening = asyncio.create_task(
            # Half the cap to get every client in (a busy server accepts slowly), the rest to catch up.
            swarm.open(
                plan.storm_clients,
                plan.storm_cap / 2,
                plan.storm_cap / 2,
                subscribe=subscribe,
                concurrency=plan.storm_clients,
            )
        )
        peak_threads = 0
        opened_at = caught_up_at = handed_over_at = math.nan
        peaks: dict[str, float] = {}  # the highest value of each gauge in the scrapes that answered
        unanswered = 0  # scrapes that failed or timed out (the server was too busy)
        tail_known = False
        while time.monotonic() - began < plan.storm_cap:
            metrics = await ascrape(server.url)
            unanswered += not metrics
            tail_known = tail_known or CATCHUP_READERS in metrics
            for name in (CONSUMERS, CATCHUP_READERS):
                if name in metrics:
                    peaks[name] = max(peaks.get(name, 0.0), metrics[name])
            peak_threads = max(peak_threads, stats.sample().threads)
            if opening.done():
                if math.isnan(opened_at):
                    opened_at = time.monotonic() - began
                # Every client subscribed before this scrape: no catch-up reader left means all handed over.
                if math.isnan(handed_over_at) and metrics.get(CATCHUP_READERS) == 0:
                    handed_over_at = time.monotonic() - began
                if math.isnan(caught_up_at) and await swarm.caught_up(log_ends()) >= swarm.clients:
                    caught_up_at = time.monotonic() - began
                if not math.isnan(caught_up_at) and (not math.isnan(handed_over_at) or not tail_known):
                    break
            await asyncio.sleep(0.5)
        ramp = await opening
        produced = host.stop_producer(producer)
        producer = None
        until = log_ends()
        drained, waited = await swarm.wait_caught_up(until, 30.0)
        merged = await swarm.collect(until=until, expect_first=offsets)
        elapsed = time.monotonic() - began
        server_cpu, client_cpu = (stats.cpu() - cpu) / elapsed, (swarm.client_cpu() - client_cpu) / elapsed
        after = await ascrape(server.url)
        return {
            **{
                k: merged[k]
                for k in (
                    "clients",
                    "inexact",
                    "inexact_examples",
                    "lost_max",
                    "lost_total",
                    "clients_losing",
                    "clients_with_gaps",
                    "clients_with_disorder",
                    "disconnected",
                    "behind",
                )
            },
            "wanted": plan.storm_clients,
            "behind_per_partition": plan.storm_behind,
            "records_per_client": sum(until) - sum(offsets),
            "opened_seconds": round(opened_at, 1),
            "caught_up_seconds": round(caught_up_at, 1),
            "handover_seconds": round(handed_over_at, 1),
            "handovers": _delta(after, before, HANDOVERS),
            "catchup_readers_end": after.get(CATCHUP_READERS, math.nan),
            "peak_catchup_readers": peaks.get(CATCHUP_READERS, math.nan),
            "peak_consumers": peaks.get(CONSUMERS, math.nan),
            "peak_threads": peak_threads,
            "scrapes_unanswered": unanswered,
            "server_cpu": round(server_cpu, 2),
            "client_cpu": round(client_cpu, 2),
            "drain_seconds": waited,
            "drained": drained,
            "ramp": ramp,
            "producer": produced,
        }
    finally:
        if producer is not None:
            host.stop_producer(producer)
        log_ends.close()
        await swarm.stop()
        host.stop_server(server)


async def groups(host: Host, plan: ScalePlan, topic: str) -> dict[str, Any]:
    """``group_clients`` clients in ``group_filters`` filters ``{"bucket": k}`` on a topic at ``group_rate``."""
    server = host.server("uvicorn-groups", backlog=SCALE_BACKLOG)
    stats = ProcessStats(server.pid, broker_port(host.bootstrap))
    log_ends = LogEnds(host.bootstrap, topic, PARTITIONS)
    swarm = await Swarm.start(
        server.url, PARTITIONS, _processes(plan, plan.group_clients, 500), host.env, host.scratch / "groups-clients.log"
    )
    producer = None
    try:
        ramps = []
        deadline = time.monotonic() + plan.group_ramp
        for k in range(plan.group_filters):
            if time.monotonic() > deadline:
                break
            total = plan.group_clients * (k + 1) // plan.group_filters
            ramps.append(
                await swarm.open(
                    total,
                    max(1.0, deadline - time.monotonic()),
                    subscribe=topic,
                    filter={"bucket": k},
                    concurrency=plan.fan_concurrency,
                )
            )
        settled = await settle(stats, plan.fan_settle)
        host.log(
            f"  {swarm.clients:,} clients in {plan.group_filters} filters, last ramp {ramps[-1]}, settled {settled}"
        )
        # As in figure 11, the producer starts once the clients are in.
        producer = host.producer(topic, PARTITIONS, plan.group_rate, 3600)
        await asyncio.sleep(3.0)
        await swarm.window(log_ends())
        before = await ascrape(server.url)
        cpu, client_cpu, began = stats.cpu(), swarm.client_cpu(), time.perf_counter()
        await asyncio.sleep(plan.group_window)
        sample = stats.sample(connections=True)
        after = await ascrape(server.url)
        elapsed = time.perf_counter() - began
        merged = await swarm.collect()
        records = _delta(after, before, TAIL_RECORDS)
        return {
            **{
                k: merged[k]
                for k in ("clients", "p50_ms", "p99_ms", "max_ms", "samples", "disconnected", "clients_with_disorder")
            },
            "wanted": plan.group_clients,
            "filters": plan.group_filters,
            "producer_rate": plan.group_rate,
            "delivered_rate": merged["samples"] / elapsed,
            "tail_records": records,
            "evaluations_per_record": _ratio(_delta(after, before, EVALUATIONS), records),
            "encodes_per_record": _ratio(_delta(after, before, ENCODES), records),
            "server_cpu": round((sample.cpu - cpu) / elapsed, 3),
            "client_cpu": round((swarm.client_cpu() - client_cpu) / elapsed, 2),
            **describe(sample),
            "consumers": after.get(CONSUMERS, math.nan),
        }
    finally:
        if producer is not None:
            host.stop_producer(producer)
        log_ends.close()
        await swarm.stop()
        host.stop_server(server)


async def full_reader(host: Host, topic: str, records: int, cap: float = 60.0) -> dict[str, Any]:
    """A fresh server; one client reads ``topic`` from offset 0 to its end with start(): peak RSS growth."""
    server = host.server("uvicorn-reader")
    stats = ProcessStats(server.pid)
    try:
        client, _ = await connect_ready(server.url)
        try:
            await asyncio.sleep(1.0)
            baseline = stats.rss()
            peak = baseline
            loop = asyncio.get_running_loop()
            done = loop.create_future()
            count = 0

            def on_message(_message: Any) -> None:
                nonlocal count
                count += 1
                if count >= records and not done.done():
                    done.set_result(None)

            client.on("message", on_message)
            began = time.perf_counter()
            await client.ok("subscribe", all_partitions(topic, PARTITIONS))
            await client.ok("start", None)
            while not done.done() and time.perf_counter() - began < cap:
                peak = max(peak, stats.rss())
                await asyncio.wait([done], timeout=0.01)
            elapsed = time.perf_counter() - began
            peak = max(peak, stats.rss())
            return {
                "messages": count,
                "seconds": round(elapsed, 2),
                "rate": count / elapsed,
                "capped": count < records,
                "baseline_rss_mb": round(baseline / MB, 1),
                "peak_growth_mb": round((peak - baseline) / MB, 1),
                "end_growth_mb": round((stats.rss() - baseline) / MB, 1),
            }
        finally:
            await client.close(timeout=1.0)
    finally:
        host.stop_server(server)
