"""Socket.IO event handlers: translate client events into Connection calls and errors into acks."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from . import logs, registry
from .access import client_address, principal_for
from .connection import Connection
from .exceptions import InternalError, InvalidArgumentError, KasockiError, UnknownEventError
from .outbound import Outbound
from .service import Service

logger = logging.getLogger(__name__)

CLIENT_EVENTS = frozenset({"subscribe", "filter", "consume", "start", "stop"})
# Names socket.io uses for its own lifecycle: a client sending them as events is refused.
LIFECYCLE_EVENTS = frozenset({"connect", "disconnect"})

Ack = tuple[dict[str, Any] | None, Any]


class KasockiNamespace(socketio.AsyncNamespace):  # type: ignore[misc]  # python-socketio ships no type information
    """The Kasocki protocol on one socket.io namespace; per-client state lives in ``service``."""

    def __init__(self, service: Service, namespace: str = "/") -> None:
        super().__init__(namespace)
        self.service = service
        # Bound once: python-socketio's dispatch looks a handler up by name and inspects it on every event.
        self._client_handlers: dict[str, Callable[..., Awaitable[Ack | None]]] = {
            event: getattr(self, f"on_{event}") for event in CLIENT_EVENTS
        }

    async def trigger_event(self, event: Any, *args: Any) -> Any:
        if isinstance(event, str):
            handler = self._client_handlers.get(event)
            if handler is not None:
                try:
                    return await handler(*args)
                except asyncio.CancelledError:  # as python-socketio's dispatch: cut short by close(), no answer
                    return None
            if event in LIFECYCLE_EVENTS and not self.server.manager.is_connected(args[0], self.namespace):
                return await super().trigger_event(event, *args)
        try:
            name = str(event)[:64]
        except (RecursionError, ValueError):  # a name nested thousands of lists deep
            name = type(event).__name__
        return await self._handle(args[0], name, lambda c: _raise(UnknownEventError(f"unknown event {name!r}")))

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        address = client_address(environ)
        logs.bind(sid, address)
        try:
            self.service.limiter.admit(address)
        except KasockiError as exc:
            logger.info("refused a connection from %s: %s", address, exc.message)
            raise socketio.exceptions.ConnectionRefusedError(exc.message, exc.to_dict("connect")) from None
        try:
            principal = await principal_for(environ, auth)
        except KasockiError as exc:
            self.service.limiter.release(address)
            raise socketio.exceptions.ConnectionRefusedError(exc.message, exc.to_dict("connect")) from None
        except BaseException:
            self.service.limiter.release(address)
            raise
        connection = self.service.open(sid, Outbound(self.server, sid, self.namespace), principal, address)
        registry.ensure_started(self.service)
        logger.info("sid %s connected from %s as %s", sid, address, principal.username or "anonymous")
        connection.spawn(connection.send_ready())
        connection.spawn(connection.reap_when_idle())

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        connection = self.service.get(sid)
        if connection is not None:
            logs.bind(sid, connection.address)
        await self.service.close(sid)

    async def on_subscribe(self, sid: str, *args: Any) -> Ack | None:
        return await self._handle(sid, "subscribe", lambda c: c.subscribe(_one_arg("subscribe", args)))

    async def on_filter(self, sid: str, *args: Any) -> Ack | None:
        return await self._handle(sid, "filter", lambda c: c.set_filter(_one_arg("filter", args)))

    async def on_consume(self, sid: str, *args: Any) -> Ack | None:
        return await self._handle(sid, "consume", Connection.consume)

    async def on_start(self, sid: str, *args: Any) -> Ack | None:
        return await self._handle(sid, "start", lambda c: c.start(_one_arg("start", args)))

    async def on_stop(self, sid: str, *args: Any) -> Ack | None:
        return await self._handle(sid, "stop", Connection.stop)

    def answer_at_once(self, sid: str, data: list[Any]) -> Ack | None:
        """The ack of a request that needs no waiting (a consume with a message ready); None: handle it as usual."""
        if data[0] != "consume":
            return None
        connection = self.service.get(sid)
        if connection is None:
            return None
        logs.bind(sid, connection.address)
        try:
            message = connection.consume_at_once()
        except Exception:  # the usual way meets it again and answers with the error
            return None
        return None if message is None else (None, message)

    async def _handle(self, sid: str, event: str, action: Callable[[Connection], Any]) -> Ack | None:
        """Run ``action``; a failure becomes the ack's error and an ``err`` event."""
        connection = self.service.get(sid)
        if connection is None:
            return None
        logs.bind(sid, connection.address)
        try:
            async with connection.handling():
                result = action(connection)
                if inspect.isawaitable(result):
                    result = await result
                return None, result
        except KasockiError as exc:
            return await connection.report(exc, event), None
        except Exception:
            logger.exception("sid %s: %s failed", sid, event)
            return await connection.report(InternalError(f"{event} failed"), event), None


def _one_arg(event: str, args: tuple[Any, ...]) -> Any:
    if len(args) > 1:
        raise InvalidArgumentError(f"{event} takes one argument, got {len(args)}")
    return args[0] if args else None


def _raise(error: KasockiError) -> Any:
    raise error
