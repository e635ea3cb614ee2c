"""The gauges of /metrics that are read from the live service at scrape time.

The counters live in ``metrics.py``, which imports nothing of the app; this
module is the part that knows the service and the cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import REGISTRY, GaugeMetricFamily
from prometheus_client.registry import Collector

from . import cluster, kafka
from .service import Connection, Service
from .tailing import TailReader

logger = logging.getLogger(__name__)

TRANSPORTS = ("socket.io", "sse")


class ServiceCollector(Collector):
    """Gauges read from the live Service at scrape time (runs in the scrape's thread)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def collect(self) -> Iterator[GaugeMetricFamily]:
        connections = list(self.service.connections.values())
        yield GaugeMetricFamily(
            "kasocki_connections", "Open connections (socket.io and HTTP streams).", value=len(connections)
        )
        by_transport = GaugeMetricFamily(
            "kasocki_connections_by_transport", "Open connections by transport.", labels=["transport"]
        )
        for transport in TRANSPORTS:
            by_transport.add_metric([transport], sum(1 for c in connections if c.transport == transport))
        yield by_transport
        yield GaugeMetricFamily(
            "kasocki_subscriptions",
            "Connections with a subscription.",
            value=sum(1 for c in connections if c.assignments is not None),
        )
        yield GaugeMetricFamily("kasocki_consumers", "Open Kafka consumers.", value=kafka.ConsumerCounts.open)
        tails, members, _behind = self.service.tail.counts()
        yield GaugeMetricFamily("kasocki_tails", "Partitions read by the live tail (one shared reader).", value=tails)
        yield GaugeMetricFamily("kasocki_tail_members", "Connections' partitions on the live tail.", value=members)
        yield GaugeMetricFamily(
            "kasocki_catchup_readers",
            "Connections catching up to the live tail on a consumer of their own.",
            value=sum(1 for c in connections if isinstance(c.feed.reader, TailReader) and c.feed.reader.catching_up),
        )
        lag = GaugeMetricFamily(
            "kasocki_consumer_lag",
            "Messages between clients' positions and the log end, summed per topic.",
            labels=["topic"],
        )
        for topic, value in self._lag(connections).items():
            lag.add_metric([topic], value)
        yield lag

    @staticmethod
    def _lag(connections: list[Connection]) -> dict[str, int]:
        positions = [(tp, offset) for c in connections for tp, offset in list(c.positions.items())]
        if not positions:
            return {}
        try:
            ends = cluster.cluster.log_ends(sorted({tp for tp, _ in positions}))
        except Exception:  # Kafka unreachable: report no lag rather than fail the scrape
            logger.warning("metrics: could not read log ends", exc_info=True)
            return {}
        totals: dict[str, int] = {}
        for (topic, partition), offset in positions:
            end = ends.get((topic, partition))
            if end is not None:
                totals[topic] = totals.get(topic, 0) + max(0, end - offset)
        return totals


def register(service: Service) -> None:
    """Expose ``service``'s gauges in the default registry (once per process)."""
    try:
        REGISTRY.register(ServiceCollector(service))
    except ValueError:  # already registered by an earlier server in this process
        logger.debug("metrics collector already registered")
