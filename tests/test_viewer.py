"""The viewer page in headless Chromium: topics, start positions, live rows, the rate, filters and errors,
and the curl command of its stream (run, to see that it streams).

tests/js/viewer_browser.mjs drives the page with playwright-core and reports what it saw as JSON lines;
these tests produce the records when the driver says the page is streaming and check its reports.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import pytest
from confluent_kafka import TopicPartition
from django.test import Client, override_settings
from django.urls import clear_script_prefix, include, path, set_script_prefix

from tests.curl import CurlStream

pytestmark = pytest.mark.django_db(transaction=True)

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "js" / "viewer_browser.mjs"
SCREENSHOT = ROOT / "artifacts" / "viewer.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_ROWS = 500  # the table's bound, in viewer.js
HOUR_MS = 3_600_000
RATE_WINDOW_MS = 5000  # the span the rate covers, in viewer.js
NO_RATE = "\N{EN DASH}"  # what the page shows until a rate can be measured


class BrowserDriver:
    """The node driver in a subprocess; its JSON lines are read with a timeout each."""

    def __init__(self, config: dict[str, Any]) -> None:
        node = shutil.which("node")
        chromium = os.environ.get("KASOCKI_CHROMIUM") or shutil.which("chromium")
        if node is None or chromium is None or not (ROOT / "node_modules" / "playwright-core").is_dir():
            pytest.fail("the browser test needs node, `npm ci` and Chromium (scripts/ensure_chromium.py installs it)")
        self.process = subprocess.Popen(
            [node, str(DRIVER), json.dumps({**config, "chromium": chromium})],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stderr: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        threading.Thread(target=self._pump, args=(self.process.stdout, self.lines.put), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.process.stderr, self.stderr.append), daemon=True).start()

    @staticmethod
    def _pump(stream: IO[str], put: Callable[[str | None], None]) -> None:
        with stream:
            for line in stream:
                put(line)
        put(None)

    def expect(self, event: str, timeout: float = 60) -> None:
        report = self._next(timeout)
        assert report.get("event") == event, f"expected the driver to report {event!r}, got {report}"

    def result(self, timeout: float = 60) -> dict[str, Any]:
        report = self._next(timeout)
        assert "result" in report, f"expected the driver's result, got {report}"
        assert self.process.wait(timeout) == 0, self._stderr()
        return report["result"]

    def _next(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"the browser driver reported nothing for {timeout}s{self._stderr()}")
        if line is None:
            pytest.fail(f"the browser driver exited with {self.process.wait(10)}{self._stderr()}")
        report = json.loads(line)
        if "error" in report:
            pytest.fail(f"the browser driver failed: {report['error']}{self._stderr()}")
        return report

    def _stderr(self) -> str:
        text = "".join(line for line in self.stderr if line)
        return f"\nstderr:\n{text}" if text else ""

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


@pytest.fixture
def browser(asgi_server: Any) -> Iterator[Callable[..., BrowserDriver]]:
    """Start the browser driver on the live server's viewer page (killed after the test if still running)."""
    drivers: list[BrowserDriver] = []

    def run(scenario: str, **config: Any) -> BrowserDriver:
        driver = BrowserDriver({"scenario": scenario, "url": f"{asgi_server.url}/", **config})
        drivers.append(driver)
        return driver

    yield run
    for driver in drivers:
        driver.close()


def reading(seq: int) -> dict[str, Any]:
    """A record: even ``seq`` are red, odd ones blue."""
    return {
        "seq": seq,
        "color": "red" if seq % 2 == 0 else "blue",
        "station": {"id": f"st-{seq % 3}", "city": ["Lyon", "Porto", "Turku"][seq % 3]},
        "celsius": round(12.5 + (seq % 9) * 0.75, 2),
    }


