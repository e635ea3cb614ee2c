"""The live-connections registry with several publishers in one test process, each standing for a server process.

Each ``Service`` gets its own process id, so two services are two processes as far as the
database is concerned. The connections are fakes: no Kafka is needed.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.admin import helpers
from django.db import connections
from django.utils import timezone

from kasocki_app import registry, registry_exit, registry_store
from kasocki_app.models import DisconnectRequest, LiveConnection, LiveProcess
from kasocki_app.service import Service

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/kasocki_app/liveconnection/"
INTERVAL = 0.2  # KASOCKI_REGISTRY_SECONDS in these tests: the old fixed window was 3 intervals, 0.6s


class FakeOutbound:
    """Stands in for a socket.io client: a disconnect closes the connection as socket.io's handler does."""

    bytes_sent = 0

    def __init__(self, service: Service, sid: str) -> None:
        self.service = service
        self.sid = sid
        self.disconnected = asyncio.Event()
        self.disconnected_at = 0.0

    async def emit(self, event: str, data: Any) -> None:
        pass

    async def emit_message(self, taken: Any) -> None:
        pass

    def backlog(self) -> int:
        return 0

    async def disconnect(self) -> None:
        self.disconnected_at = time.monotonic()
        self.disconnected.set()
        await self.service.close(self.sid)

    async def abort(self) -> None:
        await self.disconnect()


class Rounds:
    """Counts a publisher's publications."""

    def __init__(self, publisher: registry.Publisher) -> None:
        self.count = 0
        original = publisher.publish

        async def counted() -> None:
            await original()
            self.count += 1

        publisher.publish = counted  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def fast_registry(settings: Any) -> None:
    settings.KASOCKI_REGISTRY_SECONDS = INTERVAL


@pytest.fixture(autouse=True)
async def close_connections() -> AsyncIterator[None]:
    """Close the database connection of the thread the async ORM, the admin client and the publishers used."""
    yield
    await sync_to_async(connections.close_all)()


@pytest.fixture
def publisher() -> Iterator[Callable[[Service], registry.Publisher]]:
    """Publishers for services of this test; they are no concern of this process's exit."""
    made: list[registry.Publisher] = []

    def make(service: Service) -> registry.Publisher:
        made.append(registry.Publisher(service, registry.process_id(service)))
        return made[-1]

    yield make
    for each in made:
        registry_exit.forgotten(each.process)


def open_clients(service: Service, count: int, prefix: str) -> dict[str, FakeOutbound]:
    outbounds = {}
    for i in range(count):
        sid = f"{prefix}-{i}"
        outbounds[sid] = FakeOutbound(service, sid)
        service.open(sid, outbounds[sid], address=f"10.0.{i // 250}.{i % 250}")
    return outbounds


