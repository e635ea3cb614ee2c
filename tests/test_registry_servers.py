"""A server process stopped by SIGTERM removes its live-connection rows, under each way of serving it.

Neither daphne (which stops Twisted's reactor) nor uvicorn (which raises SIGTERM again with the
default handler after its graceful shutdown) cancels the publisher task: the cleanup must not need it.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from collections.abc import AsyncIterator

import pytest
from asgiref.sync import sync_to_async
from django.db import connections

from kasocki_app.models import LiveConnection, LiveProcess
from tests.clients import RecordingClient
from tests.test_servers import COMMANDS, ServerProcess

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
async def close_connections() -> AsyncIterator[None]:
    """Close the database connection of the thread the async ORM used here."""
    yield
    await sync_to_async(connections.close_all)()


def database_url() -> str:
    """The test database, for the server process: SQLite here, PostgreSQL where the tests run on it."""
    db = connections["default"].settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


@pytest.mark.parametrize("kind", sorted(COMMANDS))
async def test_sigterm_removes_the_process_rows(kind, kafka):
    env = {"KASOCKI_REGISTRY_SECONDS": "0.5", "DATABASE_URL": database_url()}
    server = await asyncio.to_thread(ServerProcess, kind, kafka, env)
    process = f"{socket.gethostname()}:{server.process.pid}"
    client = RecordingClient()
    try:
        await client.connect(server.url)
        sid = client.sio.get_sid("/")
        deadline = time.monotonic() + 15
        while not await LiveConnection.objects.filter(process=process, sid=sid).aexists():
            assert time.monotonic() < deadline, f"{kind} published no row for its client"
            await asyncio.sleep(0.05)
        assert await LiveProcess.objects.filter(process=process).aexists()
    finally:
        await asyncio.to_thread(server.stop)  # SIGTERM, with the client still connected
        await client.close()
    # Ended by SIGTERM as the server handles it (uvicorn re-raises it), not killed after a timeout.
    assert server.process.returncode in (0, -signal.SIGTERM), server.output
    assert not await LiveConnection.objects.filter(process=process).aexists(), server.output
    assert not await LiveProcess.objects.filter(process=process).aexists(), server.output
