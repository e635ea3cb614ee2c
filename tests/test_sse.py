"""HTTP streams without a server: parsing what a stream asks for, and framing what it sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest

from kasocki_app import sse_view
from kasocki_app.connection import Connection
from kasocki_app.exceptions import InvalidArgumentError, InvalidAssignmentError, InvalidFilterError
from kasocki_app.sse import PENDING_OVERHEAD, EventStream
from kasocki_app.sse_request import parse_since, parse_stream_request, wants_ndjson
from kasocki_app.types import Position, TopicPartition
from tests.fakes import settle
from tests.sse_client import Event, check_ids, parse_events, positions_of


def parsed(topics: str = "a", headers: dict[str, str] | None = None, **query: str) -> Any:
    return parse_stream_request(topics, {k: [v] for k, v in query.items()}, headers or {})


def test_topics_of_the_url_start_at_the_latest_offsets():
    assert parsed("a,b").subscription == ["a", "b"]
    assert parsed(" a , b ").subscription == ["a", "b"]


@pytest.mark.parametrize("topics", ["", "a,", ",a", "a,,b", "a,a"])
def test_bad_topic_lists_are_refused(topics):
    with pytest.raises(InvalidAssignmentError):
        parsed(topics)


def test_since_applies_to_every_topic_as_epoch_milliseconds():
    assert parsed("a,b", since="1700000000123").subscription == [
        {"topic": "a", "timestamp": 1700000000123},
        {"topic": "b", "timestamp": 1700000000123},
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("2023-11-14T22:13:20Z", 1700000000000),
        ("2023-11-14T22:13:20.5+00:00", 1700000000500),
        ("2023-11-14T23:13:20+01:00", 1700000000000),
        ("2023-11-14T22:13:20", 1700000000000),  # no zone: UTC
        ("2023-11-14", 1699920000000),
    ],
)
def test_since_reads_iso_8601(text, expected):
    assert parse_since(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("2023-11-14T22:13:20 00:00", 1700000000000, id="hh:mm"),
        pytest.param("2023-11-14T22:13:20 0000", 1700000000000, id="hhmm"),
        pytest.param("2023-11-14T23:13:20 01:00", 1700000000000, id="east-of-utc"),
        pytest.param("2023-11-14T22:13:20.5 00:00", 1700000000500, id="fraction"),
        pytest.param("2023-11-14T22:13 00:00", 1700000000000 - 20_000, id="no-seconds"),
        pytest.param("2023-11-14 22:13:20 00:00", 1700000000000, id="space-before-the-time"),
        pytest.param("20231114T221320 0000", 1700000000000, id="basic-format"),
    ],
)
def test_since_reads_a_plus_sign_the_url_turned_into_a_space(text, expected):
    # `+` in a query string means a space: "...20+00:00" pasted into a URL arrives as "...20 00:00".
    assert parse_since(text) == expected


def test_since_reads_a_date_then_a_space_then_a_time_as_a_time_of_day():
    # No time before the space, so it is no offset: 01:00 on that day, UTC.
    assert parse_since("2023-11-14 01:00") == 1699920000000 + 3_600_000


@pytest.mark.parametrize("text", ["", "yesterday", "-1", "1e9", "1969-12-31T23:59:59Z", "9" * 30])
def test_bad_since_is_refused(text):
    with pytest.raises(InvalidArgumentError):
        parse_since(text)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("yesterday", id="no-date"),
        pytest.param("2023-11-14T22:13:20 0:00", id="short-offset"),
        pytest.param("2023-11-14T22:13:20 25:00", id="offset-out-of-range"),
        pytest.param("2023-11-14T22:13:20  00:00", id="two-spaces"),
    ],
)
def test_bad_since_says_how_to_write_it_in_a_url(text):
    with pytest.raises(InvalidArgumentError) as caught:
        parse_since(text)
    assert "%2B" in caught.value.message and repr(text) in caught.value.message


def test_last_event_id_replaces_the_urls_topics_and_since():
    event_id = orjson.dumps(
        [{"topic": "b", "partition": 0, "offset": 5}, {"topic": "b", "partition": 1, "timestamp": 1000}]
    ).decode()
    request = parsed("a", {"last-event-id": event_id}, since="5")
    assert request.subscription == [
        {"topic": "b", "partition": 0, "offset": 5},
        {"topic": "b", "partition": 1, "timestamp": 1000},
    ]


def test_a_kafkasse_id_of_minus_one_reads_from_the_latest_offset():
    request = parsed("a", {"last-event-id": '[{"topic": "a", "partition": 0, "offset": -1}]'})
    assert request.subscription == [{"topic": "a", "partition": 0}]


@pytest.mark.parametrize("header", ["", "  ", "[]"])
def test_an_empty_last_event_id_is_no_position(header):
    assert parsed("a", {"last-event-id": header}).subscription == ["a"]


@pytest.mark.parametrize(
    "header",
    [
        "not json",
        "{}",
        '"a"',
        '["a"]',
        '[{"topic": "a", "offset": 1}]',
        '[{"topic": "a", "partition": 0}]',
        '[{"topic": "a", "partition": 0, "offset": 1, "timestamp": 2}]',
        '[{"topic": "a", "partition": 0, "offset": -2}]',
        '[{"topic": "a", "partition": 0, "offset": 1, "extra": 1}]',
        '[{"topic": "a", "partition": 0, "offset": 1}, {"topic": "a", "partition": 0, "offset": 2}]',
        "[" + ",".join(['{"topic": "a", "partition": 0, "offset": 1}'] * 300) + "]",
        "[" + " " * 300_000 + "]",
    ],
)
def test_bad_last_event_ids_are_refused(header):
    with pytest.raises(InvalidAssignmentError, match="Last-Event-ID"):
        parsed("a", {"last-event-id": header})


def test_the_filter_is_json_from_the_url():
    assert parsed(filter='{"type": "edit"}').filter == {"type": "edit"}
    assert parsed().filter is None
    with pytest.raises(InvalidFilterError):
        parsed(filter="{type")


def test_a_parameter_given_twice_is_refused():
    with pytest.raises(InvalidArgumentError, match="once"):
        parse_stream_request("a", {"since": ["1", "2"]}, {})


@pytest.mark.parametrize(
    ("accept", "ndjson"),
    [
        ("", False),
        ("*/*", False),
        ("text/event-stream", False),
        ("application/json", True),
        ("application/x-ndjson", True),
        ("application/json, text/event-stream", False),
        ("Application/JSON; q=0.9", True),
    ],
)
def test_ndjson_is_chosen_by_accept(accept, ndjson):
    assert wants_ndjson(accept) is ndjson


class Body:
    """An HTTP stream's response body, read chunk by chunk as the ASGI server would."""

    def __init__(self, stream: EventStream) -> None:
        self.ended = False
        self._body = stream.body(self._on_end)

    async def _on_end(self) -> None:
        self.ended = True

    async def next(self) -> bytes:
        return await asyncio.wait_for(anext(self._body), 5)

    async def rest(self) -> list[bytes]:
        return [chunk async for chunk in self._body]

    async def close(self) -> None:
        await self._body.aclose()