async def until(condition: Callable[[], Any], what: str, timeout: float = 10) -> None:
    """Wait until ``condition()`` (or what it returns, awaited) is truthy."""
    deadline = time.monotonic() + timeout
    while not await _value(condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def _value(result: Any) -> Any:
    return await result if inspect.isawaitable(result) else result


async def rows_of(process: str) -> int:
    return await LiveConnection.objects.filter(process=process).acount()


async def sids_of(process: str) -> list[str]:
    return [sid async for sid in LiveConnection.objects.filter(process=process).values_list("sid", flat=True)]


async def requests_of(process: str) -> int:
    return await DisconnectRequest.objects.filter(process=process).acount()


async def stop(task: asyncio.Task[Any]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def ask_disconnect(admin_client: Any, sids: list[str]) -> str:
    pks = [pk async for pk in LiveConnection.objects.filter(sid__in=sids).values_list("pk", flat=True)]
    data = {"action": "disconnect_selected", helpers.ACTION_CHECKBOX_NAME: pks, "index": 0}
    response = await sync_to_async(admin_client.post)(CHANGELIST, data, follow=True)
    assert response.status_code == 200
    return response.content.decode()


def remove_rows_now() -> None:
    """The exit hook's work, in a thread of its own whose connection is closed after."""
    try:
        registry_exit.remove_rows_now()
    finally:
        connections.close_all()


def test_dead_after_is_generous_and_follows_the_declared_interval():
    assert registry_store.dead_after(0.2) == registry_store.dead_after(2.0) == 30.0
    assert registry_store.dead_after(6.0) == 60.0


async def test_slow_publisher_is_not_reaped_by_a_fast_one(publisher):
    fast, slow = Service(), Service()
    open_clients(fast, 1, "fast")
    open_clients(slow, 2, "slow")
    slow_publisher = publisher(slow)
    await slow_publisher.publish()  # once, then silent: a process whose loop is too busy to publish
    assert await rows_of(slow_publisher.process) == 2
    fast_publisher = publisher(fast)
    rounds = Rounds(fast_publisher)
    task = asyncio.create_task(fast_publisher.run())
    try:
        # 15 publications of the other process: 3s of silence, 5 times the old window and 15 intervals.
        await until(lambda: rounds.count >= 15, "15 publications of the fast process")
        assert await rows_of(slow_publisher.process) == 2
        assert await rows_of(fast_publisher.process) == 1
        await slow_publisher.publish()  # back: its heartbeat advances, its rows stay its own
        assert await rows_of(slow_publisher.process) == 2
    finally:
        await stop(task)
        await slow_publisher._stop()


async def test_heartbeat_expiry_uses_the_declared_interval_and_the_database_clock(publisher):
    service = Service()
    open_clients(service, 1, "c")
    publishing = publisher(service)
    await publishing.publish()
    heartbeat = await LiveProcess.objects.aget(process=publishing.process)
    assert heartbeat.interval == INTERVAL and heartbeat.connections == 1
    assert heartbeat.expires - heartbeat.last_seen == timedelta(seconds=registry_store.dead_after(INTERVAL))
    assert abs(heartbeat.last_seen - timezone.now()) < timedelta(seconds=5)


async def test_only_an_expired_heartbeat_is_reaped_with_its_rows_and_requests(publisher):
    alive, dead = Service(), Service()
    open_clients(alive, 1, "alive")
    open_clients(dead, 1, "dead")
    alive_publisher, dead_publisher = publisher(alive), publisher(dead)
    await dead_publisher.publish()
    await DisconnectRequest.objects.acreate(process=dead_publisher.process, sid="dead-0")
    await alive_publisher.publish()
    assert await rows_of(dead_publisher.process) == 1  # silent for a moment only

    # Its last heartbeat 31s ago: as if the database's clock had moved on.
    late = timezone.now() - timedelta(seconds=31)
    await LiveProcess.objects.filter(process=dead_publisher.process).aupdate(
        last_seen=late, expires=late + timedelta(seconds=registry_store.dead_after(INTERVAL))
    )
    await alive_publisher.publish()
    assert not await LiveProcess.objects.filter(process=dead_publisher.process).aexists()
    assert await rows_of(dead_publisher.process) == 0
    assert await requests_of(dead_publisher.process) == 0
    assert await rows_of(alive_publisher.process) == 1

    await dead_publisher.publish()  # it was only very slow: it finds itself reaped and writes everything again
    assert await rows_of(dead_publisher.process) == 1
    assert await LiveProcess.objects.filter(process=dead_publisher.process).aexists()


async def test_disconnect_request_survives_the_targets_rows_being_written_again(publisher, admin_client):
    service = Service()
    clients = open_clients(service, 2, "c")
    first = publisher(service)
    await first.publish()
    assert "Asked to disconnect 1 client(s)" in await ask_disconnect(admin_client, ["c-0"])

    # Before the process looks, its rows are deleted and written again (as when another process reaped
    # them): the request is not part of the rows, so it stays.
    await LiveConnection.objects.filter(process=first.process).adelete()
    service.connections["c-0"].feed.delivered += 1
    await first.publish()
    assert await rows_of(first.process) == 2
    # A new publisher for the same process (the old one's loop ended) writes everything afresh.
    again = publisher(service)
    await again.publish()
    await asyncio.wait_for(clients["c-0"].disconnected.wait(), 5)
    assert not clients["c-1"].disconnected.is_set()
    await again.publish()
    assert await sids_of(first.process) == ["c-1"]
    assert await requests_of(first.process) == 0


async def test_rows_are_written_only_when_they_change(publisher):
    service = Service()
    open_clients(service, 3, "c")
    publishing = publisher(service)
    await publishing.publish()
    rows = LiveConnection.objects.filter(process=publishing.process)
    before = {r.sid: r.updated async for r in rows.all()}
    service.connections["c-1"].feed.delivered = 7
    await publishing.publish()
    after = {r.sid: (r.updated, r.delivered) async for r in rows.all()}
    assert after["c-0"] == (before["c-0"], 0) and after["c-2"] == (before["c-2"], 0)
    assert after["c-1"][0] > before["c-1"] and after["c-1"][1] == 7


async def test_first_publication_replaces_the_rows_left_under_the_same_process_id(publisher):
    service = Service()
    open_clients(service, 1, "now")
    publishing = publisher(service)
    # Rows of an earlier process that had the same host:pid (a restarted container) and never removed them.
    now = timezone.now()
    await LiveProcess.objects.acreate(
        process=publishing.process, started=now, last_seen=now, interval=2.0, expires=now + timedelta(minutes=1)
    )
    await LiveConnection.objects.acreate(process=publishing.process, sid="before", connected_since=now, updated=now)
    await DisconnectRequest.objects.acreate(process=publishing.process, sid="before")
    await publishing.publish()
    assert await sids_of(publishing.process) == ["now-0"]
    assert await requests_of(publishing.process) == 0


async def test_cancelled_publisher_removes_its_rows_and_requests(publisher):
    service, other = Service(), Service()
    open_clients(service, 2, "c")
    open_clients(other, 1, "o")
    publishing = publisher(service)
    await publisher(other).publish()
    task = asyncio.create_task(publishing.run())
    await until(lambda: rows_of(publishing.process), "the rows")
    await DisconnectRequest.objects.acreate(process=publishing.process, sid="c-0")
    await stop(task)
    assert not await LiveProcess.objects.filter(process=publishing.process).aexists()
    assert await rows_of(publishing.process) == 0
    assert await requests_of(publishing.process) == 0
    assert await rows_of(registry.process_id(other)) == 1  # another process's rows are not this one's to remove


async def test_exit_cleanup_removes_the_rows_of_a_publisher_never_stopped(publisher, monkeypatch):
    # daphne stops its loop with the publisher pending: only the exit hook runs.
    monkeypatch.setattr(registry_exit, "_unforgotten", set())
    service = Service()
    open_clients(service, 2, "c")
    publishing = publisher(service)
    await publishing.publish()
    assert registry_exit.has_rows(publishing.process)
    try:
        await asyncio.to_thread(remove_rows_now)  # as at exit: synchronous, outside any event loop
        assert not await LiveProcess.objects.filter(process=publishing.process).aexists()
        assert await rows_of(publishing.process) == 0
        await publishing.publish()  # a publication after the cleanup writes nothing
        assert await rows_of(publishing.process) == 0
    finally:
        registry_store.EXITING.clear()


async def test_disconnects_under_load_take_effect_within_seconds(publisher, admin_client, settings):
    settings.KASOCKI_REGISTRY_SECONDS = 2.0  # the default
    services = [Service() for _ in range(3)]
    clients: dict[str, FakeOutbound] = {}
    for n, service in enumerate(services):
        clients.update(open_clients(service, 90, f"p{n}"))
    publishers = [publisher(service) for service in services]
    tasks = [asyncio.create_task(p.run()) for p in publishers]

    async def busy() -> None:  # every client receives all the time: each publication rewrites every row
        while True:
            for service in services:
                for connection in service.connections.values():
                    connection.feed.delivered += 1
            await asyncio.sleep(0.05)

    tasks.append(asyncio.create_task(busy()))
    try:
        ours = [p.process for p in publishers]  # the live server of other tests may publish too
        await until(_count_is(ours, 270), "270 rows")
        targets = [f"p{n}-{i}" for n in range(3) for i in range(0, 90, 9)]
        asked = time.monotonic()
        assert "Asked to disconnect 30 client(s)" in await ask_disconnect(admin_client, targets)
        await asyncio.wait_for(asyncio.gather(*(clients[sid].disconnected.wait() for sid in targets)), 10)
        latency = max(clients[sid].disconnected_at for sid in targets) - asked
        print(f"30 disconnects across 3 processes publishing 270 changing rows: the last after {latency:.2f}s")
        assert latency <= 5, f"the last disconnect took {latency:.2f}s"
        assert sum(outbound.disconnected.is_set() for outbound in clients.values()) == 30
        await until(_count_is(ours, 240), "the disconnected clients' rows to go")
        assert await LiveProcess.objects.filter(process__in=ours).acount() == 3  # nobody reaped
    finally:
        for task in tasks:
            await stop(task)


def _count_is(processes: list[str], count: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await LiveConnection.objects.filter(process__in=processes).acount() == count

    return check


async def test_each_publication_looks_at_a_bounded_share_of_the_rows_and_refreshes_them_all_in_turn(
    publisher, monkeypatch
):
    monkeypatch.setattr(registry, "ROWS_PER_ROUND", 10)
    service = Service()
    open_clients(service, 30, "c")
    publishing = publisher(service)
    written: list[int] = []
    original = registry_store.publish

    def counting(process: str, interval: float, rows: Any, changed: set[str], *args: Any) -> set[str]:
        written.append(len(changed))
        return original(process, interval, rows, changed, *args)

    monkeypatch.setattr(registry_store, "publish", counting)
    await publishing.publish()
    assert written == [30]  # new connections: every row at once
    for connection in service.connections.values():
        connection.feed.delivered = 7  # every row changed
    for _ in range(3):
        await publishing.publish()
    assert written == [30, 10, 10, 10]  # at most ROWS_PER_ROUND rewritten per publication
    delivered = [
        d async for d in LiveConnection.objects.filter(process=publishing.process).values_list("delivered", flat=True)
    ]
    assert delivered == [7] * 30  # and every one refreshed after connections / ROWS_PER_ROUND publications
    await publishing._stop()
