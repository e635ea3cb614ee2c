"""Figures 11-16 in the run: their topics, their order, and their entries in the report.

They come after figures 1-10, heaviest first (the fan-in at scale, then the same
over SSE, figure 16), each against a fresh server with the live tail at its default;
``--only core`` leaves them out, ``--only scale`` runs only them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from typing import Any, Protocol

from bench import report, scale, scale_figures
from bench.kafka_setup import Topics, produce_dataset
from bench.scale import LEVEL_KEYS, PARTITIONS, Host, ScalePlan

# Runs a coroutine on a fresh event loop (``bench.run.arun``).
Arun = Callable[[Coroutine[Any, Any, dict[str, Any]]], dict[str, Any]]
FAN_KEYS = (*LEVEL_KEYS, "scale_fan_in_max")
KEYS = (
    *FAN_KEYS,
    "scale_fan_in_tail_off",
    "sse_fan_in",
    "idle_memory",
    "idle_cpu",
    "catchup_storm",
    "filter_groups",
    "full_reader",
)
# The topics of the scale figures (all with 4 partitions) and the figures that need each.
TOPICS = {
    "scale": {*FAN_KEYS, "scale_fan_in_tail_off", "sse_fan_in"},
    "idle": {"idle_memory", "idle_cpu"},
    "storm": {"catchup_storm"},
    "groups": {"filter_groups"},
    "backlog": {"full_reader"},
}


class Run(Host, Protocol):
    """What figures 11-16 use of the run (``bench.run.Bench``) besides ``Host``."""

    figures: dict[str, Any]

    def wanted(self, key: str) -> bool: ...
    def measuring(self, key: str, *also: str) -> AbstractContextManager[None]: ...
    def rounds(self, make: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]: ...


def create_topics(topics: Topics, selected: Callable[[str], bool]) -> dict[str, str]:
    """The topics of the selected scale figures, by label (created now, so that the servers may allow them)."""
    return {label: topics.create(label, PARTITIONS) for label, keys in TOPICS.items() if any(map(selected, keys))}


def _partial(fig: dict[str, Any], clients: int, wanted: int) -> dict[str, Any]:
    fig["clients"] = clients
    if clients < wanted:
        fig["partial"] = f"only {clients:,} of {wanted:,} clients connected"
    return fig


def run(bench: Run, plan: ScalePlan, topics: dict[str, str], arun: Arun) -> None:
    """Every wanted figure of 11-16, each recorded in ``bench.figures`` (a failure as that figure's error)."""
    fan = [key for key in FAN_KEYS if bench.wanted(key)]
    if fan:
        with bench.measuring(*fan):
            searching = "scale_fan_in_max" in fan
            # The search starts from the levels' results, so it measures them all.
            chosen = [(key, n) for key, n in zip(LEVEL_KEYS, plan.fan_levels, strict=True) if searching or key in fan]
            search = plan.fan_search_seconds if searching else 0.0
            levels = [n for _key, n in chosen]
            result = arun(scale.run_levels(bench, plan, topics["scale"], None, levels, search))
            for key, n in chosen:
                first = key == LEVEL_KEYS[0]
                title = f"fan-in, one topic, {n:,} clients (p99)" if first else f"  same, {n:,} clients (p99)"
                bench.figures[key] = scale.level_figure(
                    key, result["measured"][n], title, idle_server=result["idle_server"]
                )
            if result["search"] is not None:
                bench.figures["scale_fan_in_max"] = _max_figure(result)

    if bench.wanted("scale_fan_in_tail_off"):
        with bench.measuring("scale_fan_in_tail_off"):
            n = plan.tail_off_clients
            # Every client creates a consumer under this server: open gently, as figure 8 does.
            result = arun(scale.run_levels(bench, plan, topics["scale"], {"KASOCKI_LIVE_TAIL": "False"}, [n], 0.0, 20))
            title = f"  same, {n:,} clients, KASOCKI_LIVE_TAIL=False (p99)"
            bench.figures["scale_fan_in_tail_off"] = scale.level_figure(
                "scale_fan_in_tail_off", result["measured"][n], title, live_tail=False
            )

    if bench.wanted("sse_fan_in"):
        with bench.measuring("sse_fan_in"):
            n = plan.sse_clients
            result = arun(scale.run_levels(bench, plan, topics["scale"], None, [n], 0.0, kind="sse"))
            title = f"  same as 11a over SSE, {n:,} clients (p99)"
            bench.figures["sse_fan_in"] = scale.level_figure(
                "sse_fan_in",
                result["measured"][n],
                title,
                idle_server=result["idle_server"],
                client_processes=result["client_processes"],
                transport="SSE: GET /v2/stream/<topic>",
            )

    idle = [key for key in ("idle_memory", "idle_cpu") if bench.wanted(key)]
    if idle:
        with bench.measuring(*idle):
            r = arun(scale_figures.idle(bench, plan, topics["idle"]))
            bench.figures["idle_memory"] = _partial(
                report.figure("idle_memory", [r], "rss_per_connection_kb"), r["clients"], plan.idle_clients
            )
            bench.figures["idle_cpu"] = _partial(
                report.figure("idle_cpu", [r], "cpu_per_1000"), r["cpu_clients"], plan.idle_cpu_clients
            )

    if bench.wanted("catchup_storm"):
        with bench.measuring("catchup_storm"):
            records = (plan.storm_behind + 1000) * PARTITIONS
            bench.log(f"  producing {records:,} records to {topics['storm']}")
            produce_dataset(bench.bootstrap, topics["storm"], PARTITIONS, records)
            r = arun(scale_figures.storm(bench, plan, topics["storm"]))
            fig = report.figure("catchup_storm", [r], "handover_seconds")
            if math.isnan(fig["value"]) and "catchup_readers_end" in r and math.isnan(r["catchup_readers_end"]):
                fig["note"] = "the server publishes no kasocki_catchup_readers: no handover time"
            bench.figures["catchup_storm"] = _partial(fig, r["clients"], plan.storm_clients)

    if bench.wanted("filter_groups"):
        with bench.measuring("filter_groups"):
            r = arun(scale_figures.groups(bench, plan, topics["groups"]))
            fig = report.figure("filter_groups", [r], "p99_ms", filter='{"bucket": k}, k < filters')
            bench.figures["filter_groups"] = _partial(fig, r["clients"], plan.group_clients)

    if bench.wanted("full_reader"):
        with bench.measuring("full_reader"):
            bench.log(f"  producing {plan.backlog_records:,} records to {topics['backlog']}")
            dataset = produce_dataset(bench.bootstrap, topics["backlog"], PARTITIONS, plan.backlog_records)
            rounds = bench.rounds(
                lambda: arun(scale_figures.full_reader(bench, topics["backlog"], plan.backlog_records))
            )
            bench.figures["full_reader"] = report.figure(
                "full_reader",
                rounds,
                "peak_growth_mb",
                records=plan.backlog_records,
                mean_value_bytes=dataset["mean_value_bytes"],
            )


def _max_figure(result: dict[str, Any]) -> dict[str, Any]:
    found = result["search"]
    value = found["largest_holding"]
    number, title, unit = report.TITLES["scale_fan_in_max"]
    levels = {
        str(n): {k: r[k] for k in ("clients", "p99_ms", "lost_total")} for n, r in sorted(result["measured"].items())
    }
    return {
        "figure": number,
        "title": title,
        "unit": unit,
        "value": float(value) if value is not None else math.nan,
        "median": {"largest_holding": value if value is not None else math.nan},
        **found,
        "levels": levels,
    }
