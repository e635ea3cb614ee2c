"""Chromium's EventSource against a server process that is killed and restarted: it resumes by itself.

tests/js/sse_browser.mjs opens ``new EventSource(...)`` on a page of the server's origin and reports
each connection attempt (with the Last-Event-ID the browser sent), open, error and message. The
server runs as a uvicorn process that is SIGKILLed while the browser streams and started again on
the same port; the browser reconnects on its own (after its default retry delay, about 3 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from scripts.kafka_topics import KafkaTopics
from tests.node import Conversation
from tests.test_servers import ServerProcess

pytestmark = pytest.mark.django_db(transaction=True)

# Small, so that a filtered stream's id-only progress events come often (the default is 5 s).
PROGRESS_SECONDS = "0.2"


class Server:
    """A uvicorn process of the project that can be killed (SIGKILL) and started again on its port."""

    def __init__(self, kafka: KafkaTopics, env: dict[str, str]) -> None:
        self.kafka = kafka
        self.env = env
        self.process: ServerProcess | None = ServerProcess("uvicorn", kafka, env)
        self.port = self.process.port
        self.url = self.process.url

    def kill(self) -> None:
        assert self.process is not None
        self.process.process.kill()
        self.process.process.wait(10)
        self.process.stop()  # collects what it wrote
        self.process = None

    def restart(self) -> None:
        assert self.process is None
        self.process = ServerProcess("uvicorn", self.kafka, self.env, port=self.port)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def metric(self, name: str, **labels: str) -> float | None:
        """A sample of this process's /metrics (None when it has no such sample)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=10) as response:
            text = response.read().decode()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        return None


@pytest.fixture
def server(kafka: KafkaTopics) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []

    def start(topic: str) -> Server:
        env = {"KASOCKI_ALLOWED_TOPICS": topic, "KASOCKI_SSE_PROGRESS_SECONDS": PROGRESS_SECONDS}
        started.append(Server(kafka, env))
        return started[-1]

    yield start
    for each in started:
        each.stop()


@dataclass
class Seen:
    """What the browser reported so far."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    requests: list[str | None] = field(default_factory=list)  # the Last-Event-ID of each attempt answered
    refused: int = 0  # attempts that found no server
    opens: int = 0
    errors: list[int] = field(default_factory=list)  # the readyState after each dropped or failed attempt
    server_errors: list[Any] = field(default_factory=list)

    def summary(self) -> str:
        connections = Counter(m["connection"] for m in self.messages)
        last = self.messages[-1] if self.messages else None
        return (
            f"{len(self.messages)} messages by connection {dict(connections)}, the last {last}; attempts with"
            f" Last-Event-ID {self.requests}, {self.refused} refused, {self.opens} opens, errors {self.errors},"
            f" {self.server_errors}"
        )

    def positions(self) -> list[tuple[int, int]]:
        return [(m["partition"], m["offset"]) for m in self.messages]


class Browser:
    """The driver script: its reports folded into ``seen``, waited for as conditions."""

    def __init__(self, script: Conversation) -> None:
        self.script = script
        self.seen = Seen()

    async def until(self, condition: Callable[[Seen], bool], what: str, timeout: float = 30) -> None:
        stdout = self.script.process.stdout
        assert stdout is not None
        try:
            async with asyncio.timeout(timeout):
                while not condition(self.seen):
                    line = await stdout.readline()
                    if not line:
                        raise AssertionError(f"the browser driver ended waiting for {what}")
                    self._fold(orjson.loads(line))
        except TimeoutError:
            raise AssertionError(f"no {what} within {timeout}s; the browser saw {self.seen.summary()}") from None

    def _fold(self, report: dict[str, Any]) -> None:
        step = report["step"]
        if step == "message":
            self.seen.messages.append({**report, "connection": self.seen.opens})
        elif step == "request":
            self.seen.requests.append(report["lastEventId"])
        elif step == "refused":
            self.seen.refused += 1
        elif step == "open":
            self.seen.opens += 1
        elif step == "error":
            self.seen.errors.append(report["readyState"])
        elif step == "server-error":
            self.seen.server_errors.append(report["data"])
        else:
            raise AssertionError(f"the browser driver reported {report}")


@pytest.fixture
async def browser() -> AsyncIterator[Callable[..., Any]]:
    """Open an EventSource in Chromium on ``path`` of the server's origin (closed after the test)."""
    chromium = os.environ.get("KASOCKI_CHROMIUM") or shutil.which("chromium")
    if chromium is None:
        pytest.fail("the browser test needs Chromium (scripts/ensure_chromium.py installs it)")
    scripts: list[Conversation] = []

    async def open_source(origin: str, path: str) -> Browser:
        config = {"chromium": chromium, "origin": origin, "path": path}
        script = await Conversation.start("sse_browser.mjs", orjson.dumps(config).decode())
        scripts.append(script)
        return Browser(script)

    yield open_source
    for script in scripts:
        with contextlib.suppress(Exception):  # a test that failed may leave it hung: then it is killed
            await script.send("close")
            await asyncio.wait_for(script.process.wait(), 30)
        await script.close()


def event_id(text: str | None) -> dict[tuple[str, int], int]:
    assert text, "no Last-Event-ID"
    return {(e["topic"], e["partition"]): e["offset"] for e in orjson.loads(text)}