def test_viewer_streams_filters_and_shows_filter_errors(kafka, make_topic, allow, browser):
    topic = make_topic()
    allow(topic)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    first, second = range(600), range(600, 611)
    driver = browser(
        "stream",
        topic=topic,
        timezone="UTC",
        lastSeq=first[-1],
        filter={"color": "red"},
        lastFilteredSeq=second[-1],
        invalidFilter={"color": "/(unclosed/"},
        screenshot=str(SCREENSHOT),
    )

    driver.expect("streaming")
    kafka.produce(topic, [reading(seq) for seq in first], key="station-feed")
    driver.expect("filtered")
    kafka.produce(topic, [reading(seq) for seq in second], key="station-feed")
    result = driver.result()

    # Every record arrived in order, newest on top, and the table kept only the newest MAX_ROWS.
    streamed = result["streamed"]
    assert [row["body"]["seq"] for row in streamed["rows"]] == list(reversed(first))[:MAX_ROWS]
    assert streamed["counters"]["count"] == len(first)
    assert streamed["counters"]["shown"] == f"showing the newest {MAX_ROWS}"
    newest = streamed["rows"][0]
    assert newest["body"] == reading(first[-1])
    assert (newest["topic"], newest["partition"], newest["offset"], newest["key"]) == (
        topic,
        0,
        first[-1],
        "station-feed",
    )

    # After the filter was accepted only red records arrived.
    filtered = result["filtered"]
    assert filtered["applied"] == {"error": None, "status": "active"}
    after = [row["body"]["seq"] for row in filtered["rows"] if row["body"]["seq"] >= second[0]]
    assert after == [seq for seq in reversed(second) if seq % 2 == 0]
    assert len(filtered["rows"]) == MAX_ROWS
    assert filtered["counters"]["count"] == len(first) + len(after)

    # Invalid filters are explained inline; the server keeps the previous filter.
    assert result["notJson"]["error"].startswith("Not valid JSON")
    assert result["rejected"]["error"].startswith("InvalidFilterError: filter 'color': invalid or unsupported")
    assert result["rejected"]["status"] == "edited"

    # A click shows the whole message.
    assert result["detail"]["title"] == f"{topic} / partition 0 / offset {second[-1]}"
    message = result["detail"]["message"]
    kafka_meta = message.pop("_kafka")
    assert message == reading(second[-1])
    assert {k: kafka_meta[k] for k in ("topic", "partition", "offset", "key")} == {
        "topic": topic,
        "partition": 0,
        "offset": second[-1],
        "key": "station-feed",
    }
    assert isinstance(kafka_meta["timestamp"], int)

    assert result["errors"] == []
    assert result["pageErrors"] == []
    assert result["counters"]["state"] == "streaming"
    png = SCREENSHOT.read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000


def test_viewer_starts_from_a_date_or_offsets_and_lists_server_errors(kafka, make_topic, allow, browser):
    topic = make_topic(partitions=2)
    now = int(time.time() * 1000)
    old, recent = now - 3 * HOUR_MS, now - HOUR_MS
    kafka.produce(topic, [reading(seq) for seq in (0, 1, 2)], partition=0, timestamp=old)
    kafka.produce(topic, [reading(seq) for seq in (3, 4)], partition=0, timestamp=recent)
    kafka.produce(topic, [reading(seq) for seq in (10, 11)], partition=1, timestamp=old)
    kafka.produce(topic, [reading(12)], partition=1, timestamp=recent)
    allow(topic)
    driver = browser(
        "positions",
        topic=topic,
        # Not UTC: the page must read the date and time the user typed as local time.
        timezone="Asia/Kolkata",
        since=now - 2 * HOUR_MS,
        expectTimeRows=3,
        offsets="0:1 1:9",
        expectOffsetRows=4,
        badOffsets="7:0",
    )
    result = driver.result()

    time_start = result["time"]
    assert time_start["assignments"] == [
        {"topic": topic, "partition": 0, "offset": 3},
        {"topic": topic, "partition": 1, "offset": 2},
    ]
    assert sorted(row["body"]["seq"] for row in time_start["rows"]) == [3, 4, 12]

    # Offset 9 is past partition 1's end: the server starts it at the latest offset and says so.
    offsets = result["offsets"]
    assert offsets["assignments"] == [
        {"topic": topic, "partition": 0, "offset": 1},
        {"topic": topic, "partition": 1, "offset": 3, "reset_from": 9},
    ]
    assert sorted(row["body"]["seq"] for row in offsets["rows"]) == [1, 2, 3, 4]

    bad = result["bad"]
    assert bad["state"] == "idle"
    assert [(e["name"], e["message"]) for e in bad["errors"]] == [
        ("PartitionNotAvailableError", f"topic {topic!r} has no partition 7")
    ]
    assert "on subscribe" in bad["errors"][0]["details"]
    assert result["pageErrors"] == []