def started(ndjson: bool = False, positions: list[Position] | None = None, progress: Any = None) -> EventStream:
    stream = EventStream(ndjson=ndjson, transport=None)
    stream.start_at(positions or [Position("t", 0, 0)], progress or (lambda: None))
    return stream


async def test_message_events_carry_the_next_offset_of_every_partition():
    stream = started(positions=[Position("t", 0, 5), Position("t", 1, 7)])
    body = Body(stream)
    assert (
        await body.next()
        == b':ok\n\nid: [{"topic":"t","partition":0,"offset":5},{"topic":"t","partition":1,"offset":7}]\n\n'
    )
    await stream.emit_message(("t", {"v": 1}, 1, 7))
    assert stream.backlog() > 0
    assert await body.next() == (
        b'event: message\nid: [{"topic":"t","partition":0,"offset":5},{"topic":"t","partition":1,"offset":8}]\n'
        b'data: {"v":1}\n\n'
    )
    assert stream.backlog() == 0  # written out
    await body.close()
    assert body.ended and stream.ending


async def test_encoded_messages_are_sent_as_they_are_in_ndjson():
    stream = started(ndjson=True)
    await stream.emit_message(("t", orjson.Fragment(b'{"a":1}'), 0, 0))
    await stream.emit_message(("t", {"b": 2**70}, 0, 1))  # beyond 64 bits: the same fallback as socket.io
    expected = b'{"a":1}\n{"b":1180591620717411303424}\n'
    assert stream.backlog() == len(expected) + 2 * PENDING_OVERHEAD  # what they take in memory
    body = Body(stream)
    assert await body.next() == expected  # no :ok, no ids in NDJSON
    await stream.emit("err", {"name": "KafkaError", "message": "down"})
    assert orjson.loads(await body.next()) == {"error": {"name": "KafkaError", "message": "down"}}
    await body.close()


