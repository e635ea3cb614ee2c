"""``GET /v2/stream/<topics>``: server-sent events (or NDJSON) of Kafka topics, beside socket.io.

The same engine as socket.io connections: the request becomes a ``Connection`` of the
process's service (same limits, counted together; same access rules; the shared live
tail), subscribed and started before the response begins, so that every refusal is an
HTTP status with the error object socket.io clients get (docs/protocol.md).

``answer`` works on a ``StreamQuery``, so that the same code serves both ways in: the
ASGI wrapper (``sse_asgi``) answers the URL of the ``kasocki:stream`` route itself,
since Django's handler holds a thread for each request while its response lasts; the
Django view ``stream`` answers where the app is served without that wrapper.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse

from . import logs, metrics, registry
from .access import address_behind_proxies, principal_for
from .conf import conf
from .connection import Connection
from .exceptions import (
    AuthenticationFailedError,
    InternalError,
    KafkaError,
    KasockiError,
    OriginNotAllowedError,
    PartitionNotAvailableError,
    ServerStoppingError,
    TooManyConnectionsError,
    TooManyConsumersError,
    TopicNotAvailableError,
)
from .outbound import SEND_KEY, ServerTransport, server_transport
from .service import Service, process_service
from .shutdown import stopping_error
from .sse import EventStream
from .sse_request import parse_stream_request
from .stream import Phase
from .types import TopicPartition

logger = logging.getLogger(__name__)

# A response never begun (the client left between the answer and the body) is closed then.
BODY_START_SECONDS = 30.0
STATUSES: dict[type[KasockiError], int] = {
    AuthenticationFailedError: 401,
    OriginNotAllowedError: 403,
    TopicNotAvailableError: 404,
    PartitionNotAvailableError: 404,
    TooManyConnectionsError: 429,
    TooManyConsumersError: 503,
    KafkaError: 503,
    ServerStoppingError: 503,
    InternalError: 500,
}
EVENT_STREAM = "text/event-stream; charset=utf-8"
NDJSON = "application/json; charset=utf-8"
PREFLIGHT = {
    "Access-Control-Allow-Methods": "GET",
    "Access-Control-Allow-Headers": "Authorization, Last-Event-ID, Accept, Cache-Control",
    "Access-Control-Max-Age": "600",
}


class StreamQuery(Protocol):
    """What ``answer`` reads of a request; headers are looked up by lower-case names."""

    @property
    def method(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def query(self) -> Mapping[str, list[str]]: ...

    @property
    def peer(self) -> str: ...

    @property
    def origin(self) -> str:
        """This server's own origin (scheme://host), as the client addressed it."""
        ...

    @property
    def cookies(self) -> str:
        """The Cookie header."""
        ...

    @property
    def transport(self) -> ServerTransport | None:
        """The ASGI server's transport under the response, where it is known."""
        ...


@dataclass
class Answer:
    """A response: ``content`` when refused (or preflight), ``body`` when streaming."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    content: bytes = b""
    body: AsyncIterator[bytes] | None = None


def status_of(error: KasockiError) -> int:
    """The HTTP status of an error before streaming: 400 for every bad input."""
    for kind, status in STATUSES.items():
        if isinstance(error, kind):
            return status
    return 400


def refusal(error: KasockiError, cors: dict[str, str]) -> Answer:
    status = status_of(error)
    metrics.SSE_STREAMS.labels(str(status)).inc()
    metrics.ERRORS.labels(error.name).inc()
    headers = {**cors, "Content-Type": "application/json"}
    if status in (429, 503):
        soon = status == 429 or isinstance(error, ServerStoppingError)  # another server answers at once
        headers["Retry-After"] = "1" if soon else "5"
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return Answer(status, headers, orjson.dumps(error.to_dict("stream")))


def cors_headers(query: StreamQuery) -> dict[str, str]:
    """CORS headers for a browser on another origin listed in KASOCKI_ALLOWED_ORIGINS (as engine.io's)."""
    origin = query.headers.get("origin")
    if origin is None or origin in own_origins(query):
        return {}
    allowed = conf.allowed_origins
    if "*" not in allowed and origin not in allowed:
        raise OriginNotAllowedError(f"origin {origin[:200]!r} may not read streams of this server")
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}


def own_origins(query: StreamQuery) -> set[str]:
    """This server's origin as addressed, and as a proxy forwarding to it says it was (engine.io's check too)."""
    own = {query.origin}
    proto, host = query.headers.get("x-forwarded-proto"), query.headers.get("x-forwarded-host")
    if proto or host:
        scheme, _, address = query.origin.partition("://")
        forwarded_scheme = (proto or scheme).split(",")[0].strip()
        forwarded_host = (host or address).split(",")[0].strip()
        own.add(f"{forwarded_scheme}://{forwarded_host}")
    return own


