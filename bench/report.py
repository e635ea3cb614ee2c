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
]
FAN_IN_CLIENTS = 1000  # what the fan-in targets are about
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
        if math.isnan(value) or math.isnan(limit) or limit <= 0:
            entry.update(value=value, limit=limit, status="n/a", ratio=math.nan)
        else:
            passed = value >= limit if target.op == ">=" else value <= limit
            entry.update(value=value, limit=limit, status="pass" if passed else "miss", ratio=value / limit)
            partial = figures[target.key].get("partial")
            if target.key == "fan_in" and figures[target.key].get("clients", 0) < FAN_IN_CLIENTS:
                partial = (
                    partial or f"measured with {figures[target.key].get('clients')} clients, not {FAN_IN_CLIENTS:,}"
                )
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
    return cpu


def table(figures: dict[str, Any], targets: list[dict[str, Any]]) -> str:
    lines = [f"{'#':>3}  {'figure':<50} {'median':>12} {'unit':<6} detail"]
    for key, number, title, unit in FIGURES:
        if key not in figures:
            continue
        fig = figures[key]
        digits = 1 if unit in ("ms", "MB") else 0
        lines.append(
            f"{number:>3}  {title:<50} {_num(fig.get('value'), digits):>12} {unit:<6} {detail(key, fig, figures)}"
        )
    lines.append("")
    lines.append(f"     {'target':<50} {'value':>12} {'limit':>12}  result")
    for t in targets:
        digits = 1 if t["op"] == "<=" else 0
        ratio = "" if math.isnan(t["ratio"]) else f" ({t['ratio']:.2f} x limit)"
        lines.append(
            f"     {t['target']:<50} {_num(t['value'], digits):>12} {_num(t['limit'], digits):>12}  "
            f"{t['status'].upper()}{ratio}"
        )
    return "\n".join(lines)
