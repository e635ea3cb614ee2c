"""Kafka errors are logged once per kind per interval with a count, however many consumers meet them."""

from __future__ import annotations

import itertools
import logging
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator

import pytest
from confluent_kafka import KafkaError as RdKafkaError

from kasocki_app import kafka
from kasocki_app.exceptions import KafkaError
from kasocki_app.kafka import KafkaSource
from kasocki_app.lograte import LibrdkafkaLogger, RateLimitedLog
from tests.live_server import free_port

CONSUMERS = 10
THREADS = 8
ROUNDS = 25
SUMMARY = re.compile(r": (\d+) times? in the last (\d+)s on (\d+) (consumers?|Kafka clients?)$")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# Every fake error names this broker: consumers left by other tests of the process meet real errors
# (and log them through the same process-wide limits), which the assertions must not count.
FAKE = "fake-broker.invalid"


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.only = FAKE  # None: every line

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if self.only is None or self.only in message:
            self.lines.append(message)

    def take(self) -> list[str]:
        taken, self.lines = self.lines, []
        return taken


@pytest.fixture
def lines() -> Iterator[Lines]:
    handler = Lines()
    logger = logging.getLogger("kasocki_app")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


class TickingClock:
    """Each reading is ``step`` seconds after the previous one: intervals end while the threads run."""

    def __init__(self, step: float) -> None:
        self._ticks = itertools.count()
        self._step = step

    def __call__(self) -> float:
        return next(self._ticks) * self._step


