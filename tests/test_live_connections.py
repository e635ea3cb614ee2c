"""End to end: the admin's live connections, published by the server process, and its disconnect action."""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from asgiref.sync import sync_to_async
from django.contrib.admin import helpers
from django.db import connections
from django.utils import timezone

from kasocki_app import registry
from kasocki_app.models import DisconnectRequest, LiveConnection, LiveProcess
from tests.e2e import server_service, wait_until
from tests.sse_client import open_stream

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/kasocki_app/liveconnection/"
T = TypeVar("T")


@pytest.fixture(autouse=True)
def fast_registry(settings: Any) -> None:
    settings.KASOCKI_REGISTRY_SECONDS = 0.2


@pytest.fixture(autouse=True)
async def close_connections() -> AsyncIterator[None]:
    """Close the database connection of the thread the async ORM and the admin client used here."""
    yield
    await sync_to_async(connections.close_all)()


async def eventually(query: Callable[[], Awaitable[T]], what: str, timeout: float = 10) -> T:
    """Await ``query`` until its result is truthy: the registry writes from the server's own thread."""
    deadline = time.monotonic() + timeout
    while not (result := await query()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
    return result


async def row_of(sid: str) -> LiveConnection | None:
    return await LiveConnection.objects.filter(sid=sid).afirst()


async def changelist(admin_client: Any, **params: str) -> str:
    response = await sync_to_async(admin_client.get)(CHANGELIST, params)
    assert response.status_code == 200
    return html.unescape(response.content.decode())


def fake_process(process: str, last_seen: timedelta, expires: timedelta) -> LiveProcess:
    """Another server process's heartbeat, ``last_seen`` and ``expires`` relative to now."""
    now = timezone.now()
    return LiveProcess(
        process=process,
        started=now - timedelta(hours=1),
        last_seen=now + last_seen,
        interval=2.0,
        expires=now + expires,
    )


def fake_row(process: str, sid: str, **fields: Any) -> LiveConnection:
    now = timezone.now()
    return LiveConnection(process=process, sid=sid, connected_since=now - timedelta(hours=1), updated=now, **fields)


async def test_subscribed_client_is_listed_with_its_state(kafka, make_topic, allow, connect, admin_client):
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"kind": "edit", "i": i} for i in range(5)])
    client = await connect()
    await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
    await client.ok("filter", {"kind": "edit"})
    assert [(await client.ok("consume"))["i"] for _ in range(2)] == [0, 1]
    sid = client.sio.get_sid("/")

    # Started behind the live tail (opened at the log end, 5), it read up to it on a consumer of its
    # own and reads the tail now; 2..4 wait in its buffer.
    expected = [{"topic": topic, "partition": 0, "position": 2, "lag": 3, "reading": "tail"}]

    async def published() -> LiveConnection | None:
        row = await row_of(sid)
        return row if row is not None and row.delivered == 2 and row.partitions == expected else None

    row = await eventually(published, "the connection's row with its position and lag")
    assert row.address == "127.0.0.1" and row.username == ""
    assert row.subscriptions == [{"topic": topic, "partition": 0, "offset": 0}]
    assert row.filters == {"kind": "edit"}
    page = await changelist(admin_client)
    assert ">127.0.0.1</a>" in page  # the address links to the (read-only) detail page
    assert f"{topic}/0 at 2, lag 3 (tail)" in page  # the current position, not where the subscription started
    assert '{"kind": "edit"}' in page
    assert '<td class="field-delivered">2</td>' in page
    assert sid in page
    detail = await sync_to_async(admin_client.get)(f"{CHANGELIST}{row.pk}/change/")
    assert f"{topic}/0 from 0" in html.unescape(detail.content.decode())  # the starting offsets are kept there


async def test_disconnect_action_disconnects_the_client_and_drops_its_row(connect, admin_client, settings):
    settings.KASOCKI_REGISTRY_SECONDS = 2.0  # the default: publishing is slow, the poll for requests is not
    leaving, staying = await connect(), await connect()
    gone = asyncio.Event()
    leaving.sio.on("disconnect", lambda *args: gone.set())
    sid, other = leaving.sio.get_sid("/"), staying.sio.get_sid("/")
    row = await eventually(lambda: row_of(sid), "the client's row")
    await eventually(lambda: row_of(other), "the other client's row")

    data = {"action": "disconnect_selected", helpers.ACTION_CHECKBOX_NAME: [row.pk], "index": 0}
    asked = time.monotonic()
    response = await sync_to_async(admin_client.post)(CHANGELIST, data, follow=True)
    assert response.status_code == 200 and "Asked to disconnect 1 client(s)" in response.content.decode()

    await asyncio.wait_for(gone.wait(), 10)
    latency = time.monotonic() - asked
    print(f"disconnect latency through the admin: {latency:.2f}s")
    assert latency <= 5, f"the disconnect took {latency:.2f}s"
    await wait_until(lambda: sid not in server_service().connections, what="the server to close the connection")

    async def row_gone() -> bool:
        return not await LiveConnection.objects.filter(sid=sid).aexists()

    await eventually(row_gone, "the disconnected client's row to go")
    assert staying.sio.connected and other in server_service().connections
    assert not await DisconnectRequest.objects.aexists()  # done with, and none for the other client