class Producer:
    """Produces records to partition 0 from a thread of its own, about a hundred a second, until stopped."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.kafka = KafkaTopics(bootstrap)  # a producer of its own: the test's produces at the same time
        self.topic = topic
        self.produced: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # The pause paces the load (a few hundred records in all), it synchronises nothing.
        while not self._stop.wait(0.01):
            self.produced += self.kafka.produce(self.topic, [{"n": len(self.produced)}], partition=0)

    def stop(self) -> list[tuple[int, int]]:
        self._stop.set()
        self._thread.join(30)
        return self.produced


async def test_eventsource_resumes_a_killed_server_with_every_offset_once(kafka, make_topic, server, browser):
    topic = make_topic(partitions=2)
    live = server(topic)
    page = await browser(live.url, f"/v2/stream/{topic}")
    await page.until(lambda seen: seen.opens == 1, "the stream open")
    assert page.seen.requests == [None]

    # Records stream all along: before the kill, while the server is down, and after it is back.
    producer = Producer(kafka.bootstrap, topic)
    try:
        await page.until(lambda seen: len(seen.messages) >= 20, "messages before the kill")
        live.kill()
        # Partition 1 gets its first records only now: only the id's offset for it can bring them back.
        outage = kafka.produce(topic, [{"outage": i} for i in range(10)], partition=1)
        # The outage outlasts a retry (about 3 s after the drop): the browser keeps trying after a refusal.
        await page.until(lambda seen: seen.refused >= 1, "a reconnect refused while the server is down")
        live.restart()
        await page.until(lambda seen: seen.opens == 2, "the browser's reconnect")
        await page.until(lambda seen: seen.messages[-1]["connection"] == 2, "messages after the reconnect")
        after = len(page.seen.messages)
        await page.until(lambda seen: len(seen.messages) >= after + 20, "more messages after the reconnect")
    finally:
        produced = producer.stop()
    assert page.seen.errors[0] == 0, "the browser gave up instead of retrying"
    first = [m for m in page.seen.messages if m["connection"] == 1]
    assert len(page.seen.requests) == 2, page.seen.requests  # the first request and the one that resumed
    resumed_with = page.seen.requests[-1]
    assert event_id(resumed_with) == {(topic, 0): first[-1]["offset"] + 1, (topic, 1): 0}, "not its last event's id"
    produced += outage
    ends = {partition: kafka.produce(topic, [{"end": True}], partition=partition)[0] for partition in (0, 1)}
    produced += ends.values()
    await page.until(lambda seen: set(ends.values()) <= set(seen.positions()), "the last record of each partition")

    received = page.seen.positions()
    repeated = [position for position, count in Counter(received).items() if count > 1]
    assert not repeated, f"received more than once: {repeated}"
    assert sorted(received) == sorted(produced)
    for partition in (0, 1):
        offsets = [offset for p, offset in received if p == partition]
        assert offsets == sorted(offsets), f"partition {partition} out of order"
    # Partition 0's records of the outage and partition 1's came over the second connection.
    assert {(m["partition"], m["connection"]) for m in page.seen.messages} == {(0, 1), (0, 2), (1, 2)}
    assert page.seen.opens == 2 and not page.seen.server_errors


async def test_a_sparse_filter_resumes_from_the_progress_id_not_the_last_message(kafka, make_topic, server, browser):
    topic = make_topic()
    live = server(topic)
    wanted = quote(orjson.dumps({"kind": "edit"}).decode(), safe="")
    page = await browser(live.url, f"/v2/stream/{topic}?filter={wanted}")
    await page.until(lambda seen: seen.opens == 1, "the stream open")

    skipped = 40
    kafka.produce(topic, [{"kind": "edit", "i": 0}] + [{"kind": "log"}] * skipped)
    await page.until(lambda seen: len(seen.messages) == 1, "the one matching record")
    # The server has read every record (no lag) and then sent a progress event: that one carries the end.
    await wait_for(lambda: live.metric("kasocki_consumer_lag", topic=topic) == 0, "the server to read the records")
    progress = live.metric("kasocki_sse_progress_events_total") or 0
    await wait_for(lambda: (live.metric("kasocki_sse_progress_events_total") or 0) > progress, "a progress event")
    live.kill()
    kafka.produce(topic, [{"kind": "log"}] * 3 + [{"kind": "edit", "i": 1}])
    live.restart()
    await page.until(lambda seen: seen.opens == 2, "the browser's reconnect")
    assert len(page.seen.requests) == 2, page.seen.requests
    assert event_id(page.seen.requests[-1]) == {(topic, 0): 1 + skipped}, "not the progress event's id"
    await page.until(lambda seen: len(seen.messages) == 2, "the record matching after the restart")
    # The restarted server read only the three records after the position: not the 40 skipped before.
    assert live.metric("kasocki_messages_filtered_total") == 3
    kafka.produce(topic, [{"kind": "log"}] * 2 + [{"kind": "edit", "i": 2}])
    await page.until(lambda seen: len(seen.messages) == 3, "the record matching later")
    assert live.metric("kasocki_messages_filtered_total") == 5

    assert [(m["offset"], m["body"]) for m in page.seen.messages] == [
        (0, {"kind": "edit", "i": 0}),
        (skipped + 4, {"kind": "edit", "i": 1}),
        (skipped + 7, {"kind": "edit", "i": 2}),
    ]
    assert [m["lastEventId"] for m in page.seen.messages][1:] == [
        orjson.dumps([{"topic": topic, "partition": 0, "offset": offset}]).decode() for offset in (45, 48)
    ]


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    """Poll a condition of the server process (its /metrics) until it holds."""
    try:
        async with asyncio.timeout(timeout):
            while not await asyncio.to_thread(condition):
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None
