"""HTTP streams answered by the ASGI wrapper itself, before Django's request handler.

Django's ASGI handler runs each request in a context with its own thread for the sync
parts (signals, middleware), and that thread lives as long as the response: one per
open stream. So the wrapper answers requests for the ``kasocki:stream`` route (wherever
the site's URLconf mounts the app) with ``sse_view.answer`` directly, as socket.io's
requests are answered, and leaves every other request to Django.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs

from django.conf import settings
from django.http.request import split_domain_port, validate_host
from django.urls import Resolver404, resolve

from . import sse_view
from .exceptions import InternalError
from .outbound import server_transport

logger = logging.getLogger(__name__)

# Only paths with this in them are looked up in the URLconf: every other request goes its way untouched.
MARKER = "/v2/stream/"


class AsgiQuery:
    """An ASGI HTTP scope as a ``sse_view.StreamQuery``."""

    def __init__(self, scope: dict[str, Any], send: Any) -> None:
        headers: dict[str, str] = {}
        for name, value in scope.get("headers", []):
            key = name.decode("latin-1").lower()
            text = value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers and key != "cookie" else text
        self.headers = headers
        self.method = scope.get("method", "GET")
        self.query = parse_qs(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        client = scope.get("client")
        self.peer = str(client[0]) if client else ""
        self.host = headers.get("host", "")
        self.origin = f"{scope.get('scheme', 'http')}://{self.host}"
        self.cookies = headers.get("cookie", "")
        self.transport = server_transport(send)


def stream_topics(scope: dict[str, Any]) -> str | None:
    """The topics of a request for the ``kasocki:stream`` route; None for any other request."""
    path: str = scope.get("path", "")
    if MARKER not in path:
        return None
    root = scope.get("root_path", "")
    path_info = path[len(root) :] if root and path.startswith(root) else path
    try:
        match = resolve(path_info)
    except Resolver404:
        return None
    if match.func is not sse_view.stream:
        return None
    topics = match.kwargs.get("topics")
    return topics if isinstance(topics, str) else None


async def serve_if_stream(scope: dict[str, Any], receive: Any, send: Any) -> bool:
    """Answer a request for the ``kasocki:stream`` route; False (nothing done) for any other request."""
    topics = stream_topics(scope)
    if topics is None:
        return False
    await serve(scope, receive, send, topics)
    return True


async def serve(scope: dict[str, Any], receive: Any, send: Any, topics: str) -> None:
    """Answer one stream request over ASGI: refused at once, or streamed until either side ends it."""
    while True:  # a GET has no body, but the request must be read to its end
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        if not message.get("more_body"):
            break
    query = AsgiQuery(scope, send)
    if not _host_allowed(query.host):
        await _send_plain(send, 400, b"bad Host header\n")
        return
    try:
        answer = await sse_view.answer(query, topics)
    except Exception:  # the database, say: the client still gets an error object, and the log the detail
        logger.exception("answering a stream request failed")
        answer = sse_view.refusal(InternalError("the stream could not be opened"), {})
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers.items()]
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    if answer.body is None:
        await send({"type": "http.response.body", "body": answer.content})
        return
    writer = asyncio.ensure_future(_write(answer.body, send))
    watcher = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await asyncio.wait({writer, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (writer, watcher):
            task.cancel()
        results = await asyncio.gather(writer, watcher, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                logger.warning("stream response failed: %s: %s", type(result).__name__, result)


async def _write(body: AsyncIterator[bytes], send: Any) -> None:
    async with contextlib.aclosing(body) as chunks:  # type: ignore[type-var]
        async for chunk in chunks:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


async def _until_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def _host_allowed(host: str) -> bool:
    """Django's ALLOWED_HOSTS check, as its request handler would make it."""
    domain, _port = split_domain_port(host)
    allowed = settings.ALLOWED_HOSTS
    if settings.DEBUG and not allowed:
        allowed = [".localhost", "127.0.0.1", "[::1]"]
    return bool(domain) and validate_host(domain, allowed)


async def _send_plain(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
