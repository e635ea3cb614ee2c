"""kasocki_app.client against the live server: calls, errors, streaming, flow control and resume.

The resume tests lose the connection under the client without a socket.io disconnect,
so that python-socketio reconnects by itself and the server sees a brand-new connection;
then every kept offset must have arrived exactly once, in order per partition.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest
from confluent_kafka.admin import NewPartitions
from django.contrib.auth.models import User
from django.test import Client

from kasocki_app.client import KasockiClient, KasockiClientError
from kasocki_app.models import WhitelistedTopic
from tests.e2e import server_service, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

WAIT = 20  # seconds any single step may take
FAST_RECONNECT = {"reconnection_delay": 0.05, "reconnection_delay_max": 0.2, "randomization_factor": 0}

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout: float = WAIT) -> T:
    return await asyncio.wait_for(awaitable, timeout)


async def lose_connection(client: KasockiClient) -> None:
    """Close the websocket under socket.io: a transport error for python-socketio, which reconnects."""
    await within(client.sio.eio.ws.close())


def offsets_of(messages: list[dict[str, Any]]) -> list[int]:
    return [m["_kafka"]["offset"] for m in messages]


def where(assignment: dict[str, Any]) -> tuple[str, int, int]:
    return assignment["topic"], assignment["partition"], assignment["offset"]


@pytest.fixture
async def open_client(asgi_server) -> AsyncIterator[Callable[..., Awaitable[KasockiClient]]]:
    """Connected KasockiClients over websocket (closed after the test)."""
    clients: list[KasockiClient] = []

    async def open_one(**options: Any) -> KasockiClient:
        client = KasockiClient(asgi_server.url, **{"transports": ["websocket"], **options})
        clients.append(client)
        await within(client.connect())
        return client

    yield open_one
    for client in clients:
        await within(client.close())


@pytest.fixture
def topic(kafka, make_topic, allow) -> str:
    name = make_topic()
    allow(name)
    return name


@pytest.mark.parametrize("transports", [["websocket"], None], ids=["websocket", "polling-then-upgrade"])
async def test_connect_lists_topics_and_consume_reads_in_order(kafka, topic, open_client, transports):
    kafka.produce(topic, [{"i": i} for i in range(3)], key="k")
    client = await open_client(transports=transports)
    assert topic in client.topics
    assert client.positions() is None
    assert await within(client.subscribe([{"topic": topic, "partition": 0, "offset": 0}])) == [
        {"topic": topic, "partition": 0, "offset": 0}
    ]
    messages = [await within(client.consume()) for _ in range(3)]
    assert [m["i"] for m in messages] == offsets_of(messages) == [0, 1, 2]
    assert all(m["_kafka"]["key"] == "k" for m in messages)
    assert client.positions() == [{"topic": topic, "partition": 0, "offset": 3}]


async def test_start_streams_filtered_messages_and_stop_hands_over_to_consume(kafka, topic, open_client):
    kafka.produce(topic, [{"i": i, "kind": "keep" if i % 2 else "skip"} for i in range(20)])
    client = await open_client()
    await within(client.subscribe({"topic": topic, "partition": 0, "offset": 0}))
    assert await within(client.filter({"kind": "keep"})) == {"kind": "keep"}
    await within(client.start())
    stream = client.messages()
    streamed = [await within(anext(stream)) for _ in range(10)]
    await within(client.stop())
    assert offsets_of(streamed) == list(range(1, 20, 2))
    assert client.buffered == 0  # the ten kept messages, all read
    kafka.produce(topic, [{"i": 20, "kind": "skip"}, {"i": 21, "kind": "keep"}])
    assert offsets_of([await within(client.consume())]) == [21]
    assert await within(client.filter(None)) is None


async def test_batches_are_flattened_into_messages(kafka, topic, open_client):
    kafka.produce(topic, [{"i": i} for i in range(25)])
    client = await open_client()
    batches: list[int] = []
    singles: list[Any] = []
    client.on("messages", lambda batch: batches.append(len(batch)))
    client.on("message", singles.append)
    await within(client.subscribe({"topic": topic, "partition": 0, "offset": 0}))
    await within(client.start(batch=4))
    stream = client.messages()
    assert offsets_of([await within(anext(stream)) for _ in range(25)]) == list(range(25))
    assert sum(batches) == 25 and max(batches) <= 4 and singles == []


async def test_failed_calls_raise_the_servers_error_and_reach_on_error(topic, open_client):
    client = await open_client()
    reported: list[KasockiClientError] = []
    client.on_error(reported.append)
    expected = []

    async def fails(call: Awaitable[Any], name: str) -> KasockiClientError:
        with pytest.raises(KasockiClientError) as caught:
            await within(call)
        assert caught.value.name == name and caught.value.origin == "Kasocki"
        expected.append(name)
        return caught.value

    await fails(client.consume(), "NotSubscribedError")
    missing = await fails(client.subscribe("no-such-topic"), "TopicNotAvailableError")
    assert missing.event == "subscribe" and topic in missing.details["availableTopics"]
    bad_filter = await fails(client.filter({"a": "/(?=x)/"}), "InvalidFilterError")
    assert "RE2" in bad_filter.message
    await within(client.subscribe(topic))
    await fails(client.subscribe(topic), "AlreadySubscribedError")
    assert (await fails(client.start(batch=0), "InvalidArgumentError")).details == {"limit": 1000}
    # Each error is also an `err` event; it arrives before the call's answer.
    assert [error.name for error in reported] == expected


@pytest.mark.parametrize(
    ("setting", "value", "connect_options", "name", "origin"),
    [
        (
            "KASOCKI_TOKEN_AUTHENTICATOR",
            "tests.auth.token_user",
            {"auth": {"token": "x"}},
            "AuthenticationFailedError",
            "Kasocki",
        ),
        (
            "KASOCKI_ALLOWED_ORIGINS",
            ["https://app.example"],
            {"headers": {"Origin": "https://evil.example"}},
            "ConnectionError",
            "KasockiClient",
        ),
    ],
    ids=["refused-by-kasocki", "refused-by-engine-io"],
)
async def test_refused_connection_raises(asgi_server, settings, setting, value, connect_options, name, origin):
    setattr(settings, setting, value)
    client = KasockiClient(asgi_server.url, transports=["websocket"], **connect_options)
    with pytest.raises(KasockiClientError) as caught:
        await within(client.connect())
    assert caught.value.name == name and caught.value.origin == origin and caught.value.event == "connect"
    assert caught.value.message
    await within(client.close())


async def test_a_consume_given_up_by_its_caller_hands_its_message_to_the_next(kafka, topic, open_client):
    client = await open_client()
    await within(client.subscribe({"topic": topic, "partition": 0, "offset": 0}))
    with pytest.raises(TimeoutError):  # the topic is empty: this consume waits on the server
        await asyncio.wait_for(client.consume(), 0.2)
    assert client.unanswered == 1
    kafka.produce(topic, [{"i": 0}])
    await wait_until(lambda: client.unanswered == 0, what="the abandoned consume answered")
    # Its message is kept for the next consume, not lost.
    assert offsets_of([await within(client.consume())]) == [0]
    assert client.positions() == [{"topic": topic, "partition": 0, "offset": 1}]


async def test_close_fails_waiting_calls_and_ends_the_message_iterator(topic, open_client):
    client = await open_client()
    await within(client.subscribe(topic))
    waiting = asyncio.ensure_future(client.consume())
    await wait_until(lambda: client.unanswered == 1, what="the consume sent")
    await within(client.close())
    with pytest.raises(KasockiClientError, match="ClosedError"):
        await within(waiting)
    with pytest.raises(StopAsyncIteration):
        await within(anext(client.messages()))
    with pytest.raises(KasockiClientError, match="ClosedError"):
        await within(client.stop())


class Production:
    """Numbered messages for a 2-partition topic; every fourth is filtered out by the reader."""

    def __init__(self, kafka: Any, topic: str) -> None:
        self.kafka = kafka
        self.topic = topic
        self.count = 0
        self.expected: list[tuple[int, int]] = []  # (partition, offset) the reader must get

    def produce(self, partition: int, count: int, *, last: bool = False, expected: bool = True) -> int:
        values = []
        for i in range(count):
            end = last and i == count - 1
            values.append({"n": self.count, "kind": "skip" if self.count % 4 == 3 and not end else "keep", "end": end})
            self.count += 1
        written = self.kafka.produce(self.topic, values, partition=partition)
        kept = [where for where, value in zip(written, values, strict=True) if value["kind"] == "keep"]
        if expected:
            self.expected += kept
        return len(kept)


@pytest.mark.parametrize("mode", ["message", "batch", "consume"])
async def test_resume_after_a_lost_connection_loses_and_repeats_nothing(kafka, make_topic, allow, asgi_server, mode):
    topic = make_topic(partitions=2)
    allow(topic)
    production = Production(kafka, topic)
    production.produce(1, 5, expected=False)  # before subscribing at "latest": never delivered
    kept_before = production.produce(0, 60)
    client = KasockiClient(asgi_server.url, transports=["websocket"], **FAST_RECONNECT)
    sids: list[str | None] = []
    known_to_server: list[bool] = []
    arrivals: dict[tuple[int, int], int] = {}  # (partition, offset) -> connection (1, 2) it came on
    reasons: list[Any] = []
    resumes: list[dict[str, Any]] = []
    errors: list[KasockiClientError] = []

    def arrived(message: dict[str, Any]) -> None:
        arrivals[(message["_kafka"]["partition"], message["_kafka"]["offset"])] = len(sids)

    def while_disconnected(reason: Any) -> None:
        reasons.append(reason)
        if len(reasons) == 1:
            # Produced inside the callback, which blocks the loop: no reconnect can come first.
            production.produce(0, 30)
            production.produce(1, 10)

    def ready(_topics: list[str]) -> None:
        sids.append(client.sio.get_sid())
        known_to_server.append(server_service().get(sids[-1]) is not None)

    client.on("ready", ready)
    client.on("message", arrived)
    client.on("messages", lambda batch: [arrived(m) for m in batch])
    client.on("disconnect", while_disconnected)
    client.on("resumed", resumes.append)
    client.on_error(errors.append)
    received: list[dict[str, Any]] = []

    def take(message: dict[str, Any]) -> None:
        received.append(message)
        arrivals.setdefault((message["_kafka"]["partition"], message["_kafka"]["offset"]), len(sids))

    try:
        await within(client.connect())
        assert await within(
            client.subscribe([{"topic": topic, "partition": 0, "offset": 0}, {"topic": topic, "partition": 1}])
        ) == [
            {"topic": topic, "partition": 0, "offset": 0},
            {"topic": topic, "partition": 1, "offset": 5},
        ]
        await within(client.filter({"kind": "keep"}))
        if mode == "consume":
            while len(received) < kept_before:
                take(await within(client.consume()))
            # Nothing more is available: this consume waits on the server when the connection goes.
            waiting = asyncio.ensure_future(client.consume())
            await wait_until(lambda: client.unanswered == 1, what="the consume sent")
            await lose_connection(client)
            take(await within(waiting))
        else:
            await within(client.start(batch=7 if mode == "batch" else None))
            stream = client.messages()
            while len(received) < 20:
                take(await within(anext(stream)))
            await lose_connection(client)
        await wait_until(lambda: len(resumes) == 1, timeout=WAIT, what="the resume")
        production.produce(0, 20, last=True)
        production.produce(1, 10, last=True)
        ends: set[int] = set()
        while len(ends) < 2:
            message = await within(client.consume() if mode == "consume" else anext(stream))
            take(message)
            if message["end"]:
                ends.add(message["_kafka"]["partition"])
        if mode != "consume":
            await within(client.stop())
        final_positions = client.positions()
        await wait_until(lambda: server_service().get(sids[0]) is None, what="the first connection closed")
    finally:
        await within(client.close())

    positions = [(m["_kafka"]["partition"], m["_kafka"]["offset"]) for m in received]
    assert [p for p, n in Counter(positions).items() if n > 1] == [], "received more than once"
    assert sorted(positions) == sorted(production.expected)
    for partition in (0, 1):
        mine = [offset for p, offset in positions if p == partition]
        assert mine == sorted(mine), f"partition {partition} out of order"
    assert all(m["kind"] == "keep" for m in received)
    # The connection really went mid-read: both connections delivered, the server saw two sids.
    assert set(arrivals.values()) == {1, 2}
    assert len(set(sids)) == 2 and None not in sids and known_to_server == [True, True]
    assert reasons[0] == "transport error"
    first = [where for where, connection in arrivals.items() if connection == 1]
    assert not any(partition == 1 for partition, _ in first)
    [resume] = resumes
    assert resume["positions"] == [
        {"topic": topic, "partition": 0, "offset": max(offset for _, offset in first) + 1},
        {"topic": topic, "partition": 1, "offset": 5},  # nothing came from it: the first answer's offset
    ]
    assert resume["assignments"] == resume["positions"]
    assert resume["filter"] == {"kind": "keep"}
    assert resume["started"] is (mode != "consume")
    assert errors == []
    assert final_positions == [
        {"topic": topic, "partition": p, "offset": max(o for q, o in production.expected if q == p) + 1} for p in (0, 1)
    ]


async def test_resume_follows_new_partitions_and_drops_topics_gone(kafka, make_topic, allow, asgi_server, settings):
    grows, goes = make_topic(), make_topic()
    allow(grows, goes)
    client = KasockiClient(asgi_server.url, transports=["websocket"], **FAST_RECONNECT)
    errors: list[KasockiClientError] = []
    resumes: list[dict[str, Any]] = []
    client.on_error(errors.append)
    client.on("resumed", resumes.append)

    def while_disconnected(_reason: Any) -> None:
        if not resumes:
            settings.KASOCKI_ALLOWED_TOPICS = [grows]  # `goes` may no longer be read
            kafka.produce(grows, [{"i": 1}], partition=0)
            kafka.produce(grows, [{"i": 2}], partition=1)

    client.on("disconnect", while_disconnected)
    try:
        await within(client.connect())
        await within(client.subscribe([grows, {"topic": goes, "partition": 0, "offset": 0}]))
        await within(client.start())
        stream = client.messages()
        kafka.produce(goes, [{"i": 0}])
        assert (await within(anext(stream)))["_kafka"]["topic"] == goes
        kafka.admin.create_partitions([NewPartitions(grows, 2)])[grows].result(30)
        kafka.wait_for_topic(grows, 2)
        kafka.produce(grows, [{"i": 0}], partition=1)
        assert where((await within(anext(stream)))["_kafka"]) == (grows, 1, 0)
        await wait_until(lambda: any(e.name == "PartitionsChangedError" for e in errors), what="the new partition")
        await lose_connection(client)
        await wait_until(lambda: len(resumes) == 1, timeout=WAIT, what="the resume")
        later = [await within(anext(stream)) for _ in range(2)]
        await within(client.stop())
    finally:
        await within(client.close())
    [resume] = resumes
    assert sorted(map(where, resume["positions"])) == sorted([(grows, 0, 0), (grows, 1, 1), (goes, 0, 1)])
    assert sorted(map(where, resume["assignments"])) == [(grows, 0, 0), (grows, 1, 1)]
    assert sorted(m["i"] for m in later) == [1, 2]
    # The server's answer to the first resume subscribe is an `err` too; the resume itself went on.
    assert [e.name for e in errors] == ["PartitionsChangedError", "TopicNotAvailableError"]


async def test_a_topic_gone_while_reading_is_left_out_of_the_resume(kafka, make_topic, allow, open_client, settings):
    stays, goes = make_topic(), make_topic()
    allow(stays, goes)
    client = await open_client(**FAST_RECONNECT)
    errors: list[KasockiClientError] = []
    resumes: list[dict[str, Any]] = []
    client.on_error(errors.append)
    client.on("resumed", resumes.append)
    await within(client.subscribe([{"topic": t, "partition": 0, "offset": 0} for t in (stays, goes)]))
    await within(client.start())
    settings.KASOCKI_ALLOWED_TOPICS = [stays]
    await wait_until(lambda: [e.name for e in errors] == ["TopicNotAvailableError"], what="the topic reported gone")
    assert errors[0].details["topic"] == goes
    assert client.positions() == [{"topic": stays, "partition": 0, "offset": 0}]
    await lose_connection(client)
    await wait_until(lambda: len(resumes) == 1, what="the resume")
    assert resumes[0]["assignments"] == [{"topic": stays, "partition": 0, "offset": 0}]
    kafka.produce(stays, [{"i": 0}])
    assert offsets_of([await within(anext(client.messages()))]) == [0]
    assert len(errors) == 1


async def test_a_reader_that_falls_behind_stops_reading_is_dropped_and_resumes(
    kafka, topic, asgi_server, open_client, settings
):
    settings.KASOCKI_MAX_BACKLOG_BYTES = 64 * 1024
    settings.KASOCKI_SLOW_CLIENT_TIMEOUT = 1.0
    client = await open_client(buffer=50, **FAST_RECONNECT)
    resumes: list[dict[str, Any]] = []
    client.on("resumed", resumes.append)
    await within(client.subscribe({"topic": topic, "partition": 0, "offset": 0}))
    first = client.sio.get_sid()
    connection = server_service().get(first)
    await within(client.start())
    # Nobody reads messages(): the buffer fills and the client stops reading its connection.
    # Produce until the socket buffers are full too: the server's backlog passes the cap, the
    # stream pauses, and the stalled connection is dropped.
    produced = 0
    while not connection.closed:
        assert produced < 40_000, "the server never dropped the stalled reader"
        kafka.produce(topic, [{"i": produced + i, "pad": "x" * 1000} for i in range(2000)])
        produced += 2000
        await wait_until(lambda n=produced: connection.closed or connection.delivered >= n, what="stream or drop")
    assert client.buffered == 50
    stream = client.messages()
    assert offsets_of([await within(anext(stream)) for _ in range(produced)]) == list(range(produced))
    assert len(resumes) == 1 and resumes[0]["started"] is True
    assert client.sio.get_sid() not in (None, first)


async def test_a_session_cookie_survives_the_reconnect(kafka, make_topic, asgi_server, open_client):
    topic = make_topic()
    await WhitelistedTopic.objects.acreate(topic=topic, access="authenticated")
    user = await User.objects.acreate_user("reader", password="x")
    browser = Client()
    await asyncio.to_thread(browser.force_login, user)
    client = await open_client(headers={"Cookie": f"sessionid={browser.cookies['sessionid'].value}"}, **FAST_RECONNECT)
    errors: list[KasockiClientError] = []
    resumes: list[dict[str, Any]] = []
    client.on_error(errors.append)
    client.on("resumed", resumes.append)
    await within(client.subscribe({"topic": topic, "partition": 0, "offset": 0}))
    kafka.produce(topic, [{"i": 0}])
    assert offsets_of([await within(client.consume())]) == [0]
    await lose_connection(client)
    await wait_until(lambda: len(resumes) == 1, what="the resume")
    assert errors == [] and resumes[0]["assignments"] == [{"topic": topic, "partition": 0, "offset": 1}]
    kafka.produce(topic, [{"i": 1}])
    assert offsets_of([await within(client.consume())]) == [1]


async def test_connect_again_resumes_after_the_server_disconnected(kafka, topic, open_client, settings):
    settings.KASOCKI_IDLE_TIMEOUT = 1.0
    kafka.produce(topic, [{"i": i} for i in range(3)])
    client = await open_client(**FAST_RECONNECT)
    errors: list[KasockiClientError] = []
    reasons: list[Any] = []
    disconnected = asyncio.Event()
    client.on_error(errors.append)
    client.on("disconnect", lambda reason: (reasons.append(reason), disconnected.set()))
    await within(client.subscribe({"topic": topic, "partition": 0, "offset": 0}))
    assert offsets_of([await within(client.consume())]) == [0]
    # Idle: the server disconnects with a socket.io disconnect, which python-socketio does not follow.
    await within(disconnected.wait())
    assert reasons == ["server disconnect"] and [error.name for error in errors] == ["IdleTimeoutError"]
    await within(client.connect())  # at once, while python-socketio is still closing the old connection
    assert offsets_of([await within(client.consume()) for _ in range(2)]) == [1, 2]
