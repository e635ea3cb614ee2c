"""End to end: HTTP streams (/v2/stream/...) through the live server against the real broker."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import socketio
from django.test import AsyncClient
from prometheus_client import REGISTRY

from kasocki_app import sse_view
from kasocki_app.conf import conf
from kasocki_app.service import Service
from kasocki_app.tailing import TailReader
from tests.e2e import server_service, wait_until
from tests.live_server import free_port
from tests.sse_client import Event, Stream, check_ids, open_stream, positions_of

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("live_tail")]


def id_of(stream_id: str | None) -> dict[tuple[str, int], int]:
    assert stream_id is not None
    return {(e["topic"], e["partition"]): e["offset"] for e in orjson.loads(stream_id)}


async def opened(url: str, **headers: str) -> Stream:
    stream = await open_stream(url, headers)
    assert stream.status == 200, (stream.status, await stream.body())
    first = await stream.event()  # the position it starts at, right after :ok
    assert first is not None and first.data is None and stream.comments[0] == "ok", first
    return stream


async def test_latest_messages_stream_with_the_next_offset_of_every_partition(kafka, make_topic, allow, asgi_server):
    topic = make_topic(partitions=2)
    allow(topic)
    kafka.produce(topic, [{"old": True}], partition=0)
    stream = await open_stream(f"{asgi_server.url}/v2/stream/{topic}")
    assert stream.status == 200, await stream.body()
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["cache-control"] == "no-cache"
    assert stream.headers["x-accel-buffering"] == "no"
    start = await stream.event()
    assert stream.comments == ["ok"]
    assert start is not None and start.data is None
    assert id_of(start.id) == {(topic, 0): 1, (topic, 1): 0}  # concrete offsets, never -1
    kafka.produce(topic, [{"i": 0}, {"i": 1}], partition=1)
    kafka.produce(topic, [{"i": 2}], partition=0)
    events = [await stream.event() for _ in range(3)]
    ids = [id_of(start.id)]
    for event in events:
        assert event is not None and event.event == "message"
        where = event.json()["_kafka"]
        ids.append(id_of(event.id))
        # The id names every partition, with the next offset after this message in its own.
        assert ids[-1][(topic, where["partition"])] == where["offset"] + 1
        assert all(ids[-1][tp] >= ids[-2][tp] for tp in ids[-2])
    assert ids[-1] == {(topic, 0): 2, (topic, 1): 2}
    assert sorted(e.json()["i"] for e in events if e is not None) == [0, 1, 2]
    await stream.close()


async def test_last_event_id_resumes_exactly_and_replaces_the_urls_topics(kafka, make_topic, allow, asgi_server):
    topic, other = make_topic(partitions=2), make_topic()
    allow(topic, other)
    kafka.produce(topic, [{"i": i} for i in range(6)], partition=0)
    kafka.produce(topic, [{"i": i} for i in range(6, 9)], partition=1)
    stream = await opened(f"{asgi_server.url}/v2/stream/{topic}")
    kafka.produce(topic, [{"i": 9}], partition=0)
    await stream.messages(1)
    await stream.close()
    last = stream.last_event_id
    assert id_of(last) == {(topic, 0): 7, (topic, 1): 3}
    kafka.produce(topic, [{"i": 10}], partition=1)
    resumed = await opened(f"{asgi_server.url}/v2/stream/{other}", **{"Last-Event-ID": last})
    assert (await resumed.messages(1))[0]["i"] == 10
    await resumed.close()
    # Earlier positions, by offset and by timestamp.
    earlier = orjson.dumps(
        [{"topic": topic, "partition": 0, "offset": 4}, {"topic": topic, "partition": 1, "timestamp": 0}]
    ).decode()
    again = await opened(f"{asgi_server.url}/v2/stream/{topic}", **{"Last-Event-ID": earlier})
    got = sorted(m["i"] for m in await again.messages(6))
    assert got == [4, 5, 6, 7, 8, 9] or got == [4, 5, 6, 7, 8, 10], got
    await again.close()


async def test_every_id_follows_the_messages_before_it_when_resuming_in_the_ring(
    kafka, make_topic, allow, asgi_server, live_tail
):
    """The first id is where the stream starts though the ring's records go out before the body begins."""
    topic = make_topic(partitions=2)
    allow(topic)
    keeper = await opened(f"{asgi_server.url}/v2/stream/{topic}")  # the live tail reads the topic from here
    for partition in (0, 1):
        kafka.produce(topic, [{"i": i} for i in range(6)], partition=partition)
    await keeper.messages(12)  # in the ring (with the live tail) when the next stream starts
    await keeper.close()
    start = {(topic, 0): 1, (topic, 1): 4}
    last = orjson.dumps([{"topic": t, "partition": p, "offset": o} for (t, p), o in start.items()]).decode()
    stream = await open_stream(f"{asgi_server.url}/v2/stream/{topic}", {"Last-Event-ID": last})
    assert stream.status == 200

    def more() -> None:  # records keep coming while the stream sends
        for batch in range(5):
            for partition in (0, 1):
                kafka.produce(topic, [{"batch": batch}] * 100, partition=partition)

    producing = asyncio.ensure_future(asyncio.to_thread(more))
    events: list[Event] = []
    seen: dict[tuple[str, int], int] = {}
    while any(seen.get((topic, p), -1) < 505 for p in (0, 1)):
        event = await stream.event()
        assert event is not None
        events.append(event)
        if event.data is not None:
            where = event.json()["_kafka"]
            seen[(topic, where["partition"])] = where["offset"]
    await producing
    await stream.close()
    assert events[0].data is None and positions_of(events[0].id) == start
    assert check_ids(start, events) == {(topic, 0): 506, (topic, 1): 506}


