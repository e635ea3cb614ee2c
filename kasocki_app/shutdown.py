"""A graceful stop: when the server is told to stop, end every stream and session so that clients resume elsewhere.

ASGI servers do not tell the application in time. uvicorn sends ``lifespan.shutdown`` only
after every connection closed, and an HTTP stream never closes by itself: uvicorn waits for
ever (or until ``--timeout-graceful-shutdown``, which then cuts streams without a last id).
daphne sends no lifespan events, and cancels the application at once. Both stop on SIGTERM
and SIGINT through a handler they install in the main thread, where their event loop runs
(uvicorn, each of ``uvicorn --workers N``, daphne, ``runserver --noreload``). So, at the
application's first call, ``GracefulStop`` chains a handler of its own before theirs. On the
signal it:

1. refuses new HTTP streams (503 ``ServerStoppingError``, ``Retry-After: 1``) and cuts the
   connection of every engine.io request that comes (for a new session or one that ended);
2. ends every HTTP stream after a last id-only event with its exact position (an EventSource
   reconnects when a response ends), and closes every engine.io session without a socket.io
   DISCONNECT, after which socket.io clients would not reconnect: a websocket is closed after
   what was queued for it, a long-poll is answered, and clients reconnect, to another server;
3. waits for that, at most DRAIN_SECONDS, then cuts what is left (clients that do not read);
4. stops the service (live tail, cluster watch, registry publisher), at most SERVICE_SECONDS;
5. calls the server's handler, which stops the server as before, with nothing left open.

A second signal meanwhile goes to the server's handler at once. Under ``runserver`` with its
autoreloader the server runs outside the main thread and installs no handler: the process
ends on the signal as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import orjson

from . import calls
from .exceptions import ServerStoppingError
from .outbound import server_transport
from .service import process_service
from .sse import EventStream

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)
# How long streams and sessions may take to end before what is left is cut.
DRAIN_SECONDS = 3.0
# How long the service may take to stop (closing the live tail's consumer) before the server stops anyway.
SERVICE_SECONDS = 3.0
# How often the stop looks whether everything ended (only while stopping).
LOOK_SECONDS = 0.01
# How long a refused call waits for the server to see its connection cut.
CUT_SECONDS = 1.0

Handler = Callable[[int, FrameType | None], Any]


def stopping_error() -> ServerStoppingError:
    return ServerStoppingError("this server is stopping; connect again")


class GracefulStop:
    """Ends the app's streams and sessions on the server's stop signal, then lets the server stop."""

    def __init__(self, sio: Any, engineio_path: str | None) -> None:
        self.sio = sio
        self.engineio_path = engineio_path
        self.installed = False
        self._signalled = False
        self._task: asyncio.Task[None] | None = None

    async def admit(self, scope: dict[str, Any], receive: Any, send: Any) -> bool:
        """Whether to serve this call (False: it was refused); at the first, chain the signal handlers."""
        if not self.installed:
            self.install()
        if not process_service().stopping or not self._engineio_request(scope):
            return True
        # Cut, not answered: socket.io clients (and nginx, which then asks the next process) take it
        # for a failed connection and connect again. An answer would not do for python-engineio's
        # client: it reads the body of a refused handshake after closing its HTTP session (and waits
        # for ever when the body had not come with the head), and leaves unread and unclosed the
        # response to a poll of a session that ended (400).
        transport = server_transport(send)
        if transport is None:
            await _refuse(scope, send)
            return False
        transport.abort()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CUT_SECONDS):  # until the server saw it: no response is expected then
                while (await receive())["type"] not in ("http.disconnect", "websocket.disconnect"):
                    pass
        return False

    def install(self) -> None:
        """Chain a handler before the server's own for SIGTERM and SIGINT (from the main thread only)."""
        self.installed = True
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach only the main thread's handlers: this server stops by other means
        loop = asyncio.get_running_loop()
        for signum in SIGNALS:
            previous = signal.getsignal(signum)
            # Only where the server handles the signal: Python's own SIGINT handler raises KeyboardInterrupt.
            if callable(previous) and previous is not signal.default_int_handler:
                signal.signal(signum, functools.partial(self._on_signal, loop, previous))

    def _on_signal(
        self, loop: asyncio.AbstractEventLoop, previous: Handler, signum: int, frame: FrameType | None
    ) -> None:
        # In the main thread, between two bytecodes of whatever it ran: only hand the stop to the loop.
        if self._signalled or loop.is_closed():
            previous(signum, frame)
            return
        self._signalled = True
        loop.call_soon_threadsafe(self._start, previous, signum, frame)

    def _start(self, previous: Handler, signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: ending streams and sessions before the server stops", signum)
        self._task = asyncio.ensure_future(self._stop_then(previous, signum, frame))

    async def _stop_then(self, previous: Handler, signum: int, frame: FrameType | None) -> None:
        try:
            await self.stop()
        except Exception:
            logger.exception("ending streams and sessions failed; the server stops all the same")
        finally:
            previous(signum, frame)

    async def stop(self) -> None:
        """End every stream and session (cutting what is left after DRAIN_SECONDS), then stop the service."""
        service = process_service()
        service.stopping = True
        loop = asyncio.get_running_loop()
        began = loop.time()
        streams = sessions = 0
        for connection in list(service.connections.values()):
            if isinstance(connection.outbound, EventStream):
                connection.outbound.finish()
                streams += 1
        try:
            async with asyncio.timeout(DRAIN_SECONDS):
                # abort: without engine.io's CLOSE packet, which python-socketio's client takes for
                # a disconnect it must not retry; what was queued is still written first.
                closing = [s.close(wait=False, abort=True) for s in list(self.sio.eio.sockets.values())]
                sessions = len(closing)
                await asyncio.gather(*closing, return_exceptions=True)
                # Polled: nothing notifies the end of a connection's close or of a call's return. Waiting for
                # the calls (a stream's last chunk, a websocket's close) leaves nothing suspended when the
                # server stops its loop (calls.py: the exiting interpreter crashed on such a call).
                while service.connections or calls.in_progress():
                    await asyncio.sleep(LOOK_SECONDS)
        except TimeoutError:
            left = list(service.connections.values())
            logger.warning("%d connections did not end in %gs; cutting them", len(left), DRAIN_SECONDS)
            for connection in left:
                with contextlib.suppress(Exception):
                    await connection.outbound.abort()
            with contextlib.suppress(TimeoutError):  # the calls of the connections cut return in a moment
                async with asyncio.timeout(CUT_SECONDS):
                    while calls.in_progress():
                        await asyncio.sleep(LOOK_SECONDS)
        logger.info("ended %d streams and %d socket.io sessions in %.2fs", streams, sessions, loop.time() - began)
        try:
            async with asyncio.timeout(SERVICE_SECONDS):
                await service.shutdown()
        except TimeoutError:
            logger.warning("the service did not stop in %gs", SERVICE_SECONDS)

    def _engineio_request(self, scope: dict[str, Any]) -> bool:
        """A request for engine.io: to open a session, or for one (all of them end when the server stops)."""
        path = self.engineio_path
        if path is None or scope["type"] not in ("http", "websocket"):
            return False
        request_path: str = scope.get("path", "")
        return (request_path + "/").startswith(path)


async def _refuse(scope: dict[str, Any], send: Any) -> None:
    """Refuse a call where the connection cannot be cut (a server whose transport is unknown)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1013})  # try again later
        return
    body = orjson.dumps(stopping_error().to_dict("connect"))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 503, "headers": [*headers, (b"retry-after", b"1")]})
    await send({"type": "http.response.body", "body": body})
