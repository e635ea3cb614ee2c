"""End to end: who may connect and which topics they see (sessions, tokens, groups), and connection limits."""

from __future__ import annotations

import asyncio

import pytest
import socketio
from django.contrib.auth.models import Group, Permission, User
from django.test import Client

from kasocki_app.kafka import ConsumerCounts
from kasocki_app.models import WhitelistedTopic
from tests.clients import RecordingClient
from tests.e2e import server_service, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
async def topics(make_topic):
    """Four topics: public, for signed-in users, for a group, for a permission holder."""
    names = {kind: make_topic() for kind in ("public", "authenticated", "group", "permission")}
    group = await Group.objects.acreate(name="readers")
    await WhitelistedTopic.objects.acreate(topic=names["public"])
    await WhitelistedTopic.objects.acreate(topic=names["authenticated"], access="authenticated")
    restricted = await WhitelistedTopic.objects.acreate(topic=names["group"], access="restricted")
    await restricted.groups.aadd(group)
    await WhitelistedTopic.objects.acreate(
        topic=names["permission"], access="restricted", permission="kasocki_app.view_whitelistedtopic"
    )
    return names


async def session_cookie(user: User) -> dict[str, str]:
    client = Client()
    await asyncio.to_thread(client.force_login, user)
    return {"Cookie": f"sessionid={client.cookies['sessionid'].value}"}


async def test_anonymous_clients_see_public_topics_only(topics, connect):
    client = await connect()
    assert await client.next("ready") == [topics["public"]]
    err, _ = await client.call("subscribe", topics["authenticated"])
    missing, _ = await client.call("subscribe", "no-such-topic")
    # A topic you may not read looks exactly like one that does not exist.
    assert err["name"] == missing["name"] == "TopicNotAvailableError"
    assert err["availableTopics"] == missing["availableTopics"] == [topics["public"]]


async def test_session_user_sees_authenticated_topics(topics, connect):
    user = await User.objects.acreate_user("ada", password="x")
    client = await connect(headers=await session_cookie(user))
    assert await client.next("ready") == sorted([topics["public"], topics["authenticated"]])
    assert await client.ok("subscribe", topics["authenticated"])


async def test_group_member_sees_group_topics(topics, connect):
    user = await User.objects.acreate_user("grace", password="x")
    await user.groups.aadd(await Group.objects.aget(name="readers"))
    client = await connect(headers=await session_cookie(user))
    assert await client.next("ready") == sorted([topics["public"], topics["authenticated"], topics["group"]])


async def test_permission_holder_sees_permission_topics(topics, connect):
    user = await User.objects.acreate_user("linus", password="x")
    await user.user_permissions.aadd(await Permission.objects.aget(codename="view_whitelistedtopic"))
    client = await connect(headers=await session_cookie(user))
    assert topics["permission"] in await client.next("ready")


async def test_token_authentication(topics, connect, settings):
    settings.KASOCKI_TOKEN_AUTHENTICATOR = "tests.auth.token_user"
    await User.objects.acreate_user("ken", password="x")
    client = await connect(auth={"token": "token-ken"})
    assert await client.next("ready") == sorted([topics["public"], topics["authenticated"]])


@pytest.mark.parametrize(
    ("authenticator", "token"),
    [("tests.auth.token_user", "token-nobody"), ("tests.auth.token_user", 42), ("", "token-ken")],
    ids=["unknown-user", "not-a-string", "tokens-not-accepted"],
)
async def test_refused_tokens(asgi_server, settings, authenticator, token):
    settings.KASOCKI_TOKEN_AUTHENTICATOR = authenticator
    client = RecordingClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(asgi_server.url, auth={"token": token})
    refusal = await client.next("connect_error")
    # socket.io's connect_error carries {message, data}; data is the Kasocki error object.
    assert refusal["data"]["name"] == "AuthenticationFailedError" and refusal["data"]["origin"] == "Kasocki"
    assert refusal["message"] == refusal["data"]["message"]


async def refused(asgi_server, **connect_options) -> dict:
    """The Kasocki error object of a refused connection."""
    client = RecordingClient()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.connect(asgi_server.url, **connect_options)
    return (await client.next("connect_error"))["data"]


