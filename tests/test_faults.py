"""Faults against the live server: Kafka going away and coming back, Kafka unreachable, consumers that hang in close.

The broker restart test runs its own broker (scripts/kafka.py, under its own name and
port) so that stopping it leaves the session's broker alone. The live server shares
Django settings with the tests, so pointing KASOCKI_KAFKA_CONFIG at another broker
with the ``settings`` fixture points the server there too.
"""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Consumer

from kasocki_app import kafka as kasocki_kafka
from kasocki_app.cluster import cluster
from kasocki_app.conf import conf
from kasocki_app.kafka import ConsumerCounts
from scripts import kafka as broker_script
from scripts.kafka_topics import KafkaTopics
from tests.e2e import http_status, server_service, wait_until
from tests.live_server import free_port

pytestmark = pytest.mark.django_db(transaction=True)

# How much longer than KASOCKI_KAFKA_TIMEOUT an answer may take on a loaded 2-core machine.
MARGIN = 3.0


class DedicatedBroker:
    """A broker of this test's own, on a fixed port, that can be stopped and started again with its data."""

    def __init__(self) -> None:
        self.script = broker_script
        try:
            self.script.require("java")
        except self.script.BrokerError as exc:
            pytest.skip(f"a dedicated broker cannot be started here: {exc}")
        self.name = f"faults-{os.getpid()}"
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"

    def start(self) -> None:
        broker = self.script.start(self.name, self.port)
        assert broker.port == self.port

    def stop(self, keep_data: bool) -> None:
        self.script.stop(self.name, keep_data=keep_data)


@pytest.fixture
def dedicated_broker() -> Iterator[DedicatedBroker]:
    broker = DedicatedBroker()
    broker.start()
    try:
        yield broker
    finally:
        broker.stop(keep_data=False)  # also removes data kept by a stop in the test


@pytest.fixture(autouse=True)
def collect_abandoned_lookups() -> Iterator[None]:
    """After each test, let the metadata lookup in flight end and collect what it left behind.

    A lookup still running when a test ends would finish during the next one; collecting
    here also makes any unretrieved exception surface now, in this test's log.
    """
    yield
    deadline = time.monotonic() + 15
    while cluster._inflight is not None and not cluster._inflight.done() and time.monotonic() < deadline:
        time.sleep(0.05)
    gc.collect()


def kafka_error(err: Any, event: str) -> dict[str, Any]:
    """``err`` must be a KafkaError about ``event`` that names librdkafka's error code."""
    assert isinstance(err, dict) and err.get("name") == "KafkaError", err
    assert err["event"] == event, err
    assert isinstance(err.get("code"), str) and err["code"], err
    return err