def test_viewer_starts_every_selected_topic_from_its_earliest_offsets(kafka, make_topic, allow, browser):
    first, second = make_topic(partitions=2), make_topic()
    kafka.produce(first, [reading(seq) for seq in range(5)], partition=0)
    kafka.produce(first, [reading(seq) for seq in (10, 11, 12)], partition=1)
    kafka.produce(second, [reading(seq) for seq in (20, 21)])
    # Retention-like deletion: partition 0 now starts at offset 2, so offset 0 would be reset to the latest.
    for future in kafka.admin.delete_records([TopicPartition(first, 0, 2)]).values():
        future.result(30)
    allow(first, second)
    driver = browser("earliest", topics=[first, second], timezone="UTC", expectRows=8)
    result = driver.result()

    assert result["assignments"] == sorted(
        [
            {"topic": first, "partition": 0, "offset": 2},
            {"topic": first, "partition": 1, "offset": 0},
            {"topic": second, "partition": 0, "offset": 0},
        ],
        key=lambda a: (a["topic"], a["partition"]),
    )
    rows = {(row["topic"], row["partition"], row["offset"]): row["body"]["seq"] for row in result["rows"]}
    assert rows == {
        **{(first, 0, offset): offset for offset in (2, 3, 4)},
        **{(first, 1, offset): seq for offset, seq in enumerate((10, 11, 12))},
        **{(second, 0, offset): seq for offset, seq in enumerate((20, 21))},
    }
    assert result["errors"] == []
    assert result["pageErrors"] == []


def test_viewer_shows_a_rate_only_over_a_whole_window(kafka, make_topic, allow, browser):
    topic = make_topic()
    allow(topic)
    driver = browser("rate", topic=topic, timezone="UTC", expectRows=2, watchMs=1500, laterRows=4)
    driver.expect("streaming")
    kafka.produce(topic, [reading(seq) for seq in (0, 1)])
    # Two more once the page has sampled for a while, so that the first whole window holds messages.
    driver.expect("watched")
    kafka.produce(topic, [reading(seq) for seq in (2, 3)])
    result = driver.result()

    # Two messages right after Start are no rate ("2 msg/s" would be a guess), however often it is sampled.
    early = result["early"]
    assert early["elapsedMs"] < RATE_WINDOW_MS, "the machine was too slow for this test's first look"
    assert (early["count"], early["rates"]) == (2, [NO_RATE])
    # Once streaming has lasted a window, the rate is the messages of the last window over its length.
    later = result["later"]
    assert later["elapsedMs"] >= RATE_WINDOW_MS
    assert later["count"] == 4
    assert 0 < float(later["rate"]) <= 4 * 1000 / RATE_WINDOW_MS
    assert result["errors"] == []
    assert result["pageErrors"] == []


def command_of(stream_url: str, topics: str, query: str = "", last_event_id: Any = None) -> str:
    """The curl command the page must show."""
    header = "" if last_event_id is None else f" -H 'Last-Event-ID: {json.dumps(last_event_id, separators=(',', ':'))}'"
    return f"curl -N{header} '{stream_url}/v2/stream/{topics}{query}'"


def signed(seq: int) -> dict[str, Any]:
    """A reading, every fourth by O'Brien (a quote, for the shell and the URL)."""
    return {**reading(seq), "by": "O'Brien" if seq % 4 == 0 else "Ada"}


