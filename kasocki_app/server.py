"""Builds the socket.io server and the ASGI application that serves it beside Django."""

from __future__ import annotations

import weakref
from typing import Any

import socketio

from . import jsonshim, metrics
from .conf import conf
from .namespace import KasockiNamespace
from .outbound import BacklogMeteredApp
from .service import Service


def cors_origins() -> str | list[str] | None:
    """engine.io's origin check: None is same-origin only; an empty list would turn the check off."""
    origins = conf.allowed_origins
    if not origins:
        return None
    if "*" in origins:
        return "*"
    return origins


# Servers built in this process, so that setting changes (tests, mostly) reach them.
_servers: weakref.WeakSet[socketio.AsyncServer] = weakref.WeakSet()


def apply_settings() -> None:
    """Re-read the settings engine.io holds (allowed origins, payload size) into every built server."""
    for sio in _servers:
        sio.eio.cors_allowed_origins = cors_origins()
        sio.eio.max_http_buffer_size = conf.max_payload_bytes


def build_server(service: Service | None = None) -> socketio.AsyncServer:
    sio = socketio.AsyncServer(
        async_mode="asgi",
        serializer=jsonshim.JsonPacket,
        json=jsonshim,
        cors_allowed_origins=cors_origins(),
        max_http_buffer_size=conf.max_payload_bytes,
        logger=False,
        engineio_logger=False,
    )
    service = service or Service()
    sio.register_namespace(KasockiNamespace(service))
    metrics.register(service)
    _servers.add(sio)
    return sio


def build_asgi_application(django_application: Any, sio: socketio.AsyncServer | None = None) -> BacklogMeteredApp:
    """socket.io at /socket.io/, every other request to ``django_application``."""
    sio = sio or build_server()
    app = BacklogMeteredApp(socketio.ASGIApp(sio, other_asgi_app=django_application, socketio_path="socket.io"))
    app.sio = sio
    return app