async def test_since_starts_every_partition_at_a_time(kafka, make_topic, allow, asgi_server):
    topic = make_topic(partitions=2)
    allow(topic)
    # Recent: records older than the topic's retention (7 days) may be deleted while the test runs.
    base = int(time.time() * 1000) - 600_000
    kafka.produce(topic, [{"i": 0}], partition=0, timestamp=base)
    kafka.produce(topic, [{"i": 1}], partition=0, timestamp=base + 2000)
    kafka.produce(topic, [{"i": 2}], partition=1, timestamp=base + 3000)
    iso = datetime.fromtimestamp((base + 1000) / 1000, UTC).isoformat()
    # The offset's "+" as pasted into the URL, unencoded: the server reads it as a space.
    for since in (str(base + 1000), quote(iso.replace("+00:00", "Z")), iso):
        stream = await opened(f"{asgi_server.url}/v2/stream/{topic}?since={since}")
        assert sorted(m["i"] for m in await stream.messages(2)) == [1, 2]
        await stream.close()


async def test_filter_skips_records_and_progress_events_carry_the_position(
    kafka, make_topic, allow, asgi_server, settings
):
    settings.KASOCKI_SSE_PROGRESS_SECONDS = 0.3
    topic = make_topic()
    allow(topic)
    wanted = quote(orjson.dumps({"kind": "edit"}).decode())
    stream = await opened(f"{asgi_server.url}/v2/stream/{topic}?filter={wanted}")
    kafka.produce(topic, [{"kind": "log"}] * 5 + [{"kind": "edit", "i": 1}] + [{"kind": "log"}] * 4)
    (message,) = await stream.messages(1)
    assert message["i"] == 1 and message["_kafka"]["offset"] == 5
    # The skipped records after it move the position on without a message.
    deadline = time.monotonic() + 10
    while id_of(stream.last_event_id)[(topic, 0)] != 10:
        assert time.monotonic() < deadline, stream.last_event_id
        event = await stream.event()
        assert event is not None and event.data is None, event
    await stream.close()
    resumed = await opened(f"{asgi_server.url}/v2/stream/{topic}", **{"Last-Event-ID": stream.last_event_id})
    kafka.produce(topic, [{"kind": "edit", "i": 2}])
    assert [m["i"] for m in await resumed.messages(1)] == [2]
    await resumed.close()


async def test_heartbeat_comments_keep_an_idle_stream_alive(make_topic, allow, asgi_server, settings):
    settings.KASOCKI_SSE_HEARTBEAT_SECONDS = 0.2
    settings.KASOCKI_SSE_PROGRESS_SECONDS = 0.2
    topic = make_topic()
    allow(topic)
    stream = await opened(f"{asgi_server.url}/v2/stream/{topic}")
    start = stream.last_event_id
    progress = await stream.event(timeout=5)
    assert progress is not None and progress.data is None and progress.id == start  # nothing came: same position
    while "heartbeat" not in stream.comments + progress.comments:
        progress = await stream.event(timeout=5)
        assert progress is not None
    await stream.close()


async def test_ndjson_when_json_is_accepted(kafka, make_topic, allow, asgi_server):
    topic = make_topic()
    allow(topic)
    stream = await open_stream(f"{asgi_server.url}/v2/stream/{topic}", {"Accept": "application/json"})
    assert stream.status == 200
    assert stream.headers["content-type"] == "application/json; charset=utf-8"
    await wait_until(lambda: any(c.transport == "sse" for c in server_service().connections.values()))
    await wait_until(lambda: all(c.stream.streaming for c in server_service().connections.values()))
    kafka.produce(topic, [{"i": 0}, {"i": 1}])
    lines = [await stream.line(), await stream.line()]
    assert [orjson.loads(line)["i"] for line in lines if line] == [0, 1]
    await stream.close()