async def test_errors_are_error_events_and_new_positions_join_the_id():
    stream = started()
    body = Body(stream)
    await body.next()
    await stream.emit("err", {"name": "PartitionsChangedError", "added": [{"topic": "t", "partition": 1, "offset": 0}]})
    await stream.emit("err", {"name": "OffsetOutOfRangeError", "topic": "t", "partition": 0, "offset": 9})
    await stream.emit("ready", ["t"])  # nothing for HTTP streams
    chunk = await body.next()
    assert chunk.count(b"event: error\ndata: ") == 2 and not stream.ending
    await stream.emit_message(("t", {}, 1, 0))
    assert b'"partition":0,"offset":9},{"topic":"t","partition":1,"offset":1}]' in await body.next()
    await body.close()


async def test_a_message_taken_before_a_lost_offset_sent_after_its_error_leaves_the_id_where_reading_went_on():
    stream = started(positions=[Position("t", 0, 50)])
    # Taken with the error record of offset 60 (retention moved the log's start to 100), reported first.
    await stream.emit("err", {"name": "OffsetOutOfRangeError", "topic": "t", "partition": 0, "offset": 100})
    await stream.emit_message(("t", {"i": 59}, 0, 59))
    await stream.emit_message(("t", {"i": 100}, 0, 100))
    await stream.disconnect()
    events = parse_events(b"".join(await Body(stream).rest()))
    assert [positions_of(e.id)[("t", 0)] for e in events if e.id] == [50, 100, 101]


async def test_a_topic_leaving_ends_the_stream_with_an_id_without_it():
    stream = started(positions=[Position("t", 0, 3), Position("u", 0, 4)])
    await stream.emit("err", {"name": "TopicNotAvailableError", "topic": "t", "message": "gone"})
    await stream.emit_message(("u", {}, 0, 4))  # nothing after the end
    body = Body(stream)
    chunks = await body.rest()
    assert chunks[-1].endswith(b'id: [{"topic":"u","partition":0,"offset":4}]\n\n')
    assert b"event: message" not in b"".join(chunks) and body.ended


async def test_a_disconnect_ends_the_body_after_what_was_sent_and_abort_drops_it():
    stream = started()
    await stream.emit_message(("t", {"i": 0}, 0, 0))
    await stream.disconnect()
    assert b'data: {"i":0}' in b"".join(await Body(stream).rest())
    dropped = started()
    await dropped.emit_message(("t", {"i": 0}, 0, 0))
    await dropped.abort()
    assert dropped.backlog() == 0
    assert b"data:" not in b"".join(await Body(dropped).rest())


async def test_a_slow_client_error_cuts_the_connection_at_once():
    class Transport:
        aborted = 0

        def buffered(self) -> int:
            return 0

        def abort(self) -> None:
            self.aborted += 1

    transport = Transport()
    stream = EventStream(ndjson=False, transport=transport)  # type: ignore[arg-type]
    stream.start_at([Position("t", 0, 0)], lambda: None)
    await stream.emit_message(("t", {"i": 0}, 0, 0))
    # Not a graceful end after the error: nothing else would cut the stalled connection.
    await stream.emit("err", {"name": "SlowClientError", "message": "read nothing", "limit": 1})
    assert transport.aborted == 1 and stream.ending and stream.backlog() == 0


async def test_progress_events_take_the_positions_only_when_the_stream_holds_nothing(settings):
    settings.KASOCKI_SSE_PROGRESS_SECONDS = 0.05
    settings.KASOCKI_SSE_HEARTBEAT_SECONDS = 0.05
    reached: list[dict[TopicPartition, int] | None] = [None]
    stream = started(positions=[Position("t", 0, 3)], progress=lambda: reached[0])
    body = Body(stream)
    await body.next()
    assert await body.next() == b": heartbeat\n\n"  # holding something: no id, only the heartbeat
    reached[0] = {TopicPartition("t", 0): 12}
    chunk = await body.next()
    while chunk == b": heartbeat\n\n":
        chunk = await body.next()
    assert chunk.startswith(b'id: [{"topic":"t","partition":0,"offset":12}]\n\n')
    await body.close()


# --- ids over a connection: the first is where the stream starts, each the position after what came before ---


