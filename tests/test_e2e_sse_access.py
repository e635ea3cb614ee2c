"""End to end: who may read HTTP streams (sessions, tokens, origins), forged ids, stalled readers, and curl."""

from __future__ import annotations

import asyncio
import shutil
import socket

import orjson
import pytest
from django.contrib.auth.models import User

from tests.e2e import server_service, wait_until
from tests.sse_client import open_stream
from tests.test_e2e_access import session_cookie, topics  # noqa: F401  (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)


async def status_and_error(url: str, headers: dict[str, str] | None = None) -> tuple[int, str | None]:
    stream = await open_stream(url, headers)
    try:
        if stream.status != 200:
            return stream.status, (await stream.json())["name"]
        return 200, None
    finally:
        await stream.close()


async def test_restricted_topics_by_cookie_and_token(topics, asgi_server, settings):  # noqa: F811
    settings.KASOCKI_TOKEN_AUTHENTICATOR = "tests.auth.token_user"
    user = await User.objects.acreate_user("ada", password="x")
    url = f"{asgi_server.url}/v2/stream/{topics['authenticated']}"
    assert await status_and_error(url) == (404, "TopicNotAvailableError")
    assert await status_and_error(url, await session_cookie(user)) == (200, None)
    assert await status_and_error(url, {"Authorization": "Bearer token-ada"}) == (200, None)
    assert await status_and_error(url, {"Authorization": "Bearer token-nobody"}) == (401, "AuthenticationFailedError")
    settings.KASOCKI_TOKEN_AUTHENTICATOR = ""
    assert await status_and_error(url, {"Authorization": "Bearer token-ada"}) == (401, "AuthenticationFailedError")
    await wait_until(lambda: not server_service().connections, what="every stream closed")


async def test_a_forged_last_event_id_cannot_name_a_restricted_topic(topics, asgi_server):  # noqa: F811
    forged = orjson.dumps([{"topic": topics["group"], "partition": 0, "offset": 0}]).decode()
    url = f"{asgi_server.url}/v2/stream/{topics['public']}"
    assert await status_and_error(url, {"Last-Event-ID": forged}) == (404, "TopicNotAvailableError")
    mixed = orjson.dumps(
        [
            {"topic": topics["public"], "partition": 0, "offset": 0},
            {"topic": topics["permission"], "partition": 0, "offset": 0},
        ]
    ).decode()
    assert await status_and_error(url, {"Last-Event-ID": mixed}) == (404, "TopicNotAvailableError")


async def test_other_origins_need_to_be_allowed(make_topic, allow, asgi_server, settings):
    topic = make_topic()
    allow(topic)
    url = f"{asgi_server.url}/v2/stream/{topic}"
    assert await status_and_error(url, {"Origin": "https://elsewhere.example"}) == (403, "OriginNotAllowedError")
    assert await status_and_error(url, {"Origin": asgi_server.url}) == (200, None)  # the same origin
    settings.KASOCKI_ALLOWED_ORIGINS = ["https://elsewhere.example"]
    stream = await open_stream(url, {"Origin": "https://elsewhere.example"})
    assert stream.status == 200
    assert stream.headers["access-control-allow-origin"] == "https://elsewhere.example"
    assert stream.headers["access-control-allow-credentials"] == "true"
    await stream.close()
    preflight = await open_stream(
        url,
        {"Origin": "https://elsewhere.example", "Access-Control-Request-Headers": "last-event-id"},
        method="OPTIONS",
    )
    assert preflight.status == 204
    assert "Last-Event-ID" in preflight.headers["access-control-allow-headers"]
    await preflight.close()
    await wait_until(lambda: not server_service().connections, what="every stream closed")


async def test_a_stalled_reader_is_bounded_then_cut(kafka, make_topic, allow, asgi_server, settings):
    settings.KASOCKI_MAX_BACKLOG_BYTES = 256 * 1024
    settings.KASOCKI_SLOW_CLIENT_TIMEOUT = 3.0
    topic = make_topic()
    allow(topic)
    total = 20_000
    kafka.produce(topic, [{"i": i, "pad": "x" * 1000} for i in range(total)])
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    reader.connect(("127.0.0.1", asgi_server.port))
    event_id = orjson.dumps([{"topic": topic, "partition": 0, "offset": 0}]).decode()
    host = f"127.0.0.1:{asgi_server.port}"
    reader.sendall(f"GET /v2/stream/{topic} HTTP/1.1\r\nHost: {host}\r\nLast-Event-ID: {event_id}\r\n\r\n".encode())
    try:
        service = server_service()
        await wait_until(lambda: any(c.transport == "sse" for c in service.connections.values()), what="stream")
        (connection,) = [c for c in service.connections.values() if c.transport == "sse"]
        await wait_until(lambda: connection.outbound.backlog() > 128 * 1024, what="backlog over the cap")
        assert connection.delivered < total
        assert connection.outbound.backlog() < 256 * 1024 + 600 * 1100  # the cap plus one batch
        await wait_until(lambda: connection.closed, timeout=15, what="stalled reader cut")
        assert connection.delivered < total
        await wait_until(lambda: service.limiter.total == 0, what="its connection released")
    finally:
        reader.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_streams_filtered_messages(kafka, make_topic, allow, asgi_server):
    topic = make_topic()
    allow(topic)
    kafka.produce(topic, [{"kind": "log", "i": 0}, {"kind": "edit", "i": 1}, {"kind": "edit", "i": 2}])
    event_id = orjson.dumps([{"topic": topic, "partition": 0, "offset": 0}]).decode()
    curl = await asyncio.create_subprocess_exec(
        "curl",
        "-sN",
        "-H",
        f"Last-Event-ID: {event_id}",
        f"{asgi_server.url}/v2/stream/{topic}?filter=%7B%22kind%22%3A%22edit%22%7D",
        stdout=asyncio.subprocess.PIPE,
    )
    assert curl.stdout is not None
    data: list[dict[str, object]] = []
    try:
        async with asyncio.timeout(15):
            assert await curl.stdout.readline() == b":ok\n"
            while len(data) < 2:
                line = await curl.stdout.readline()
                if line.startswith(b"data: "):
                    data.append(orjson.loads(line[6:]))
    finally:
        curl.kill()
        await curl.wait()
    assert [m["i"] for m in data] == [1, 2]
    await wait_until(lambda: not server_service().connections, what="curl's stream closed")