async def test_stream_survives_a_broker_restart_without_loss_or_duplicates(
    dedicated_broker, settings, allow, asgi_server, connect
):
    settings.KASOCKI_KAFKA_CONFIG = {"bootstrap.servers": dedicated_broker.bootstrap}
    settings.KASOCKI_KAFKA_TIMEOUT = 3.0
    kafka = KafkaTopics(dedicated_broker.bootstrap)
    kafka.wait_ready()
    topic = kafka.create_topic()
    allow(topic)
    before, after = 40, 30
    kafka.produce(topic, [{"i": i} for i in range(before)])

    client = await connect()
    assert topic in await client.next("ready")
    await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
    await client.ok("start", None)
    received = [await client.next("message") for _ in range(before)]

    # The broker goes down (SIGTERM, data kept): the client hears about it as a KafkaError.
    stopped_at = time.monotonic()
    await asyncio.to_thread(dedicated_broker.stop, True)
    err = kafka_error(await client.next("err", timeout=30), "start")
    print(f"\noutage: first err {err['code']!r} {time.monotonic() - stopped_at:.1f}s after the stop began")

    # While it is down the server still serves: health, new connections, bounded Kafka failures.
    assert await asyncio.to_thread(http_status, f"{asgi_server.url}/healthz") == 200
    # /readyz reads the metadata cache: it tells of the outage once that expires.
    deadline = time.monotonic() + conf.metadata_cache_seconds + 3 + MARGIN
    while await asyncio.to_thread(http_status, f"{asgi_server.url}/readyz") != 503:
        assert time.monotonic() < deadline, "/readyz did not tell of the outage"
        await asyncio.sleep(0.1)
    other = await connect()
    kafka_error(await other.next("err", timeout=3 + MARGIN), "connect")
    assert await other.next("ready") == []
    began = time.monotonic()
    error, result = await other.call("subscribe", topic, timeout=3 + 2 * MARGIN)
    elapsed = time.monotonic() - began
    assert result is None, result
    kafka_error(error, "subscribe")
    assert elapsed < 3 + MARGIN, f"subscribe took {elapsed:.1f}s with the broker down"
    print(f"outage: subscribe acked {error['code']!r} after {elapsed:.1f}s")

    # Back on the same port with the same data: the stream resumes where it stopped.
    restarted_at = time.monotonic()
    await asyncio.to_thread(dedicated_broker.start)
    await asyncio.to_thread(kafka.produce, topic, [{"i": i} for i in range(before, before + after)])
    deadline = time.monotonic() + 60
    while received[-1]["_kafka"]["offset"] < before + after - 1:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the stream did not resume; last offset {received[-1]['_kafka']['offset']}"
        received.append(await client.next("message", timeout=remaining))
    print(f"outage: stream resumed within {time.monotonic() - restarted_at:.1f}s of the restart beginning")
    received.extend(client.pending("message"))
    offsets = [m["_kafka"]["offset"] for m in received]
    assert offsets == list(range(before + after)), offsets
    assert [m["i"] for m in received] == list(range(before + after))
    stream_errors = [err, *client.pending("err")]
    assert {e["name"] for e in stream_errors} == {"KafkaError"}, stream_errors

    # And the server is fine afterwards: a new client reads the topic.
    late = await connect()
    assert topic in await late.next("ready")
    await late.ok("subscribe", {"topic": topic, "partition": 0, "offset": before + after - 1})
    assert (await late.ok("consume", None))["i"] == before + after - 1
    assert await asyncio.to_thread(http_status, f"{asgi_server.url}/healthz") == 200


async def test_ready_when_kafka_is_unreachable_reports_a_kafka_error(settings, allow, asgi_server, connect):
    settings.KASOCKI_KAFKA_CONFIG = {"bootstrap.servers": f"127.0.0.1:{free_port()}"}  # nothing listens there
    settings.KASOCKI_KAFKA_TIMEOUT = 2.0
    allow("anything")
    began = time.monotonic()
    client = await connect()
    kafka_error(await client.next("err", timeout=2 + MARGIN), "connect")
    assert await client.next("ready", timeout=MARGIN) == []
    assert time.monotonic() - began < 2 + MARGIN


async def test_subscribe_when_kafka_is_unreachable_fails_in_bounded_time(
    kafka, make_topic, settings, allow, asgi_server, connect
):
    topic = make_topic()
    kafka.produce(topic, [{"i": 0}])
    allow(topic)
    settings.KASOCKI_KAFKA_CONFIG = {"bootstrap.servers": f"127.0.0.1:{free_port()}"}
    settings.KASOCKI_KAFKA_TIMEOUT = 2.0
    client = await connect()
    kafka_error(await client.next("err", timeout=2 + MARGIN), "connect")
    assert await client.next("ready", timeout=MARGIN) == []
    began = time.monotonic()
    error, result = await client.call("subscribe", topic, timeout=2 + 2 * MARGIN)
    elapsed = time.monotonic() - began
    assert result is None, result
    kafka_error(error, "subscribe")
    assert elapsed < 2 + MARGIN, f"subscribe took {elapsed:.1f}s"
    assert kafka_error(await client.next("err"), "subscribe") == error
    assert await asyncio.to_thread(http_status, f"{asgi_server.url}/healthz") == 200

    # Kafka reachable again: the same server serves the same topic.
    settings.KASOCKI_KAFKA_CONFIG = {"bootstrap.servers": kafka.bootstrap}
    again = await connect()
    assert topic in await again.next("ready")
    await again.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
    assert (await again.ok("consume", None))["i"] == 0