@pytest.fixture
async def open_sse(log: Any, open_reader: Any, settings: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """Open HTTP streams over the fakes as sse_view does (subscribe, start), without the server."""
    settings.KASOCKI_ASSIGNMENT_CHECK_SECONDS = 0
    monkeypatch.setattr("kasocki_app.feed.WAIT_MAX_SECONDS", 60.0)
    monkeypatch.setattr("kasocki_app.tail.WAIT_MAX_SECONDS", 60.0)
    opened: list[Connection] = []

    async def open_one(subscription: list[Any]) -> EventStream:
        stream = EventStream(ndjson=False, transport=None)
        connection = Connection(f"sse-{len(opened)}", stream, open_reader, log)
        opened.append(connection)
        await sse_view._begin(connection, None, subscription, stream)
        return stream

    yield open_one
    for connection in opened:
        await connection.close()


class Events:
    """The events of a body, read as far as asked."""

    def __init__(self, body: Body) -> None:
        self.body = body
        self.data = b""

    async def until(self, condition: Callable[[list[Event]], bool]) -> list[Event]:
        while not condition(events := parse_events(self.data)):
            self.data += await self.body.next()
        return events


def through(offsets: dict[tuple[str, int], int], then_progress: bool = False) -> Callable[[list[Event]], bool]:
    """Until a message event of each partition at (or past) its offset (and an id-only event after)."""

    def reached(events: list[Event]) -> bool:
        seen = {(m["topic"], m["partition"]): m["offset"] for m in (e.json()["_kafka"] for e in events if e.data)}
        if then_progress and (not events or events[-1].data is not None):
            return False
        return all(seen.get(tp, -1) >= offset for tp, offset in offsets.items())

    return reached


async def test_the_first_id_is_where_the_stream_starts_while_records_wait_in_the_ring(log, open_sse):
    log.create_topic("t")
    await open_sse(["t"])  # puts t/0 on the live tail (with one) at offset 0
    log.produce("t", [{"i": i} for i in range(6)])
    await settle()  # the records reach the ring
    stream = await open_sse([{"topic": "t", "partition": 0, "offset": 1}])
    await settle()  # as while the server sends the response's head: the stream emits what was ready
    body = Body(stream)
    events = await Events(body).until(through({("t", 0): 5}))
    assert events[0].data is None and positions_of(events[0].id) == {("t", 0): 1}
    assert check_ids({("t", 0): 1}, events) == {("t", 0): 6}
    await body.close()


async def test_every_id_follows_the_messages_before_it_under_load(log, open_sse, settings, monkeypatch):
    settings.KASOCKI_MAX_BACKLOG_BYTES = 2_000  # pauses often: progress events fall between messages
    settings.KASOCKI_SSE_PROGRESS_SECONDS = 0.001
    settings.KASOCKI_CONSUME_BATCH_SIZE = 7
    answer = log.available_topics

    async def slowly(*args: Any, **kwargs: Any) -> dict[str, int]:
        # A look at the cluster between taking records and emitting them takes a while: the
        # body finds nothing pending then, and must not write the positions already taken.
        await asyncio.sleep(0.002)
        return await answer(*args, **kwargs)

    monkeypatch.setattr(log, "available_topics", slowly)
    log.create_topic("t", partitions=2)
    await open_sse(["t"])
    for partition in (0, 1):
        log.produce("t", [{"i": i} for i in range(50)], partition=partition)
    await settle()
    start = {("t", 0): 3, ("t", 1): 40}
    stream = await open_sse([{"topic": tp[0], "partition": tp[1], "offset": o} for tp, o in start.items()])
    await settle()
    body = Body(stream)
    read, events = Events(body), []
    for batch in range(1, 11):  # more records while the stream sends
        for partition in (0, 1):
            log.produce("t", [{"batch": batch}] * 20, partition=partition)
        # Then a progress event (the stream is idle): each batch's is checked too.
        events = await read.until(through({("t", 0): 49 + 20 * batch, ("t", 1): 49 + 20 * batch}, True))
    assert events[0].data is None and positions_of(events[0].id) == start
    assert check_ids(start, events) == {("t", 0): 250, ("t", 1): 250}
    await body.close()


async def test_finish_ends_the_body_after_an_id_at_the_position_after_what_was_sent():
    stream = started(positions=[Position("t", 0, 3), Position("t", 1, 0)])
    await stream.emit_message(("t", {"i": 3}, 0, 3))
    stream.finish()  # the server stops
    await stream.emit_message(("t", {"i": 4}, 0, 4))  # taken meanwhile: never sent, the id does not count it
    events = parse_events(b"".join(await Body(stream).rest()))
    assert [e.data is None for e in events] == [True, False, True]
    assert positions_of(events[-1].id) == {("t", 0): 4, ("t", 1): 0}


async def test_finish_takes_the_position_past_skipped_records_when_the_stream_holds_nothing():
    stream = started(positions=[Position("t", 0, 3)], progress=lambda: {TopicPartition("t", 0): 9})
    stream.finish()
    events = parse_events(b"".join(await Body(stream).rest()))
    assert [positions_of(e.id) for e in events] == [{("t", 0): 3}, {("t", 0): 9}]


async def test_finish_writes_no_id_in_ndjson_or_before_the_stream_started():
    for stream in (started(ndjson=True), EventStream(ndjson=False, transport=None)):
        stream.finish()
        assert await Body(stream).rest() == [] and stream.ending
