"""Medians over rounds, the targets, and the printed table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# (key, number, title, unit of the headline value)
FIGURES: list[tuple[str, str, str, str]] = [
    ("ceiling_kafka", "1", "ceiling K: confluent-kafka consume + orjson decode", "msg/s"),
    ("kafka_server_settings", "1b", "  same, with the server's consumer settings", "msg/s"),
    ("ceiling_socketio", "2", "ceiling S: python-socketio send, prebuilt messages", "msg/s"),
    ("ceiling_socketio_emit", "2b", "  same, through AsyncServer.emit()", "msg/s"),
    ("consume_1", "3a", "consume acks, 1 in flight", "msg/s"),
    ("consume_8", "3b", "consume acks, 8 in flight", "msg/s"),
    ("consume_1_daphne", "3c", "consume acks, 1 in flight, daphne", "msg/s"),
    ("start_uvicorn", "4a", "start/message, uvicorn", "msg/s"),
    ("start_daphne", "4b", "start/message, daphne", "msg/s"),
    ("batch_500", "5", 'start({"batch": 500})', "msg/s"),
    ("filtered_scan", "6", "filtered scan, 1 % pass (scanned)", "msg/s"),
    ("latency_1000", "7", "latency at 1,000 msg/s, p99", "ms"),
    ("fan_in", "8", "fan-in: many clients, one process (p99)", "ms"),
    ("connect_storm", "9", "connect + ready + subscribe, 100 at once (p99)", "ms"),
    ("slow_client", "10", "slow client: server RSS growth", "MB"),
    ("scale_fan_in_1", "11a", "fan-in, one topic, level 1 (p99)", "ms"),
    ("scale_fan_in_2", "11b", "  same, level 2 (p99)", "ms"),
    ("scale_fan_in_3", "11c", "  same, level 3 (p99)", "ms"),
    ("scale_fan_in_max", "11d", "  largest N holding p99 <= 1 s, no loss", "conns"),
    ("scale_fan_in_tail_off", "11e", "  same as 11a, KASOCKI_LIVE_TAIL=False (p99)", "ms"),
    # Printed beside figure 11, which it compares with, though numbered after the scale figures.
    ("sse_fan_in", "16", "  same as 11a over SSE (HTTP streams) (p99)", "ms"),
    ("idle_memory", "12a", "idle: server RSS per started connection", "KB"),
    ("idle_cpu", "12b", "idle: server CPU per 1,000 started clients", "core"),
    ("catchup_storm", "13", "catch-up storm: until the last handover", "s"),
    ("filter_groups", "14", "filter groups: 20 filters (p99)", "ms"),
    ("full_reader", "15", "full-speed reader: server peak RSS growth", "MB"),
    ("catchup_memory", "17", "10 clients catching up, every server/transport/mode: peak growth / bound", "x"),
]
# Figure groups for --only: figures 1-10 are "core", the heavy scale figures from 11 on "scale".
SCALE_FROM = 11
GROUPS = {
    "core": [n for _key, n, _title, _unit in FIGURES if int(n.rstrip("abcdefgh")) < SCALE_FROM],
    "scale": [n for _key, n, _title, _unit in FIGURES if int(n.rstrip("abcdefgh")) >= SCALE_FROM],
}
FAN_IN_CLIENTS = 1000  # what the fan-in targets are about
BACKLOG_CAP_MB = 8.0  # KASOCKI_MAX_BACKLOG_BYTES's default, in MiB
TITLES = {key: (number, title, unit) for key, number, title, unit in FIGURES}


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric field present in all rounds (NaN values left out)."""
    if not rounds:
        return {}
    keys = [k for k, v in rounds[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    medians: dict[str, Any] = {}
    for key in keys:
        values = [r[key] for r in rounds if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
        medians[key] = statistics.median(values) if values else math.nan
    return medians


def figure(key: str, rounds: list[dict[str, Any]], value_key: str, **extra: Any) -> dict[str, Any]:
    number, title, unit = TITLES[key]
    medians = median_of(rounds)
    return {
        "figure": number,
        "title": title,
        "value": medians.get(value_key, math.nan),
        "unit": unit,
        "median": medians,
        "rounds": rounds,
        **extra,
    }


@dataclass
class Target:
    key: str
    label: str
    metric: str
    op: str  # ">=" or "<="
    limit: float | Callable[[dict[str, Any]], float]
    clients: int = 0  # the figure is partial when measured with fewer clients than this


def _scale(key: str, clients: int, what: str) -> list[Target]:
    """The fan-in-at-scale targets that hold whatever the number of clients, plus no loss."""
    return [
        Target(key, f"{clients:,} clients: {what}threads <= 64", "threads", "<=", 64, clients),
        Target(key, f"{clients:,} clients: {what}broker connections <= 8", "broker_connections", "<=", 8, clients),
        Target(key, f"{clients:,} clients: {what}messages lost per client = 0", "lost_max", "<=", 0, clients),
    ]


TARGETS = [
    Target("start_uvicorn", "start/message (uvicorn) >= 0.8 x ceiling S", "rate", ">=",
           lambda f: 0.8 * f["ceiling_socketio"]["value"]),
    Target("start_uvicorn", "start/message (uvicorn) >= 12,000 msg/s", "rate", ">=", 12_000),
    Target("start_daphne", "start/message (daphne) >= 0.8 x ceiling S", "rate", ">=",
           lambda f: 0.8 * f["ceiling_socketio"]["value"]),
    Target("start_daphne", "start/message (daphne) >= 12,000 msg/s", "rate", ">=", 12_000),
    Target("consume_1", "consume acks, 1 in flight >= 2,400 msg/s", "rate", ">=", 2_400),
    Target("consume_8", "consume acks, 8 in flight >= 2,400 msg/s", "rate", ">=", 2_400),
    Target("consume_1", "consume acks, 1 in flight (uvicorn) >= 5,000 msg/s", "rate", ">=", 5_000),
    Target("consume_1_daphne", "consume acks, 1 in flight (daphne) >= 5,000 msg/s", "rate", ">=", 5_000),
    Target("batch_500", "batch >= 100,000 msg/s", "rate", ">=", 100_000),
    Target("batch_500", "batch >= 0.5 x ceiling K", "rate", ">=", lambda f: 0.5 * f["ceiling_kafka"]["value"]),
    Target("filtered_scan", "filtered scan >= 150,000 msg/s", "rate", ">=", 150_000),
    Target("latency_1000", "latency p99 <= 50 ms", "p99_ms", "<=", 50),
    Target("fan_in", "1,000 clients: p99 <= 500 ms", "p99_ms", "<=", 500),
    Target("fan_in", "1,000 clients: server RSS <= 1.5 GB", "rss_mb", "<=", 1536),
    Target("slow_client", "slow client: RSS growth <= 50 MB", "growth_mb", "<=", 50),
    Target("slow_client", "slow client: RSS growth <= backlog cap + 10 MB", "growth_mb", "<=", BACKLOG_CAP_MB + 10),
    *_scale("scale_fan_in_1", 1000, ""),
    *_scale("scale_fan_in_2", 3000, ""),
    Target("scale_fan_in_3", "10,000 clients: p99 <= 250 ms", "p99_ms", "<=", 250, 10_000),
    Target("scale_fan_in_3", "10,000 clients: server RSS <= 1.5 GB", "rss_mb", "<=", 1536, 10_000),
    *_scale("scale_fan_in_3", 10_000, ""),
    *_scale("sse_fan_in", 1000, "SSE, "),
    Target("sse_fan_in", "1,000 clients: SSE, wrong offsets or ids = 0", "inexact", "<=", 0, 1000),
    Target("idle_memory", "10,000 idle connections: <= 60 KB each", "rss_per_connection_kb", "<=", 60, 10_000),
    Target("idle_cpu", "1,000 idle clients: <= 0.05 core", "cpu_per_1000", "<=", 0.05, 1000),
    Target("catchup_storm", "storm: clients with wrong offsets = 0", "inexact", "<=", 0, 1000),
    Target("catchup_storm", "storm: every client reached the log end", "behind", "<=", 0, 1000),
    Target("catchup_storm", "storm: all handed over (catch-up readers left = 0)", "catchup_readers_end", "<=", 0, 1000),
    Target("filter_groups", "filter groups: p99 <= 250 ms", "p99_ms", "<=", 250, 2000),
    Target("filter_groups", "filter groups: evaluations per record <= 20", "evaluations_per_record", "<=", 20, 2000),
    Target("full_reader", "full-speed reader: peak RSS growth <= 40 MB", "peak_growth_mb", "<=", 40),
    Target("catchup_memory", "10 catching up: peak growth <= 10 x (cap + 4 MB), everywhere", "worst_peak_over_bound",
           "<=", 1.0),
    Target("catchup_memory", "10 catching up: RSS back within 20 % after they left, everywhere", "worst_left_pct",
           "<=", 20),
]  # fmt: skip


def evaluate(figures: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target with its value, limit, pass/miss and value/limit ratio; never raises."""
    results = []
    for target in TARGETS:
        entry: dict[str, Any] = {"target": target.label, "figure": target.key, "op": target.op}
        try:
            value = float(figures[target.key]["median"][target.metric])
            limit = float(target.limit(figures) if callable(target.limit) else target.limit)
        except (KeyError, TypeError, ValueError):
            value = limit = math.nan
        if math.isnan(value) or math.isnan(limit) or limit < 0 or (limit == 0 and target.op == ">="):
            entry.update(value=value, limit=limit, status="n/a", ratio=math.nan)
        else:
            passed = value >= limit if target.op == ">=" else value <= limit
            ratio = value / limit if limit else math.nan
            entry.update(value=value, limit=limit, status="pass" if passed else "miss", ratio=ratio)
            partial = figures[target.key].get("partial")
            clients = FAN_IN_CLIENTS if target.key == "fan_in" else target.clients
            measured = figures[target.key].get("clients", 0)
            if clients and measured < clients:
                partial = partial or f"measured with {measured:,} clients, not {clients:,}"
            if partial:
                entry["status"] += " (partial)"
                entry["note"] = partial
        results.append(entry)
    return results


def _num(value: Any, digits: int = 0) -> str:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "-"
    return f"{value:,.{digits}f}"


def _cpu(m: dict[str, Any]) -> str:
    server = m.get("server_cpu")
    client = m.get("client_cpu")
    parts = []
    if isinstance(server, (int, float)) and not math.isnan(server):
        parts.append(f"server CPU {server:.0%}")
    if isinstance(client, (int, float)) and not math.isnan(client):
        parts.append(f"client CPU {client:.0%}")
    return ", ".join(parts)


def detail(key: str, fig: dict[str, Any], figures: dict[str, Any]) -> str:
    m = fig.get("median", {})
    if "error" in fig:
        return " ".join(f"ERROR: {fig['error']}".split())[:140]
    if "skipped" in fig:
        return f"skipped: {fig['skipped']}"
    cpu = _cpu(m)

    def ratio(ceiling: str) -> str:
        base = figures.get(ceiling, {}).get("value")
        if isinstance(base, (int, float)) and base and not math.isnan(base) and not math.isnan(fig["value"]):
            return f"{fig['value'] / base:.2f} x {'K' if ceiling == 'ceiling_kafka' else 'S'}; "
        return ""

    if key in ("start_uvicorn", "start_daphne", "consume_1", "consume_8", "consume_1_daphne"):
        return ratio("ceiling_socketio") + cpu
    if key == "batch_500":
        return ratio("ceiling_kafka") + cpu
    if key == "filtered_scan":
        return f"{_num(m.get('delivered'))} delivered of {_num(m.get('scanned'))}; {cpu}"
    if key == "latency_1000":
        return (
            f"p50 {_num(m.get('p50_ms'), 1)} ms, max {_num(m.get('max_ms'), 1)} ms, {_num(m.get('rate'))} msg/s seen; "
            f"Kafka alone p99 {_num(m.get('control_p99_ms'), 1)} ms"
        )
    if key == "fan_in":
        return (
            f"{_num(fig.get('clients'))} clients (opened in {_num(fig.get('ramp', {}).get('ramp_seconds'))} s), "
            f"{_num(m.get('delivered_rate'))} msg/s delivered "
            f"(expected {_num(fig.get('expected_rate'))}), p50 {_num(m.get('p50_ms'), 1)} ms, "
            f"Kafka alone p99 {_num(m.get('control_p99_ms'), 1)} ms, {_cpu(m)}, "
            f"RSS {_num(m.get('rss_mb'))} MB, {_num(m.get('threads'))} threads, "
            f"{_num(m.get('broker_connections'))} broker conns"
        )
    if key == "connect_storm":
        return (
            f"p50 {_num(m.get('p50_ms'), 1)} ms; subscribe ack p50 {_num(m.get('subscribe_p50_ms'), 1)} ms; "
            f"failed {_num(m.get('failed'))}"
        )
    if key == "slow_client":
        return (
            f"after {_num(m.get('seconds'))} s, from a {_num(m.get('baseline_rss_mb'))} MB baseline; "
            f"still growing {_num(m.get('late_growth_mb_per_s'), 1)} MB/s at the end"
        )
    if key == "sse_fan_in" and (io := figures.get("scale_fan_in_1", {}).get("median")):  # beside socket.io's
        return scale_detail(key, fig, m) + (
            f"; socket.io (11a): {_num(io.get('clients'))} clients, p50 {_num(io.get('p50_ms'), 1)} ms, "
            f"p99 {_num(io.get('p99_ms'), 1)} ms, RSS {_num(io.get('rss_mb'))} MB, {_num(io.get('threads'))} threads"
        )
    return scale_detail(key, fig, m) or cpu


def _na(value: Any, digits: int = 0) -> str:
    """A figure, or n/a where the server does not publish what it is computed from."""
    text = _num(value, digits)
    return "n/a" if text == "-" else text


def scale_detail(key: str, fig: dict[str, Any], m: dict[str, Any]) -> str:
    if (key.startswith("scale_fan_in") and key != "scale_fan_in_max") or key == "sse_fan_in":
        return (
            f"{_num(m.get('clients'))} of {_num(fig.get('wanted_clients'))} clients, "
            f"p50 {_num(m.get('p50_ms'), 1)} ms, "
            f"received {_num(m.get('received_min'))}-{_num(m.get('received_max'))} of {_num(m.get('records'))} each, "
            f"lost/client max {_num(m.get('lost_max'))} (total {_num(m.get('lost_total'))}), "
            f"{_num(m.get('inexact'))} with wrong offsets{' or ids' if key == 'sse_fan_in' else ''}, "
            f"RSS {_num(m.get('rss_mb'))} MB, {_num(m.get('threads'))} threads, "
            f"{_num(m.get('broker_connections'))} broker conns, consumers {_na(m.get('consumers'))}, {_cpu(m)}"
        )
    if key == "scale_fan_in_max":
        return (
            f"holds at {_num(fig.get('largest_holding'))}, fails at {_num(fig.get('smallest_failing'))}; "
            f"searched {fig.get('steps')}, cap {_num(fig.get('cap'))} (open files)"
        )
    if key == "idle_memory":
        return (
            f"{_num(m.get('clients'))} clients, "
            f"RSS {_num(m.get('rss_before_mb'))} -> {_num(m.get('rss_after_mb'))} MB, "
            f"{_num(m.get('threads'))} threads, {_num(m.get('broker_connections'))} broker conns, "
            f"server CPU {_num(m.get('server_cpu_all'), 2)} core at that count"
        )
    if key == "idle_cpu":
        return f"{_num(m.get('cpu_clients'))} clients: server CPU {_num(m.get('server_cpu'), 3)} core"
    if key == "catchup_storm":
        return (
            f"{_num(m.get('clients'))} clients x {_num(m.get('records_per_client'))} records, "
            f"{_num(m.get('inexact'))} with wrong offsets, {_num(m.get('behind'))} short of the end "
            f"({_num(m.get('disconnected'))} disconnected); "
            f"started {_num(m.get('opened_seconds'), 1)} s, all at head {_num(m.get('caught_up_seconds'), 1)} s; "
            f"handovers {_na(m.get('handovers'))}, peak catch-up readers {_na(m.get('peak_catchup_readers'))}, "
            f"peak consumers {_na(m.get('peak_consumers'))}, peak threads {_num(m.get('peak_threads'))}, {_cpu(m)}"
        )
    if key == "filter_groups":
        return (
            f"{_num(m.get('clients'))} clients, {_num(m.get('filters'))} filters, "
            f"{_num(m.get('delivered_rate'))} msg/s delivered; evaluations/record "
            f"{_na(m.get('evaluations_per_record'), 1)}, encodes/record {_na(m.get('encodes_per_record'), 2)}; "
            f"{_num(m.get('threads'))} threads, {_cpu(m)}"
        )
    if key == "full_reader":
        return (
            f"{_num(m.get('messages'))} records in {_num(m.get('seconds'), 1)} s from a "
            f"{_num(m.get('baseline_rss_mb'))} MB baseline; {_num(m.get('end_growth_mb'), 1)} MB at the end"
        )
    return ""


def table(figures: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    lines = [f"{'#':>3}  {'figure':<50} {'median':>12} {'unit':<6} detail"]
    for key, number, title, unit in FIGURES:
        if key not in figures:
            continue
        fig = figures[key]
        digits = {"ms": 1, "MB": 1, "KB": 1, "s": 1, "core": 3}.get(unit, 0)
        title = fig.get("title", title)
        lines.append(
            f"{number:>3}  {title:<50} {_num(fig.get('value'), digits):>12} {unit:<6} {detail(key, fig, figures)}"
        )
    lines.append("")
    lines.append(f"     {'target':<50} {'value':>12} {'limit':>12}  result")
    for t in targets:
        if t["figure"] not in figures:  # not run (--only): its target says nothing
            continue
        digits = 3 if 0 < abs(t["limit"]) < 1 else 1 if t["op"] == "<=" else 0
        ratio = "" if math.isnan(t["ratio"]) else f" ({t['ratio']:.2f} x limit)"
        lines.append(
            f"     {t['target']:<50} {_num(t['value'], digits):>12} {_num(t['limit'], digits):>12}  "
            f"{t['status'].upper()}{ratio}"
        )
    return "\n".join(lines)