def run_threads(target: Callable[[], None]) -> None:
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: races show up
    try:
        threads = [threading.Thread(target=target) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    finally:
        sys.setswitchinterval(switch)


def fresh_logs(monkeypatch: pytest.MonkeyPatch, clock: Callable[[], float] | None = None) -> None:
    """Process-wide rate limits of their own for this test (other tests' errors must not count)."""
    options = {} if clock is None else {"clock": clock}
    errors = RateLimitedLog(logging.getLogger("kasocki_app.kafka"), noun="consumers", **options)
    library = RateLimitedLog(logging.getLogger("kasocki_app.librdkafka"), noun="Kafka clients", **options)
    monkeypatch.setattr(kafka, "consumer_errors", errors)
    monkeypatch.setattr(kafka, "librdkafka_log", LibrdkafkaLogger(library))


def transport_error(elapsed_ms: int) -> RdKafkaError:
    text = f"{FAKE}:9092/bootstrap: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after {elapsed_ms}ms)"
    return RdKafkaError(RdKafkaError._TRANSPORT, text)


def counts(found: list[str], start: str) -> list[tuple[int, int]]:
    """(count, sources) of each summary line that starts with ``start``."""
    return [
        (int(match[1]), int(match[3])) for line in found if line.startswith(start) and (match := SUMMARY.search(line))
    ]


def test_many_consumers_in_many_threads_log_one_line_per_kind_per_interval(monkeypatch, lines):
    clock = Clock()
    fresh_logs(monkeypatch, clock)
    errors = [deque[KafkaError]() for _ in range(CONSUMERS)]
    callbacks = [kafka.error_callback(errors[i], i) for i in range(CONSUMERS)]
    start = threading.Barrier(THREADS)

    def consumer_threads() -> None:
        start.wait()
        for attempt in range(ROUNDS):
            for i, on_error in enumerate(callbacks):
                on_error(transport_error(attempt))  # the duration differs: still the same kind
                on_error(RdKafkaError(RdKafkaError._ALL_BROKERS_DOWN, f"1/1 brokers are down ({FAKE})"))
                # What confluent-kafka's logger= option calls, from librdkafka's threads.
                text = f"[thrd:{FAKE}:9092/bootstrap]: Connect failed (after {attempt}ms in state CONNECT)"
                kafka.librdkafka_log.log(logging.ERROR, "%s [%s] %s", "FAIL", f"kasocki#consumer-{i}", text)

    run_threads(consumer_threads)
    total = THREADS * ROUNDS * CONSUMERS

    # The first of each kind at once, nothing more within the interval...
    first = lines.take()
    assert sorted(line.split(" (")[0].split(" [")[0] for line in first) == [
        "FAIL",
        "kafka consumer error _ALL_BROKERS_DOWN",
        "kafka consumer error _TRANSPORT",
    ]
    # ...and every error still reached its consumer's client.
    assert [len(e) for e in errors] == [2 * THREADS * ROUNDS] * CONSUMERS
    assert {e.details["code"] for e in errors[0]} == {"_TRANSPORT", "_ALL_BROKERS_DOWN"}

    clock.now += 9.9
    kafka.flush_logs()
    assert lines.take() == []

    # Once the interval is over, one line per kind with the count of all the others.
    clock.now += 0.1
    kafka.flush_logs()
    summaries = lines.take()
    assert len(summaries) == 3
    assert counts(summaries, "kafka consumer error _TRANSPORT") == [(total - 1, CONSUMERS)]
    assert counts(summaries, "kafka consumer error _ALL_BROKERS_DOWN") == [(total - 1, CONSUMERS)]
    assert counts(summaries, "FAIL [kasocki#consumer-") == [(total - 1, CONSUMERS)]
    assert all(" in the last 10s " in line for line in summaries)


def test_counts_add_up_when_intervals_end_while_consumers_report(monkeypatch, lines):
    fresh_logs(monkeypatch, TickingClock(0.002))
    callbacks = [kafka.error_callback(deque(), i) for i in range(CONSUMERS)]
    start = threading.Barrier(THREADS)

    def consumer_threads() -> None:
        start.wait()
        for attempt in range(ROUNDS * 20):
            for on_error in callbacks:
                on_error(transport_error(attempt))
                kafka.flush_logs()  # what the stream loops do meanwhile

    run_threads(consumer_threads)
    kafka.flush_logs(force=True)
    found = lines.take()
    total = THREADS * ROUNDS * 20 * CONSUMERS
    summed = counts(found, "kafka consumer error _TRANSPORT")
    # Not one event lost or counted twice; about one line per 10 s of the clock, not one per event.
    assert len(found) - len(summed) + sum(n for n, _ in summed) == total
    assert len(found) <= 2 * total * 2 * 0.002 / 10 + 2, found


def test_a_due_summary_is_written_by_the_next_event_of_any_kind(monkeypatch, lines):
    clock = Clock()
    fresh_logs(monkeypatch, clock)
    on_error = kafka.error_callback(deque(), 1)
    on_error(transport_error(0))
    on_error(RdKafkaError(RdKafkaError._ALL_BROKERS_DOWN, f"1/1 brokers are down ({FAKE})"))
    clock.now += 5
    on_error(transport_error(3))
    assert len(lines.take()) == 2
    clock.now += 6
    # Another kind, after the interval: the trailing transport count comes out with it.
    on_error(RdKafkaError(RdKafkaError._RESOLVE, f"{FAKE}:9092/bootstrap: Failed to resolve"))
    found = lines.take()
    assert len(found) == 2
    assert counts(found, "kafka consumer error _TRANSPORT") == [(1, 1)]
    assert found[1].startswith(f"kafka consumer error _RESOLVE ({FAKE}")
    assert "1 time in the last 11s on 1 consumer" in found[0]
    # The brokers-down kind stayed quiet for a whole interval: it is news again, logged at once.
    on_error(RdKafkaError(RdKafkaError._ALL_BROKERS_DOWN, f"1/1 brokers are down ({FAKE})"))
    assert lines.take() == [f"kafka consumer error _ALL_BROKERS_DOWN (1/1 brokers are down ({FAKE}))"]


def test_a_forced_flush_writes_pending_counts_before_the_interval(monkeypatch, lines):
    clock = Clock()
    fresh_logs(monkeypatch, clock)
    on_error = kafka.error_callback(deque(), 1)
    for attempt in range(4):
        on_error(transport_error(attempt))
    clock.now += 2
    kafka.flush_logs(force=True)
    found = lines.take()
    assert counts(found, "kafka consumer error _TRANSPORT") == [(3, 1)]
    assert "in the last 2s" in found[1]
    kafka.flush_logs(force=True)
    assert lines.take() == []  # nothing pending: nothing written


def test_the_stream_loop_writes_due_summaries_when_it_takes_errors(monkeypatch, lines):
    clock = Clock()
    fresh_logs(monkeypatch, clock)
    monkeypatch.setattr(kafka.ConsumerCounts, "open", 0)
    source = KafkaSource(consumer=None)
    on_error = kafka.error_callback(source._errors, 1)
    on_error(transport_error(0))
    on_error(transport_error(1))
    assert len(lines.take()) == 1
    clock.now += 10
    # No new error arrives, but the stream loop still takes errors: the summary comes out then.
    assert [e.details["code"] for e in source.take_errors()] == ["_TRANSPORT", "_TRANSPORT"]
    assert counts(lines.take(), "kafka consumer error _TRANSPORT") == [(1, 1)]


def test_kinds_beyond_the_limit_are_written_out_and_forgotten(lines):
    clock = Clock()
    log = RateLimitedLog(logging.getLogger("kasocki_app.kafka"), clock=clock, max_kinds=3)
    lines.only = "event "  # a log of its own: only its lines
    for kind in "abcd":
        for _ in range(2):
            log.log(logging.WARNING, kind, 1, "event %s", kind)
    found = lines.take()
    # a, b, c at once; d found the table full: the pending counts of a, b, c were written, then d.
    assert found[:3] == ["event a", "event b", "event c"]
    assert sorted(found[3:6]) == [f"event {k}: 1 time in the last 0s on 1 consumer" for k in "abc"]
    assert found[6:] == ["event d"]
    assert len(log._kinds) == 1


async def test_a_consumer_at_a_closed_port_logs_a_few_lines_not_one_per_attempt(monkeypatch, settings, lines):
    fresh_logs(monkeypatch)
    lines.only = None  # a real consumer's real errors
    monkeypatch.setattr(kafka.ConsumerCounts, "open", 0)  # ours is the last to close: it writes what is pending
    # Nothing listens there; reconnect every 100 ms so that a few seconds make many attempts.
    settings.KASOCKI_KAFKA_CONFIG = {"bootstrap.servers": f"127.0.0.1:{free_port()}", "reconnect.backoff.max.ms": 100}
    source = await KafkaSource.create()
    taken: list[KafkaError] = []
    try:
        deadline = time.monotonic() + 20
        while sum(e.details["code"] == "_TRANSPORT" for e in taken) < 20 and time.monotonic() < deadline:
            await source.read(1, 0.2)
            taken.extend(source.take_errors())
    finally:
        await source.close()
    attempts = sum(e.details["code"] == "_TRANSPORT" for e in taken)
    assert attempts >= 20, "librdkafka did not retry as often as expected"
    found = [line for line in lines.take() if "kafka consumer error" in line or line.startswith("FAIL")]
    # At most the first line of each kind, one summary on the way and one at the end: not one per attempt.
    assert len(found) <= 9, found
    # The lines account for every attempt: the first one alone, the others counted in summaries.
    reported = [line for line in found if line.startswith("kafka consumer error _TRANSPORT")]
    summed = counts(reported, "kafka consumer error _TRANSPORT")
    assert len(reported) - len(summed) + sum(n for n, _ in summed) == attempts