def test_viewer_shows_the_curl_command_of_its_stream_and_the_command_streams(
    kafka, make_topic, allow, browser, asgi_server
):
    topic, other = make_topic(partitions=2), make_topic()
    kafka.produce(topic, [signed(seq) for seq in range(9)], partition=0)
    kafka.produce(topic, [signed(seq) for seq in (10, 11)], partition=1)
    allow(topic, other)
    picked = {"color": "red", "by": "/^O'Brien$/"}  # red and by O'Brien: every fourth seq
    since = (int(time.time()) - 3600) * 1000
    driver = browser(
        "command", topic=topic, other=other, filter=picked, timezone="Asia/Kolkata", since=since, offsets="0:1 1"
    )
    result = driver.result()

    url = asgi_server.url
    query = "?filter=" + quote(json.dumps(picked, separators=(",", ":"), ensure_ascii=False), safe="")
    assert "%27" in query and "'" not in query  # the quote is encoded: the command stays one shell word
    assert result["none"] == {"text": command_of(url, topic), "hint": None}
    assert result["applied"] == {"error": None, "status": "active"}
    assert result["latest"] == {"text": command_of(url, topic, query), "hint": None}
    assert result["copied"]["button"] == "Copied"
    assert result["copied"]["clipboard"] == result["latest"]["text"]
    assert result["earliest"]["text"] == command_of(url, topic, "?since=0&" + query[1:])
    assert result["time"]["text"] == command_of(url, topic, f"?since={since}&" + query[1:])
    offsets = [{"topic": topic, "partition": 0, "offset": 1}, {"topic": topic, "partition": 1, "offset": -1}]
    assert result["offsets"]["text"] == command_of(url, topic, query, offsets)
    # The other topic's partitions are not known before a subscription lists them.
    assert result["unknown"] == {
        "text": None,
        "hint": f"Give the partitions of {other} (curl names each one), or press Start once.",
    }
    both = {topic: offsets, other: [{"topic": other, "partition": 0, "offset": -1}]}
    order = sorted(both)  # the topics as the page lists them
    started = command_of(url, ",".join(order), query, [entry for name in order for entry in both[name]])
    assert result["started"] == {"text": started, "hint": None}
    assert result["prefixed"] == f"{url}/mounted/tools/kasocki/v2/stream/one,two"
    assert result["errors"] == [] and result["pageErrors"] == []

    # The commands stream: from the offsets (partition 1 from its latest), and from the latest with the filter.
    replay = CurlStream(result["offsets"]["text"])
    try:
        replay.started()
        kafka.produce(topic, [signed(seq) for seq in (12, 13)], partition=1)
        got = replay.messages(3)
    finally:
        replay.close()
    assert sorted((m["_kafka"]["partition"], m["seq"]) for m in got) == [(0, 4), (0, 8), (1, 12)]
    live = CurlStream(result["latest"]["text"])
    try:
        live.started()
        kafka.produce(topic, [signed(seq) for seq in range(14, 21)], partition=0)
        assert [m["seq"] for m in live.messages(2)] == [16, 20]
    finally:
        live.close()


# A site that mounts the app under a prefix of its own (and is itself served under a script prefix).
urlpatterns = [path("tools/kasocki/", include("kasocki_app.urls"))]


@override_settings(ROOT_URLCONF=__name__)
def test_the_viewer_gets_the_stream_url_under_the_sites_prefix():
    assert 'data-stream-url="/tools/kasocki/v2/stream/TOPICS"' in Client().get("/tools/kasocki/").content.decode()
    # The script prefix, as a WSGI or ASGI server sets it from SCRIPT_NAME or root_path (the test client does not).
    set_script_prefix("/mounted/")
    try:
        page = Client().get("/tools/kasocki/")
    finally:
        clear_script_prefix()
    assert page.status_code == 200
    assert 'data-stream-url="/mounted/tools/kasocki/v2/stream/TOPICS"' in page.content.decode()
