"""Fixtures: a real Kafka broker, unique topics, the live ASGI server and socket.io clients."""

from __future__ import annotations

import faulthandler
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings as django_settings

from scripts.kafka_topics import KafkaTopics, start_or_reuse_broker
from tests.clients import RecordingClient
from tests.live_server import LiveServer

# After the run, the interpreter joins every thread still working; one that never returns held
# the process (and CI) forever. Past this, its threads' stacks are printed and it exits failed.
EXIT_GRACE_SECONDS = 60


def pytest_unconfigure(config: pytest.Config) -> None:
    faulthandler.dump_traceback_later(EXIT_GRACE_SECONDS, exit=True, file=sys.__stderr__)


@pytest.fixture(scope="session")
def django_db_modify_db_settings(tmp_path_factory: pytest.TempPathFactory) -> None:
    # A file, not SQLite's in-memory database: the live server's threads must see the test's rows.
    db = django_settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        db.setdefault("TEST", {})["NAME"] = str(Path(tmp_path_factory.mktemp("db")) / "test.sqlite3")


@pytest.fixture(scope="session")
def kafka() -> Iterator[KafkaTopics]:
    """The session's broker, with helpers to create topics and produce records."""
    from kasocki_app.cluster import cluster
    from kasocki_app.conf import conf

    bootstrap, stop = start_or_reuse_broker("pytest")
    try:
        topics = KafkaTopics(bootstrap)
        topics.wait_ready()
        django_settings.KAFKA_BOOTSTRAP_SERVERS = bootstrap
        django_settings.KASOCKI_KAFKA_CONFIG = {"bootstrap.servers": bootstrap}
        # Every test client connects from 127.0.0.1: per-address limits are lifted for the
        # session (the tests of those limits set them back), or tests would throttle each other.
        django_settings.KASOCKI_MAX_CONNECTIONS_PER_IP = 100_000
        django_settings.KASOCKI_MAX_CONNECTION_RATE_PER_IP = 100_000
        conf.reload()  # set directly (session-wide), so no setting_changed signal clears the cache
        cluster.reset()
        yield topics
    finally:
        if stop is not None:
            stop()


@pytest.fixture
def make_topic(kafka: KafkaTopics) -> Iterator[Callable[..., str]]:
    """Create uniquely named topics (deleted after the test)."""
    created: list[str] = []

    def make(partitions: int = 1) -> str:
        name = kafka.create_topic(partitions)
        created.append(name)
        return name

    yield make
    kafka.delete_topics(created)


@pytest.fixture
def allow(settings: Any) -> Callable[..., None]:
    """Allow topics through KASOCKI_ALLOWED_TOPICS for this test."""

    def allow_topics(*names: str) -> None:
        settings.KASOCKI_ALLOWED_TOPICS = [*getattr(settings, "KASOCKI_ALLOWED_TOPICS", []), *names]

    return allow_topics


@pytest.fixture(params=[True, False], ids=["tail", "own"])
def live_tail(request: pytest.FixtureRequest, settings: Any) -> bool:
    """Run a test with the live tail on (the default) and off (a consumer per connection)."""
    settings.KASOCKI_LIVE_TAIL = request.param
    return bool(request.param)


@pytest.fixture(scope="session")
def asgi_server(kafka: KafkaTopics, django_db_setup: Any, django_db_blocker: Any) -> Iterator[LiveServer]:
    """The project's full ASGI application (Django + socket.io) on a free port."""
    from kasocki_project.asgi import application

    with django_db_blocker.unblock():
        server = LiveServer(application).start()
        yield server
        server.stop()


@pytest.fixture
async def connect(asgi_server: LiveServer) -> AsyncIterator[Callable[..., Awaitable[RecordingClient]]]:
    """Connect socket.io clients to the live server (disconnected after the test)."""
    clients: list[RecordingClient] = []

    async def connect_client(
        transports: list[str] | None = None, auth: Any = None, headers: dict[str, str] | None = None, **options: Any
    ) -> RecordingClient:
        client = RecordingClient(**options)
        clients.append(client)
        return await client.connect(asgi_server.url, transports=transports, auth=auth, headers=headers)

    yield connect_client
    for client in clients:
        await client.close()


# --- the connection core against fakes: no broker, no database ---------------


@pytest.fixture
def log() -> Any:
    """An in-memory Kafka cluster (tests/fakes.py)."""
    from tests.fakes import FakeLog

    return FakeLog()


@pytest.fixture
def outbound() -> Any:
    """A fake client: what the connection sent, and a backlog the test sets."""
    from tests.fakes import FakeOutbound

    return FakeOutbound()


@pytest.fixture(params=["tail", "own"])
async def open_reader(request: pytest.FixtureRequest, log: Any) -> AsyncIterator[Any]:
    """How connections get readers: on a live tail over the fake log, or each its own (KASOCKI_LIVE_TAIL off)."""
    from kasocki_app.tail import LiveTail
    from kasocki_app.tailing import TailReader

    if request.param == "own":
        yield log.open_reader
        return
    tail = LiveTail(log.open_reader, log)
    # A change of the fake cluster wakes idle readers of the tail, as a change wakes the fake's own
    # readers: what a real idle stream sees at its next timeout, without waiting for one.
    log.changes.listeners.append(tail.nudge)

    async def on_tail() -> TailReader:
        return TailReader(tail, log.open_reader)

    on_tail.tail = tail  # type: ignore[attr-defined]  # for tests that look at the tail
    yield on_tail
    await tail.close()


@pytest.fixture
async def connection(
    log: Any, outbound: Any, open_reader: Any, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Any]:
    """A Connection over the fakes that follows the cluster at every step (closed after the test)."""
    from kasocki_app.connection import Connection

    settings.KASOCKI_ASSIGNMENT_CHECK_SECONDS = 0
    # Waits for records end when records come (or the log changes), never by timing out here:
    # a message that is ready but waits for a timeout fails the test instead of slowing it.
    monkeypatch.setattr("kasocki_app.feed.WAIT_MAX_SECONDS", 60.0)
    monkeypatch.setattr("kasocki_app.tail.WAIT_MAX_SECONDS", 60.0)
    conn = Connection("sid-1", outbound, open_reader, log)
    yield conn
    await conn.close()