async def answer(query: StreamQuery, topics: str) -> Answer:
    """The response to a stream request: a refusal, or the started stream's body."""
    try:
        cors = cors_headers(query)
    except KasockiError as exc:
        return refusal(exc, {})
    if query.method == "OPTIONS":
        return Answer(204, {**cors, **PREFLIGHT})
    if query.method != "GET":
        return Answer(405, {**cors, "Allow": "GET, OPTIONS"})
    try:
        wanted = parse_stream_request(topics, query.query, query.headers)
    except KasockiError as exc:
        return refusal(exc, cors)
    service = process_service()
    if _stopping(service):
        return refusal(stopping_error(), cors)
    address = address_behind_proxies(query.peer, query.headers.get("x-forwarded-for"))
    sid = "sse-" + secrets.token_urlsafe(12)
    logs.bind(sid, address)
    try:
        service.limiter.admit(address)
    except KasockiError as exc:
        logger.info("refused a stream from %s: %s", address, exc.message)
        return refusal(exc, cors)
    try:
        principal = await principal_for({"HTTP_COOKIE": query.cookies}, _bearer(query.headers))
    except KasockiError as exc:
        service.limiter.release(address)
        return refusal(exc, cors)
    except BaseException:
        service.limiter.release(address)
        raise
    outbound = EventStream(wanted.ndjson, query.transport)
    connection = service.open(sid, outbound, principal, address, transport="sse")
    try:
        await _begin(connection, wanted.filter, wanted.subscription, outbound)
    except KasockiError as exc:
        await service.close(sid)
        return refusal(exc, cors)
    except BaseException:
        await service.close(sid)
        raise
    if _stopping(service):  # it began while the server's stop ended the streams: it would not be ended
        await service.close(sid)
        return refusal(stopping_error(), cors)
    registry.ensure_started(service)
    connection.spawn(_close_unless_read(service, sid, outbound))
    logger.info("%s streams %s to %s as %s", sid, topics, address, principal.username or "anonymous")
    metrics.SSE_STREAMS.labels("200").inc()
    headers = {
        **cors,
        "Content-Type": NDJSON if wanted.ndjson else EVENT_STREAM,
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }
    return Answer(200, headers, body=outbound.body(lambda: service.close(sid)))


async def _begin(connection: Connection, filter_arg: Any, subscription: list[Any], outbound: EventStream) -> None:
    """Filter, subscribe and start the connection's stream; raises the error to answer with."""
    if filter_arg is not None:
        connection.set_filter(filter_arg)
    try:
        await connection.subscribe(subscription)
    except KasockiError:
        raise
    except Exception:
        logger.exception("%s: subscribing failed", connection.sid)
        raise InternalError("subscribe failed") from None
    assert connection.assignments is not None

    def progress() -> dict[TopicPartition, int] | None:
        idle = connection.stream.phase in (Phase.IDLE, Phase.PAUSED)
        return connection.positions if idle else None

    outbound.start_at(connection.assignments, progress)
    await connection.start(None)


async def _close_unless_read(service: Service, sid: str, outbound: EventStream) -> None:
    """Close a stream whose body was never read: the response was dropped (the client left first)."""
    try:
        async with asyncio.timeout(BODY_START_SECONDS):
            await outbound.body_started.wait()
    except TimeoutError:
        logger.info("%s: the response was never written; closing", sid)
        await service.close(sid)


def _stopping(service: Service) -> bool:
    # A function: the flag changes while the request awaits, which mypy's narrowing does not see.
    return service.stopping


def _bearer(headers: Mapping[str, str]) -> dict[str, str] | None:
    """The socket.io ``auth`` payload an ``Authorization: Bearer`` header stands for."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return {"token": token.strip()}


class DjangoQuery:
    """A Django request as a ``StreamQuery``."""

    def __init__(self, request: HttpRequest) -> None:
        self.method = request.method or "GET"
        self.headers = request.headers
        self.query = dict(request.GET.lists())
        scope: dict[str, Any] = getattr(request, "scope", {})
        self.peer = str((scope.get("client") or (request.META.get("REMOTE_ADDR", ""),))[0])
        self.origin = f"{request.scheme}://{request.get_host()}"
        self.cookies = request.META.get("HTTP_COOKIE", "")
        send = scope.get(SEND_KEY)
        self.transport = server_transport(send) if send is not None else None


async def stream(request: HttpRequest, topics: str) -> HttpResponseBase:
    """The Django view of the route (the ASGI wrapper answers it first where it serves the app)."""
    try:
        result = await answer(DjangoQuery(request), topics)
    except Exception:
        logger.exception("answering a stream request failed")
        result = refusal(InternalError("the stream could not be opened"), {})
    if result.body is None:
        return HttpResponse(result.content, status=result.status, headers=result.headers)
    return StreamingHttpResponse(result.body, status=result.status, headers=result.headers)
