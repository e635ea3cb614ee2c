"""Ceiling S: python-socketio alone, emitting prebuilt messages to one client; no Kafka, no Django.

Served by uvicorn in its own process (``uvicorn bench.ceiling_app:app``). On an
``emit`` event ``{"count": M, "mode": ...}`` it acks at once, then sends M
``message`` events from a background task, in chunks of 500 like the Kasocki
server's stream loop. The messages are prebuilt dicts of the same shape and size
as the server's (record plus ``_kafka``), JSON-encoded with orjson per message,
as any server must. Two ways to send them:

* ``"eio"``: the socket.io packet text is built here and handed to engine.io
  (``AsyncServer.eio.send``), the cheapest path python-socketio offers;
* ``"emit"``: ``AsyncServer.emit(event, data, to=sid)``, the public API, which
  also walks every message looking for binary data and runs a task per emit.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import socketio

from bench.data import Records, delivered_shape

PREBUILT = 1000
CHUNK = 500  # the server's default KASOCKI_CONSUME_BATCH_SIZE when figure 2 was first measured


class OrjsonModule:
    """The ``json`` module interface python-socketio calls (``dumps`` must return str)."""

    @staticmethod
    def dumps(obj: Any, **_kwargs: Any) -> str:
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(text: str | bytes, **_kwargs: Any) -> Any:
        return orjson.loads(text)


_records = Records(seed=3)
MESSAGES = [delivered_shape(_records.record(i), "bench-ceiling", i % 4, i // 4) for i in range(PREBUILT)]

sio = socketio.AsyncServer(async_mode="asgi", json=OrjsonModule, logger=False, engineio_logger=False)
app = socketio.ASGIApp(sio, socketio_path="socket.io")


async def _send_eio(sid: str, count: int) -> None:
    eio_sid = sio.manager.eio_sid_from_sid(sid, "/")
    messages = MESSAGES
    size = len(messages)
    dumps = orjson.dumps
    for index in range(count):
        await sio.eio.send(eio_sid, "2" + dumps(["message", messages[index % size]]).decode())
        if index % CHUNK == CHUNK - 1:
            await asyncio.sleep(0)


async def _send_emit(sid: str, count: int) -> None:
    messages = MESSAGES
    size = len(messages)
    for index in range(count):
        await sio.emit("message", messages[index % size], to=sid)
        if index % CHUNK == CHUNK - 1:
            await asyncio.sleep(0)


@sio.on("emit")
async def on_emit(sid: str, arg: Any) -> tuple[None, int]:
    count = int(arg["count"])
    sender = _send_emit if arg.get("mode") == "emit" else _send_eio
    sio.start_background_task(sender, sid, count)
    return None, count
