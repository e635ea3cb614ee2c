"""Builds the socket.io server and the ASGI application that serves it beside the site's own."""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import weakref
from typing import Any

import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from . import collector, jsonshim, logs, shutdown, sse_asgi
from .conf import conf
from .namespace import KasockiNamespace
from .outbound import BacklogMeteredApp, unsent_bytes
from .polling import EngineServer
from .service import Service, serve
from .websocket import WebSocketSession


def cors_origins() -> str | list[str] | None:
    """engine.io's origin check: None is same-origin only; an empty list would turn the check off."""
    origins = conf.allowed_origins
    if not origins:
        return None
    if "*" in origins:
        return "*"
    return origins


logger = logging.getLogger(__name__)

# Servers built in this process, so that setting changes (tests, mostly) reach them.
_servers: weakref.WeakSet[socketio.AsyncServer] = weakref.WeakSet()


def apply_settings() -> None:
    """Re-read the settings engine.io holds (allowed origins, payload size) into every built server."""
    for sio in _servers:
        sio.eio.cors_allowed_origins = cors_origins()
        sio.eio.max_http_buffer_size = conf.max_payload_bytes


class KasockiServer(socketio.AsyncServer):  # type: ignore[misc]  # python-socketio ships no type information
    """python-socketio's server: malformed packets refused quietly, requests answered at once when they can be."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Event handlers not finished yet, by engine.io session: a request is answered at once
        # only when none is, so that each client's events are still handled in order.
        self._unfinished: collections.Counter[str] = collections.Counter()
        self._event_tasks: set[asyncio.Task[Any]] = set()

    def _engineio_server_class(self) -> type[EngineServer]:
        return EngineServer

    async def _handle_event(self, eio_sid: str, namespace: str | None, id: int | None, data: list[Any]) -> None:
        """python-socketio's, but a request the namespace answers without waiting is answered without a task.

        The library starts a task per event. A consume whose message is ready needs none:
        with one request in flight, that task's trip through the event loop was about a
        tenth of the round trip.
        """
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        self.logger.info('received event "%s" from %s [%s]', data[0], sid, namespace)
        if not self.manager.is_connected(sid, namespace):
            self.logger.warning("%s is not connected to namespace %s", sid, namespace)
            return
        handler = self.namespace_handlers.get(namespace)
        # Answered here, the ack is sent from the task reading the client's packets: only when the
        # ASGI server holds nothing unsent for it, so that the send cannot wait for the client.
        if (
            id is not None
            and not self._unfinished[eio_sid]
            and isinstance(handler, KasockiNamespace)
            and unsent_bytes(eio_sid) == 0
        ):
            answer = handler.answer_at_once(sid, data)
            if answer is not None:
                await self._send_packet(
                    eio_sid, self.packet_class(sio_packet.ACK, namespace=namespace, id=id, data=list(answer))
                )
                return
        task = self.start_background_task(self._handle_event_internal, self, sid, eio_sid, data, namespace, id)
        self._unfinished[eio_sid] += 1
        self._event_tasks.add(task)
        task.add_done_callback(functools.partial(self._handler_done, eio_sid))

    def _handler_done(self, eio_sid: str, task: asyncio.Task[Any]) -> None:
        self._event_tasks.discard(task)
        self._unfinished[eio_sid] -= 1
        if self._unfinished[eio_sid] <= 0:
            del self._unfinished[eio_sid]

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        # An ack answers a request in flight: written at once when nothing waits before it.
        if pkt.packet_type == sio_packet.ACK:
            socket = self.eio.sockets.get(eio_sid)
            if isinstance(socket, WebSocketSession) and not socket.closed:
                await socket.send_now(eio_packet.Packet(eio_packet.MESSAGE, data=pkt.encode()))
                return
        await super()._send_packet(eio_sid, pkt)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except Exception as exc:  # a packet python-socketio cannot decode or route
            logger.warning("engine.io session %s sent a malformed packet (%s: %s)", eio_sid, type(exc).__name__, exc)


def build_server(service: Service | None = None) -> socketio.AsyncServer:
    sio = KasockiServer(
        async_mode="asgi",
        serializer=jsonshim.JsonPacket,
        json=jsonshim,
        cors_allowed_origins=cors_origins(),
        max_http_buffer_size=conf.max_payload_bytes,
        logger=logs.library_logger("kasocki_app.socketio"),
        engineio_logger=logs.library_logger("kasocki_app.engineio"),
    )
    service = service or Service()
    serve(service)
    sio.register_namespace(KasockiNamespace(service))
    collector.register(service)
    _servers.add(sio)
    return sio


def build_asgi_application(site_application: Any, sio: socketio.AsyncServer | None = None) -> BacklogMeteredApp:
    """socket.io at /socket.io/, HTTP streams at the app's ``kasocki:stream`` route, everything else to the site.

    ``site_application`` is the ASGI application the site had: its Channels ``ProtocolTypeRouter``
    (whose websocket consumers keep working), or Django's ``get_asgi_application()``.
    """
    sio = sio or build_server()
    app = BacklogMeteredApp(socketio.ASGIApp(sio, other_asgi_app=site_application, socketio_path="socket.io"))
    app.sio = sio
    app.serve_stream = sse_asgi.serve_if_stream
    app.admit = shutdown.GracefulStop(sio, app.app.engineio_path).admit
    return app
