"""Prometheus metrics of one server process (served at /metrics).

Counters are updated once per batch on the hot path, never per message where it
can be avoided; gauges (connections, consumers, lag) are computed at scrape time.
Each process serves its own figures: scrape every worker.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

DELIVERED = Counter("kasocki_messages_delivered", "Messages delivered to clients (message, messages, consume).")
FILTERED = Counter("kasocki_messages_filtered", "Messages read from Kafka that a client's filter dropped.")
SKIPPED = Counter("kasocki_messages_skipped", "Records skipped because they could not be delivered.", ["reason"])
BYTES_SENT = Counter("kasocki_bytes_sent", "Bytes of socket.io packets sent to clients.")
ERRORS = Counter("kasocki_errors", "Errors reported to clients, by error name.", ["name"])
CONSUMERS_ABANDONED = Counter("kasocki_consumers_abandoned", "Kafka consumers whose close did not finish in time.")
EMIT_BATCH = Histogram(
    "kasocki_emit_batch_size",
    "Messages taken from Kafka per stream-loop step.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)


class ServiceCollector(Collector):
    """Gauges read from the live Service at scrape time (runs in the scrape's thread)."""

    # kafka.py counts abandoned consumers here, so it is imported lazily (no import cycle).

    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from . import kafka

        connections = list(self.service.connections.values())
        yield GaugeMetricFamily("kasocki_connections", "Open socket.io connections.", value=len(connections))
        yield GaugeMetricFamily(
            "kasocki_subscriptions",
            "Connections with a subscription.",
            value=sum(1 for c in connections if c.assignments is not None),
        )
        yield GaugeMetricFamily("kasocki_consumers", "Open Kafka consumers.", value=kafka.ConsumerCounts.open)
        lag = GaugeMetricFamily(
            "kasocki_consumer_lag",
            "Messages between clients' positions and the log end, summed per topic.",
            labels=["topic"],
        )
        for topic, value in self._lag(connections).items():
            lag.add_metric([topic], value)
        yield lag

    @staticmethod
    def _lag(connections: list[Any]) -> dict[str, int]:
        from . import kafka

        positions = [(tp, offset) for c in connections for tp, offset in list(c.positions.items())]
        if not positions:
            return {}
        try:
            ends = kafka.cluster.log_ends(sorted({tp for tp, _ in positions}))
        except Exception:  # Kafka unreachable: report no lag rather than fail the scrape
            logger.warning("metrics: could not read log ends", exc_info=True)
            return {}
        totals: dict[str, int] = {}
        for (topic, partition), offset in positions:
            end = ends.get((topic, partition))
            if end is not None:
                totals[topic] = totals.get(topic, 0) + max(0, end - offset)
        return totals


def register(service: Any) -> None:
    """Expose ``service``'s gauges in the default registry (once per process)."""
    try:
        REGISTRY.register(ServiceCollector(service))
    except ValueError:  # already registered by an earlier server in this process
        logger.debug("metrics collector already registered")
