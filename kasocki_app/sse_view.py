"""``GET /v2/stream/<topics>``: server-sent events (or NDJSON) of Kafka topics, beside socket.io.

The same engine as socket.io connections: the request becomes a ``Connection`` of the
process's service (same limits, counted together; same access rules; the shared live
tail), subscribed and started before the response begins, so that every refusal is an
HTTP status with the error object socket.io clients get (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse, StreamingHttpResponse

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
    TooManyConnectionsError,
    TooManyConsumersError,
    TopicNotAvailableError,
)
from .outbound import SEND_KEY, server_transport
from .service import Service, process_service
from .sse import EventStream
from .sse_request import parse_stream_request
from .stream import Phase
from .types import TopicPartition

logger = logging.getLogger(__name__)

# A response Django never began to write (the client left between the view and the body) is closed then.
BODY_START_SECONDS = 30.0
STATUSES: dict[type[KasockiError], int] = {
    AuthenticationFailedError: 401,
    OriginNotAllowedError: 403,
    TopicNotAvailableError: 404,
    PartitionNotAvailableError: 404,
    TooManyConnectionsError: 429,
    TooManyConsumersError: 503,
    KafkaError: 503,
    InternalError: 500,
}
EVENT_STREAM = "text/event-stream; charset=utf-8"
NDJSON = "application/json; charset=utf-8"


def status_of(error: KasockiError) -> int:
    """The HTTP status of an error before streaming: 400 for every bad input."""
    for kind, status in STATUSES.items():
        if isinstance(error, kind):
            return status
    return 400


def error_response(error: KasockiError, cors: dict[str, str]) -> JsonResponse:
    status = status_of(error)
    metrics.SSE_STREAMS.labels(str(status)).inc()
    metrics.ERRORS.labels(error.name).inc()
    response = JsonResponse(error.to_dict("stream"), status=status, headers=cors)
    if status in (429, 503):
        response["Retry-After"] = "1" if status == 429 else "5"
    if status == 401:
        response["WWW-Authenticate"] = "Bearer"
    return response


def cors_headers(request: HttpRequest) -> dict[str, str]:
    """CORS headers for a browser on another origin listed in KASOCKI_ALLOWED_ORIGINS (as engine.io's)."""
    origin = request.headers.get("Origin")
    if origin is None or origin == f"{request.scheme}://{request.get_host()}":
        return {}
    allowed = conf.allowed_origins
    if "*" not in allowed and origin not in allowed:
        raise OriginNotAllowedError(f"origin {origin[:200]!r} may not read streams of this server")
    return {"Access-Control-Allow-Origin": origin, "Access-Control-Allow-Credentials": "true", "Vary": "Origin"}


async def stream(request: HttpRequest, topics: str) -> HttpResponseBase:
    try:
        cors = cors_headers(request)
    except KasockiError as exc:
        return error_response(exc, {})
    if request.method == "OPTIONS":
        return HttpResponse(
            status=204,
            headers={
                **cors,
                "Access-Control-Allow-Methods": "GET",
                "Access-Control-Allow-Headers": "Authorization, Last-Event-ID, Accept, Cache-Control",
                "Access-Control-Max-Age": "600",
            },
        )
    if request.method != "GET":
        return HttpResponse(status=405, headers={**cors, "Allow": "GET, OPTIONS"})
    try:
        wanted = parse_stream_request(topics, dict(request.GET.lists()), request.headers)
    except KasockiError as exc:
        return error_response(exc, cors)
    service = process_service()
    peer = (request.scope.get("client") or ("",))[0] if hasattr(request, "scope") else request.META.get("REMOTE_ADDR")
    address = address_behind_proxies(peer or "", request.headers.get("X-Forwarded-For"))
    sid = "sse-" + secrets.token_urlsafe(12)
    logs.bind(sid, address)
    try:
        service.limiter.admit(address)
    except KasockiError as exc:
        logger.info("refused a stream from %s: %s", address, exc.message)
        return error_response(exc, cors)
    try:
        principal = await principal_for(request.META, _bearer(request))
    except KasockiError as exc:
        service.limiter.release(address)
        return error_response(exc, cors)
    except BaseException:
        service.limiter.release(address)
        raise
    send = getattr(request, "scope", {}).get(SEND_KEY)
    outbound = EventStream(wanted.ndjson, server_transport(send) if send is not None else None)
    connection = service.open(sid, outbound, principal, address, transport="sse")
    try:
        await _begin(connection, wanted.filter, wanted.subscription, outbound)
    except KasockiError as exc:
        await service.close(sid)
        return error_response(exc, cors)
    except BaseException:
        await service.close(sid)
        raise
    registry.ensure_started(service)
    connection.spawn(_close_unless_read(service, sid, outbound))
    logger.info("%s streams %s to %s as %s", sid, topics, address, principal.username or "anonymous")
    metrics.SSE_STREAMS.labels("200").inc()
    response = StreamingHttpResponse(
        outbound.body(lambda: service.close(sid)),
        content_type=NDJSON if wanted.ndjson else EVENT_STREAM,
        headers={**cors, "Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
    return response


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
    """Close a stream whose body was never read: Django dropped the response (the client left first)."""
    try:
        async with asyncio.timeout(BODY_START_SECONDS):
            await outbound.body_started.wait()
    except TimeoutError:
        logger.info("%s: the response was never written; closing", sid)
        await service.close(sid)


def _bearer(request: HttpRequest) -> dict[str, str] | None:
    """The socket.io ``auth`` payload an ``Authorization: Bearer`` header stands for."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return {"token": token.strip()}