async def test_an_abandoned_metadata_lookup_leaves_no_unretrieved_exception(
    settings, allow, asgi_server, connect, caplog
):
    settings.KASOCKI_KAFKA_CONFIG = {"bootstrap.servers": f"127.0.0.1:{free_port()}"}
    settings.KASOCKI_KAFKA_TIMEOUT = 2.0
    allow("anything")
    client = await connect()
    sid = client.sio.get_sid()
    # The client leaves while the metadata lookup for its `ready` waits for the unreachable broker.
    await wait_until(lambda: cluster._inflight is not None and not cluster._inflight.done(), what="lookup pending")
    await client.close()
    await wait_until(lambda: sid not in server_service().connections, what="connection closed")
    await wait_until(lambda: cluster._inflight.done(), timeout=2 + MARGIN, what="lookup finished")
    # Another lookup takes the finished one's place, so what the first left behind can be collected.
    assert await asyncio.to_thread(http_status, f"{asgi_server.url}/readyz") == 503
    gc.collect()
    unretrieved = [r.getMessage() for r in caplog.records if "exception was never retrieved" in r.getMessage()]
    assert unretrieved == []


class HangingClose:
    """Makes every Kafka consumer created from now on hang in close() until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        self.entered = 0
        self.finished = 0
        self._lock = threading.Lock()
        hang = self

        class SlowClosingConsumer(Consumer):
            def close(self, *args: Any, **kwargs: Any) -> None:
                with hang._lock:
                    hang.entered += 1
                try:
                    hang.release.wait(60)
                    super().close(*args, **kwargs)
                finally:
                    with hang._lock:
                        hang.finished += 1

        monkeypatch.setattr(kasocki_kafka, "Consumer", SlowClosingConsumer)


@pytest.fixture
def hanging_close(monkeypatch: pytest.MonkeyPatch) -> Iterator[HangingClose]:
    hang = HangingClose(monkeypatch)
    try:
        yield hang
    finally:
        hang.release.set()


async def test_a_hanging_consumer_close_is_abandoned_without_blocking_the_loop(
    kafka, make_topic, allow, settings, asgi_server, connect, hanging_close
):
    settings.KASOCKI_CONSUMER_CLOSE_TIMEOUT = 0.5
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"i": 0}])
    service = server_service()
    client = await connect()
    await client.next("ready")
    await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
    assert (await client.ok("consume", None))["i"] == 0
    sid = client.sio.get_sid()
    open_before, abandoned_before = ConsumerCounts.open, ConsumerCounts.abandoned

    await client.close()
    await wait_until(lambda: hanging_close.entered == 1, what="the consumer's close began")
    # The close hangs in the Kafka pool; the event loop goes on serving.
    began = time.monotonic()
    other = await connect()
    assert topic in await other.next("ready", timeout=2)
    assert await asyncio.to_thread(http_status, f"{asgi_server.url}/healthz") == 200
    served_in = time.monotonic() - began
    assert served_in < 2, f"a new client waited {served_in:.2f}s while a close hung"
    await wait_until(lambda: ConsumerCounts.abandoned == abandoned_before + 1, timeout=5, what="close abandoned")
    assert hanging_close.finished == 0, "the close was not hanging when it was abandoned"
    assert sid not in service.connections
    assert ConsumerCounts.open == open_before - 1
    print(f"\nhanging close: abandoned after 0.5s; a new client was served in {served_in:.2f}s meanwhile")
    hanging_close.release.set()
    await wait_until(lambda: hanging_close.finished == 1, what="the released close finished")


async def test_hanging_closes_do_not_starve_other_kafka_calls(
    kafka, make_topic, allow, settings, asgi_server, connect, hanging_close
):
    settings.KASOCKI_CONSUMER_CLOSE_TIMEOUT = 0.2
    settings.KASOCKI_KAFKA_TIMEOUT = 2.0
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"i": 0}])
    workers = kasocki_kafka.executor()._max_workers
    abandoned_before = ConsumerCounts.abandoned
    clients = [await connect() for _ in range(workers)]
    for client in clients:
        await client.next("ready")
        await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
        assert (await client.ok("consume", None))["i"] == 0  # read: a consumer of its own, closed when done
    for client in clients:
        await client.close()
    await wait_until(lambda: hanging_close.entered == workers, what="every close began")
    await wait_until(lambda: ConsumerCounts.abandoned == abandoned_before + workers, what="every close abandoned")
    # Every close was given up on; the server should still reach Kafka for everyone else.
    client = await connect()
    assert topic in await client.next("ready", timeout=2 + MARGIN)
    await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