async def test_connections_per_address_are_limited(asgi_server, connect, settings):
    settings.KASOCKI_MAX_CONNECTIONS_PER_IP = 2
    # An address of this test's own (through a trusted proxy): other tests' connections do not count.
    settings.KASOCKI_TRUSTED_PROXIES = ["127.0.0.1"]
    headers = {"X-Forwarded-For": "192.0.2.21"}
    first = await connect(headers=headers)
    await connect(headers=headers)
    refusal = await refused(asgi_server, headers=headers)
    assert refusal["name"] == "TooManyConnectionsError" and refusal["limit"] == 2
    await first.close()
    await wait_until(lambda: server_service().limiter.per_address["192.0.2.21"] == 1, what="slot released")
    await connect(headers=headers)


async def test_new_connections_per_second_are_limited(asgi_server, connect, settings):
    settings.KASOCKI_MAX_CONNECTION_RATE_PER_IP = 3
    # An address of this test's own (through a trusted proxy), so other tests' connections do not count.
    settings.KASOCKI_TRUSTED_PROXIES = ["127.0.0.1"]
    headers = {"X-Forwarded-For": "192.0.2.33"}
    for _ in range(3):
        await (await connect(headers=headers)).close()
    refusal = await refused(asgi_server, headers=headers)
    assert refusal["name"] == "TooManyConnectionsError" and refusal["limit"] == 3
    await connect(headers={"X-Forwarded-For": "192.0.2.34"})  # another address is not affected


async def test_total_connections_are_limited(asgi_server, connect, settings):
    settings.KASOCKI_MAX_CONNECTIONS = server_service().limiter.total + 1
    await connect()
    assert (await refused(asgi_server))["name"] == "TooManyConnectionsError"


async def test_forwarded_address_is_believed_from_trusted_proxies_only(asgi_server, connect, settings):
    headers = {"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}
    untrusted = await connect(headers=headers)
    settings.KASOCKI_TRUSTED_PROXIES = ["127.0.0.0/8", "203.0.113.0/24"]
    trusted = await connect(headers=headers)
    service = server_service()
    assert service.get(untrusted.sio.get_sid()).address == "127.0.0.1"
    assert service.get(trusted.sio.get_sid()).address == "198.51.100.7"


@pytest.mark.parametrize(
    ("allowed", "origin", "accepted"),
    [
        pytest.param([], "same", True, id="same-origin-by-default"),
        pytest.param([], "http://evil.example", False, id="other-origin-refused"),
        pytest.param(["https://app.example"], "https://app.example", True, id="configured-origin"),
        pytest.param(["https://app.example"], "http://evil.example", False, id="configured-refuses-others"),
    ],
)
async def test_origin_check(asgi_server, settings, allowed, origin, accepted):
    settings.KASOCKI_ALLOWED_ORIGINS = allowed
    client = RecordingClient()
    headers = {"Origin": asgi_server.url if origin == "same" else origin}
    if accepted:
        await client.connect(asgi_server.url, headers=headers)
        assert await client.next("ready") == []
        await client.close()
    else:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await client.connect(asgi_server.url, headers=headers)


async def test_consumers_per_process_are_limited(make_topic, allow, connect, settings):
    settings.KASOCKI_LIVE_TAIL = False  # a consumer per subscribed connection (the tail's readers wait for one)
    topic = make_topic()
    allow(topic)
    settings.KASOCKI_MAX_CONSUMERS = ConsumerCounts.open + 1
    first, second = await connect(), await connect()
    await first.ok("subscribe", topic)
    err, _ = await second.call("subscribe", topic)
    assert err["name"] == "TooManyConsumersError"
    await first.close()
    await wait_until(lambda: ConsumerCounts.open < settings.KASOCKI_MAX_CONSUMERS, what="consumer closed")
    assert await second.ok("subscribe", topic)


async def test_idle_connections_are_reaped(make_topic, allow, connect, settings):
    settings.KASOCKI_IDLE_TIMEOUT = 3.0  # long enough for both to subscribe on a busy machine
    topic = make_topic()
    allow(topic)
    idle, streaming = await connect(), await connect()
    await idle.ok("subscribe", topic)
    await streaming.ok("subscribe", topic)
    await streaming.ok("start", None)
    assert (await idle.next("err", timeout=10))["name"] == "IdleTimeoutError"
    await wait_until(lambda: not idle.sio.connected, what="idle client disconnected")
    assert streaming.sio.connected and streaming.pending("err") == []


async def test_inactive_token_users_are_refused(asgi_server, settings):
    settings.KASOCKI_TOKEN_AUTHENTICATOR = "tests.auth.token_user"
    await User.objects.acreate_user("gone", password="x", is_active=False)
    assert (await refused(asgi_server, auth={"token": "token-gone"}))["name"] == "AuthenticationFailedError"
