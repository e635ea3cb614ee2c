"""The scrape-time gauges, read from a service without a server or a broker."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from kasocki_app import cluster, collector
from kasocki_app.exceptions import KafkaError


def service_of(*positions: dict[tuple[str, int], int]) -> Any:
    """A service whose connections are at ``positions`` (None: not subscribed)."""
    connections = {
        f"sid-{i}": SimpleNamespace(
            assignments=None if p is None else [],
            positions=p or {},
            feed=SimpleNamespace(reader=None),
            transport="sse" if i % 2 else "socket.io",
        )
        for i, p in enumerate(positions)
    }
    return SimpleNamespace(connections=connections, tail=SimpleNamespace(counts=lambda: (0, 0, 0)))


def gauges(service: Any) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    registry = CollectorRegistry()
    registry.register(collector.ServiceCollector(service))
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def test_lag_is_summed_per_topic_from_the_log_ends(monkeypatch):
    ends = {("a", 0): 10, ("a", 1): 5, ("b", 0): 7}
    monkeypatch.setattr(cluster.cluster, "log_ends", lambda tps: {tp: ends[tp] for tp in tps if tp in ends})
    samples = gauges(service_of({("a", 0): 4, ("a", 1): 5}, {("a", 0): 9, ("b", 0): 8, ("gone", 0): 3}, None))
    assert samples[("kasocki_connections", ())] == 3
    assert samples[("kasocki_connections_by_transport", (("transport", "socket.io"),))] == 2
    assert samples[("kasocki_connections_by_transport", (("transport", "sse"),))] == 1
    assert samples[("kasocki_subscriptions", ())] == 2
    # a: (10 - 4) + (5 - 5) + (10 - 9); b: a position past the end counts as no lag.
    assert samples[("kasocki_consumer_lag", (("topic", "a"),))] == 7
    assert samples[("kasocki_consumer_lag", (("topic", "b"),))] == 0
    # A partition whose end is unknown (its topic was just deleted) adds nothing.
    assert ("kasocki_consumer_lag", (("topic", "gone"),)) not in samples


def test_lag_is_left_out_when_kafka_is_unreachable(monkeypatch, caplog):
    def unreachable(partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        raise KafkaError("unreachable")

    monkeypatch.setattr(cluster.cluster, "log_ends", unreachable)
    samples = gauges(service_of({("a", 0): 4}))
    assert samples[("kasocki_connections", ())] == 1
    assert not [key for key in samples if key[0] == "kasocki_consumer_lag"]
    assert "could not read log ends" in caplog.text


def test_no_positions_need_no_log_ends(monkeypatch):
    monkeypatch.setattr(cluster.cluster, "log_ends", pytest.fail)
    assert gauges(service_of(None))[("kasocki_subscriptions", ())] == 0


def test_register_twice_keeps_the_first_collector(monkeypatch):
    registry = CollectorRegistry(auto_describe=True)  # as the default registry: refuses duplicate names
    monkeypatch.setattr(collector, "REGISTRY", registry)
    collector.register(service_of())
    collector.register(service_of({("a", 0): 1}))
    assert registry.get_sample_value("kasocki_connections") == 0