async def test_rows_of_a_process_whose_heartbeat_expired_are_removed(connect):
    await fake_process("gone-host:1", -timedelta(minutes=2), -timedelta(seconds=1)).asave()
    await fake_row("gone-host:1", "quiet").asave()
    await DisconnectRequest.objects.acreate(process="gone-host:1", sid="quiet")
    # Silent for 25s, far beyond a few intervals, but not yet past its expiry: a slow process, not a dead one.
    await fake_process("slow-host:2", -timedelta(seconds=25), timedelta(seconds=5)).asave()
    await fake_row("slow-host:2", "slow").asave()
    await connect()  # this process publishes (and sweeps) once a client has connected

    async def quiet_gone() -> bool:
        return not await LiveProcess.objects.filter(process="gone-host:1").aexists()

    await eventually(quiet_gone, "the quiet process to go")
    assert not await LiveConnection.objects.filter(process="gone-host:1").aexists()
    assert not await DisconnectRequest.objects.filter(process="gone-host:1").aexists()
    assert await LiveConnection.objects.filter(process="slow-host:2").aexists()
    assert await LiveProcess.objects.filter(process="slow-host:2").aexists()


async def test_shutdown_stops_the_publisher_and_removes_its_rows(connect):
    first = await connect()
    await eventually(lambda: row_of(first.sio.get_sid("/")), "the client's row")
    service = server_service()
    [task] = [t for t in list(service.background) if t.get_name() == registry.TASK_NAME]
    # The service lives on the live server's loop, in its own thread.
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(service.shutdown(), task.get_loop()))
    assert task.cancelled() and task not in service.background
    assert not await LiveConnection.objects.aexists()
    assert not await LiveProcess.objects.aexists()

    second = await connect()  # the next connection starts a new publisher
    await eventually(lambda: row_of(second.sio.get_sid("/")), "the new client's row")
    assert await row_of(first.sio.get_sid("/"))


def test_admin_is_read_only_with_search_and_process_filter(admin_client):
    # Another host's rows, recently seen: the live server's registry leaves them alone.
    for process in ("web-1:42", "web-2:43"):
        fake_process(process, timedelta(0), timedelta(minutes=1)).save()
    fake_row("web-1:42", "a", address="10.1.1.1", username="ada").save()
    fake_row("web-2:43", "b", address="10.2.2.2").save()
    row = LiveConnection.objects.get(sid="a")

    page = admin_client.get(CHANGELIST, {"q": "ada"}).content.decode()
    assert "10.1.1.1" in page and "10.2.2.2" not in page
    page = admin_client.get(CHANGELIST, {"process": "web-2:43"}).content.decode()
    assert "10.2.2.2" in page and "10.1.1.1" not in page
    page = admin_client.get(CHANGELIST).content.decode()
    assert "Disconnect selected clients" in page and "delete_selected" not in page

    assert admin_client.get(f"{CHANGELIST}add/").status_code == 403
    assert admin_client.post(f"{CHANGELIST}{row.pk}/change/", {"address": "x"}).status_code == 403
    assert admin_client.get(f"{CHANGELIST}{row.pk}/delete/").status_code == 403
    assert LiveConnection.objects.get(pk=row.pk).address == "10.1.1.1"


async def test_http_streams_show_with_their_transport_and_can_be_disconnected(
    make_topic, allow, asgi_server, admin_client
):
    topic = make_topic()
    allow(topic)
    stream = await open_stream(f"{asgi_server.url}/v2/stream/{topic}")
    try:
        assert stream.status == 200
        (sid,) = [sid for sid, c in server_service().connections.items() if c.transport == "sse"]

        async def subscribed() -> LiveConnection | None:  # a stream's row may be written before its subscription
            row = await row_of(sid)
            return row if row is not None and row.subscriptions else None

        row = await eventually(subscribed, "the stream's row with its subscription")
        assert row.transport == "sse" and row.subscriptions == [{"topic": topic, "partition": 0, "offset": 0}]
        page = await changelist(admin_client, transport="sse")
        assert sid in page and '<td class="field-transport">sse</td>' in page
        data = {"action": "disconnect_selected", helpers.ACTION_CHECKBOX_NAME: [row.pk], "index": 0}
        await sync_to_async(admin_client.post)(CHANGELIST, data, follow=True)
        while await stream.event(timeout=10) is not None:  # the server ends the response
            pass
        await wait_until(lambda: sid not in server_service().connections, what="the stream's connection closed")
    finally:
        await stream.close()