BAD_POSITION, NO_TOPIC, NO_PARTITION = "InvalidAssignmentError", "TopicNotAvailableError", "PartitionNotAvailableError"


@pytest.mark.parametrize(
    ("path", "headers", "status", "name"),
    [
        ("{topic}?since=yesterday", {}, 400, "InvalidArgumentError"),
        ("{topic}?since=-5", {}, 400, "InvalidArgumentError"),
        ("{topic}?filter=%7Bnot-json", {}, 400, "InvalidFilterError"),
        ("{topic}?filter=%5B1%5D", {}, 400, "InvalidFilterError"),
        ("{topic}", {"Last-Event-ID": "not json"}, 400, "InvalidAssignmentError"),
        ("{topic}", {"Last-Event-ID": '[{"topic": "{topic}", "partition": 0}]'}, 400, "InvalidAssignmentError"),
        ("{topic}", {"Last-Event-ID": '[{"topic": "{topic}", "partition": 0, "offset": -3}]'}, 400, BAD_POSITION),
        ("{topic},", {}, 400, "InvalidAssignmentError"),
        ("no-such-topic", {}, 404, "TopicNotAvailableError"),
        ("{topic}", {"Last-Event-ID": '[{"topic": "forbidden", "partition": 0, "offset": 0}]'}, 404, NO_TOPIC),
        ("{topic}", {"Last-Event-ID": '[{"topic": "{topic}", "partition": 7, "offset": 0}]'}, 404, NO_PARTITION),
    ],
)
async def test_refusals_before_streaming_are_http_statuses_with_the_error_object(
    make_topic, allow, asgi_server, path, headers, status, name
):
    topic = make_topic()
    allow(topic)
    headers = {k: v.replace("{topic}", topic) for k, v in headers.items()}
    stream = await open_stream(f"{asgi_server.url}/v2/stream/{path.replace('{topic}', topic)}", headers)
    assert stream.status == status
    assert stream.headers["content-type"] == "application/json"
    error = await stream.json()
    assert error["name"] == name and error["origin"] == "Kasocki" and error["message"], error
    await stream.close()
    await wait_until(lambda: not server_service().connections, what="nothing left open")
    assert server_service().limiter.total == 0


async def test_connection_limits_are_shared_with_socketio(make_topic, allow, asgi_server, connect, settings):
    settings.KASOCKI_MAX_CONNECTIONS_PER_IP = 2
    topic = make_topic()
    allow(topic)
    client = await connect()
    assert await client.next("ready") == [topic]
    stream = await opened(f"{asgi_server.url}/v2/stream/{topic}")
    refused = await open_stream(f"{asgi_server.url}/v2/stream/{topic}")
    assert refused.status == 429 and refused.headers["retry-after"]
    assert (await refused.json())["name"] == "TooManyConnectionsError"
    await refused.close()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await connect()  # the socket.io side counts the stream too
    await stream.close()
    await wait_until(lambda: server_service().limiter.total == 1, what="the stream released")
    again = await opened(f"{asgi_server.url}/v2/stream/{topic}")
    await again.close()


async def test_a_topic_leaving_the_whitelist_ends_the_stream_after_its_error(
    kafka, make_topic, allow, asgi_server, settings
):
    topic, other = make_topic(), make_topic()
    allow(topic, other)
    stream = await opened(f"{asgi_server.url}/v2/stream/{topic},{other}")
    kafka.produce(topic, [{"i": 0}])
    await stream.messages(1)
    settings.KASOCKI_ALLOWED_TOPICS = [other]
    error: Any = None
    while True:
        event = await stream.event(timeout=15)
        if event is None:
            break
        if event.event == "error":
            error = event.json()
        elif event.data is not None:
            assert error is None, "a message after the error"
    assert error["name"] == "TopicNotAvailableError" and error["topic"] == topic
    assert id_of(stream.last_event_id) == {(other, 0): 0}  # a reconnect resumes the topic still allowed
    await stream.close()
    await wait_until(lambda: not server_service().connections, what="the stream's connection closed")


async def test_kafka_unreachable_is_503_with_retry_after(make_topic, allow, asgi_server, settings):
    topic = make_topic()
    allow(topic)
    settings.KASOCKI_KAFKA_CONFIG = {"bootstrap.servers": f"127.0.0.1:{free_port()}"}  # nothing listens there
    settings.KASOCKI_KAFKA_TIMEOUT = 2.0
    refused = await open_stream(f"{asgi_server.url}/v2/stream/{topic}")
    assert refused.status == 503 and refused.headers["retry-after"] == "5"
    error = await refused.json()
    assert error["name"] == "KafkaError" and error["code"], error
    await refused.close()
    await wait_until(lambda: not server_service().connections, what="nothing left open")


