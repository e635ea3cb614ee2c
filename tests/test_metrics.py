"""/metrics in Prometheus format, fed by real traffic through the live server."""

from __future__ import annotations

import ast
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kasocki_app import metrics

pytestmark = pytest.mark.django_db(transaction=True)


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, metric: str, **labels: str) -> float:
    return samples.get((metric, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_traffic(kafka, make_topic, allow, connect, asgi_server):
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"i": 0}, b"not json", {"i": 2}, {"i": 3}, {"i": 4}])
    before = scrape(asgi_server.url)
    client = await connect()
    await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
    await client.ok("filter", {"i": [0, 3]})
    assert (await client.ok("consume", None))["i"] == 0
    assert (await client.ok("consume", None))["i"] == 3
    await client.call("subscribe", topic)  # AlreadySubscribedError
    after = scrape(asgi_server.url)

    def grew(metric: str, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    assert grew("kasocki_messages_delivered_total") == 2
    assert grew("kasocki_messages_filtered_total") == 1
    assert grew("kasocki_messages_skipped_total", reason="not_json") == 1
    assert grew("kasocki_errors_total", name="AlreadySubscribedError") == 1
    assert grew("kasocki_bytes_sent_total") > 0
    assert value(after, "kasocki_connections") >= 1
    assert value(after, "kasocki_subscriptions") >= 1
    assert value(after, "kasocki_consumers") >= 1
    # The client has read up to offset 3 of 5 records: one record (offset 4) is still ahead of it.
    assert value(after, "kasocki_consumer_lag", topic=topic) == 1


def test_metrics_are_refused_outside_the_allowed_networks(asgi_server, settings):
    settings.KASOCKI_METRICS_NETWORKS = ["10.0.0.0/8"]
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{asgi_server.url}/metrics", timeout=10)
    refused.value.close()  # the error holds the response's connection
    assert refused.value.code == 403


def test_metrics_with_a_token(asgi_server, settings):
    settings.KASOCKI_METRICS_TOKEN = "s3cret"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{asgi_server.url}/metrics", timeout=10)  # from loopback, but no token
    refused.value.close()
    assert refused.value.code == 403
    request = urllib.request.Request(f"{asgi_server.url}/metrics", headers={"Authorization": "Bearer s3cret"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert b"kasocki_connections" in response.read()


@pytest.mark.parametrize(
    ("trusted", "forwarded", "status"),
    [
        pytest.param(["127.0.0.1"], "203.0.113.7", 403, id="internet-client-behind-the-proxy"),
        pytest.param(["127.0.0.1"], "127.0.0.1", 200, id="loopback-client-behind-the-proxy"),
        pytest.param([], "127.0.0.1", 200, id="header-of-an-untrusted-peer-ignored"),
        pytest.param([], "203.0.113.7", 200, id="forged-header-changes-nothing"),
    ],
)
def test_metrics_judge_the_client_behind_a_trusted_proxy(asgi_server, settings, trusted, forwarded, status):
    settings.KASOCKI_TRUSTED_PROXIES = trusted
    request = urllib.request.Request(f"{asgi_server.url}/metrics", headers={"X-Forwarded-For": forwarded})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            code = response.status
    except urllib.error.HTTPError as refused:
        with refused:
            code = refused.code
    assert code == status


def test_metrics_module_imports_nothing_of_the_app():
    imported: list[str] = []
    for node in ast.walk(ast.parse(Path(metrics.__file__).read_text())):
        if isinstance(node, ast.ImportFrom):
            imported.append("." * node.level + (node.module or ""))
        elif isinstance(node, ast.Import):
            imported.extend(alias.name for alias in node.names)
    assert imported == ["__future__", "prometheus_client"]
