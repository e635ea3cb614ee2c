"""End to end: the admin's live connections, published by the server process, and its disconnect action."""

from __future__ import annotations

import asyncio
import html
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, TypeVar

import pytest
from django.contrib.admin import helpers
from django.utils import timezone

from kasocki_app import registry
from kasocki_app.models import LiveConnection
from tests.e2e import server_service, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/kasocki_app/liveconnection/"
T = TypeVar("T")


@pytest.fixture(autouse=True)
def fast_registry(settings: Any) -> None:
    settings.KASOCKI_REGISTRY_SECONDS = 0.2


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
    response = await asyncio.to_thread(admin_client.get, CHANGELIST, params)
    assert response.status_code == 200
    return html.unescape(response.content.decode())


def fake_row(process: str, sid: str, last_seen: timedelta, **fields: Any) -> LiveConnection:
    now = timezone.now()
    return LiveConnection(
        process=process, sid=sid, connected_since=now - timedelta(hours=1), last_seen=now + last_seen, **fields
    )


async def test_subscribed_client_is_listed_with_its_state(kafka, make_topic, allow, connect, admin_client):
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"kind": "edit", "i": i} for i in range(5)])
    client = await connect()
    await client.ok("subscribe", {"topic": topic, "partition": 0, "offset": 0})
    await client.ok("filter", {"kind": "edit"})
    assert [(await client.ok("consume"))["i"] for _ in range(2)] == [0, 1]
    sid = client.sio.get_sid("/")

    async def published() -> LiveConnection | None:
        row = await row_of(sid)
        return row if row is not None and row.delivered == 2 and row.lag == {f"{topic}/0": 3} else None

    row = await eventually(published, "the connection's row with its lag")
    assert row.address == "127.0.0.1" and row.username == ""
    assert row.subscriptions == [{"topic": topic, "partition": 0, "offset": 0}]
    assert row.filters == {"kind": "edit"} and not row.disconnect_requested
    page = await changelist(admin_client)
    assert ">127.0.0.1</a>" in page  # the address links to the (read-only) detail page
    assert f"{topic}/0 from 0" in page
    assert '{"kind": "edit"}' in page
    assert '<td class="field-delivered">2</td>' in page
    assert f"{topic}/0: 3" in page
    assert sid in page


async def test_disconnect_action_disconnects_the_client_and_drops_its_row(connect, admin_client):
    leaving, staying = await connect(), await connect()
    gone = asyncio.Event()
    leaving.sio.on("disconnect", lambda *args: gone.set())
    sid, other = leaving.sio.get_sid("/"), staying.sio.get_sid("/")
    row = await eventually(lambda: row_of(sid), "the client's row")
    await eventually(lambda: row_of(other), "the other client's row")

    data = {"action": "disconnect_selected", helpers.ACTION_CHECKBOX_NAME: [row.pk], "index": 0}
    response = await asyncio.to_thread(admin_client.post, CHANGELIST, data, follow=True)
    assert response.status_code == 200 and "Asked to disconnect 1 client(s)" in response.content.decode()

    await asyncio.wait_for(gone.wait(), 10)
    await wait_until(lambda: sid not in server_service().connections, what="the server to close the connection")

    async def row_gone() -> bool:
        return not await LiveConnection.objects.filter(sid=sid).aexists()

    await eventually(row_gone, "the disconnected client's row to go")
    assert staying.sio.connected and other in server_service().connections
    assert not (await row_of(other)).disconnect_requested


async def test_rows_of_a_process_that_stopped_publishing_are_removed(connect):
    await fake_row("gone-host:1", "quiet", -timedelta(minutes=1)).asave()
    await fake_row("busy-host:2", "fresh", timedelta(minutes=1)).asave()
    await connect()  # this process publishes (and sweeps) once a client has connected

    async def quiet_gone() -> bool:
        return not await LiveConnection.objects.filter(process="gone-host:1").aexists()

    await eventually(quiet_gone, "the quiet process's rows to go")
    assert await LiveConnection.objects.filter(process="busy-host:2").aexists()


async def test_shutdown_stops_the_publisher_and_removes_its_rows(connect):
    first = await connect()
    await eventually(lambda: row_of(first.sio.get_sid("/")), "the client's row")
    service = server_service()
    [task] = [t for t in list(service.background) if t.get_name() == registry.TASK_NAME]
    # The service lives on the live server's loop, in its own thread.
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(service.shutdown(), task.get_loop()))
    assert task.cancelled() and task not in service.background
    assert not await LiveConnection.objects.aexists()

    second = await connect()  # the next connection starts a new publisher
    await eventually(lambda: row_of(second.sio.get_sid("/")), "the new client's row")
    assert await row_of(first.sio.get_sid("/"))


def test_admin_is_read_only_with_search_and_process_filter(admin_client):
    # Another host's rows, recently seen: the live server's registry leaves them alone.
    fake_row("web-1:42", "a", timedelta(minutes=1), address="10.1.1.1", username="ada").save()
    fake_row("web-2:43", "b", timedelta(minutes=1), address="10.2.2.2").save()
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