async def test_an_unexpected_failure_is_500_with_an_error_object(make_topic, allow, asgi_server, monkeypatch):
    topic = make_topic()
    allow(topic)

    async def broken(*args: Any) -> Any:
        raise RuntimeError("the database is gone")

    monkeypatch.setattr(sse_view, "principal_for", broken)
    refused = await open_stream(f"{asgi_server.url}/v2/stream/{topic}")
    assert refused.status == 500
    assert (await refused.json())["name"] == "InternalError"
    await refused.close()
    assert server_service().limiter.total == 0


async def test_streams_show_with_their_transport(make_topic, allow, asgi_server):
    topic = make_topic()
    allow(topic)
    stream = await opened(f"{asgi_server.url}/v2/stream/{topic}")
    (connection,) = server_service().connections.values()
    assert connection.transport == "sse" and connection.assignments is not None
    metrics = await open_stream(f"{asgi_server.url}/metrics")
    text = (await metrics.body()).decode()
    await metrics.close()
    assert 'kasocki_connections_by_transport{transport="sse"} 1.0' in text
    await stream.close()
    await wait_until(lambda: not server_service().connections, what="the stream's connection closed")
    assert conf.sse_progress_seconds > 0


async def test_open_streams_hold_no_thread_each(make_topic, allow, asgi_server, live_tail):
    """Served by the ASGI wrapper, not Django's handler, which keeps a thread per request while it responds."""
    if not live_tail:
        pytest.skip("without the live tail every stream has a consumer, and its threads")
    topic = make_topic()
    allow(topic)
    before = threading.active_count()
    streams = [await opened(f"{asgi_server.url}/v2/stream/{topic}") for _ in range(10)]
    assert threading.active_count() - before < 5
    for stream in streams:
        await stream.close()
    await wait_until(lambda: not server_service().connections, what="every stream closed")


async def test_the_django_view_serves_streams_without_the_asgi_wrapper(kafka, make_topic, allow, monkeypatch):
    """A site that mounts the app's URLs under Django's own ASGI handler still gets streams."""
    topic = make_topic()
    allow(topic)
    own = Service()
    monkeypatch.setattr(sse_view, "process_service", lambda: own)
    client = AsyncClient()
    try:
        refused = await client.get("/v2/stream/no-such-topic")
        assert refused.status_code == 404 and refused.json()["name"] == "TopicNotAvailableError"
        response = await client.get(f"/v2/stream/{topic}", headers={"Accept": "application/json"})
        assert response.status_code == 200 and response["Content-Type"] == "application/json; charset=utf-8"
        (own_connection,) = own.connections.values()
        assert own_connection.transport == "sse"
        body = aiter(response.streaming_content)
        kafka.produce(topic, [{"i": 0}])
        line = await asyncio.wait_for(anext(body), 15)
        assert orjson.loads(line)["i"] == 0
        await body.aclose()  # type: ignore[attr-defined]
        # Django's wrappers of the body let it go, as when its client leaves: once the response is
        # dropped, the event loop closes the abandoned generator, and the connection with it.
        del response, body
        gc.collect()
        await wait_until(lambda: own_connection.closed and not own.connections, what="the stream closed")
    finally:
        await own.shutdown()


async def test_streams_on_the_live_tail_share_each_records_work(kafka, make_topic, allow, asgi_server, live_tail):
    if not live_tail:
        pytest.skip("without the live tail every stream reads and encodes on its own")
    topic = make_topic()
    allow(topic)
    wanted = quote(orjson.dumps({"keep": True}).decode())
    streams = [await opened(f"{asgi_server.url}/v2/stream/{topic}?filter={wanted}") for _ in range(5)]
    readers = [c.feed.reader for c in server_service().connections.values()]
    assert all(isinstance(r, TailReader) and not r.catching_up for r in readers)

    def sample(name: str) -> float:
        return REGISTRY.get_sample_value(name) or 0.0

    encodes, evaluations = sample("kasocki_message_encodes_total"), sample("kasocki_filter_evaluations_total")
    kafka.produce(topic, [{"i": i, "keep": i % 2 == 0} for i in range(20)])
    for stream in streams:
        assert [m["i"] for m in await stream.messages(10)] == list(range(0, 20, 2))
    # Each record judged once by the one distinct filter, each passing one encoded once, for all five streams.
    assert sample("kasocki_filter_evaluations_total") - evaluations == 20
    assert sample("kasocki_message_encodes_total") - encodes == 10
    for stream in streams:
        await stream.close()
