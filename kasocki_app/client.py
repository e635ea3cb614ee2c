"""Kasocki client for Python: asyncio over python-socketio, resuming exactly after reconnects.

Like ``kasocki-client.js``, it keeps the last offset delivered per partition and, after each
reconnect (a new connection for the server), subscribes again from the next offsets (where
nothing arrived, from the first answer's offsets), re-applies the filter, restarts streaming
with the same ``batch`` and re-sends calls whose answers were lost: nothing lost or repeated.

    client = KasockiClient("https://kasocki.example.org", transports=["websocket"])
    client.on_error(lambda error: logger.warning("%s: %s", error.name, error.message))
    await client.connect()  # waits for `ready`: client.topics
    await client.subscribe({"topic": "recentchange", "partition": 0, "offset": 0})
    await client.start(batch=100)  # or: message = await client.consume()
    async for message in client.messages(): ...

Failed calls and refused connections raise KasockiClientError (the server's ``name``,
``message``, ``details``). Flow control: messages() buffers ``buffer`` messages (a batch may
overshoot); while it is full and no call waits for an answer, the client stops reading its
connection, the server pauses the stream and drops the connection after
KASOCKI_SLOW_CLIENT_TIMEOUT, and the client resumes once the buffer is read. Partitions added
to a topic (PartitionsChangedError) are resumed too; topics gone while reading, or found gone
at a resume, are dropped. Resume is exact with consume() or start(), not both at once. After
the server's own disconnect (IdleTimeoutError), or with ``reconnection=False``, connect() again.
Needs aiohttp (``python-socketio[asyncio_client]``).
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from .client_resume import Call, Pending, ResumeState, Stale
from .client_transport import ORIGIN, GatedSocketIO, Inbox, KasockiClientError, closed_error, refusal

__all__ = ["EVENTS", "ORIGIN", "KasockiClient", "KasockiClientError"]

logger = logging.getLogger(__name__)

EVENTS = ("ready", "message", "messages", "err", "resumed", "disconnect")


class KasockiClient:
    """One Kasocki reader over ``sio``, a python-socketio AsyncClient made with ``options``
    (``reconnection_delay``, ...; ``handle_sigint`` defaults to False).

    ``on()`` takes "ready", "message", "messages", "err" (KasockiClientError; ResumeError if a
    resume is refused), "resumed" ({positions, assignments, filter, started}) and "disconnect".
    """

    def __init__(
        self,
        url: str,
        *,
        transports: list[str] | None = None,
        auth: Any = None,
        headers: dict[str, str] | None = None,
        reconnection: bool = True,
        buffer: int = 1000,
        **options: Any,
    ) -> None:
        if importlib.util.find_spec("aiohttp") is None:
            raise RuntimeError("KasockiClient needs aiohttp: pip install 'python-socketio[asyncio_client]'")
        self.url, self._transports, self._auth, self._headers = url, transports, auth, dict(headers or {})
        self.topics: list[str] | None = None  # of the latest `ready`
        self.sio = GatedSocketIO(reconnection=reconnection, **{"handle_sigint": False, **options})
        self._settled = asyncio.Event()  # no connection is being closed
        self._settled.set()
        self.sio.eio.gate, self.sio.eio.on_reset = self._room, self._settled.set
        self._inbox = Inbox(buffer)  # for messages(); bounded by the gate
        self._listeners: dict[str, list[Callable[..., Any]]] = {event: [] for event in EVENTS}
        self._state, self._stream_calls = ResumeState(), 0  # what a resume restores; start() and stop() calls
        self._spare: deque[dict[str, Any]] = deque()  # answers to consume() calls their callers gave up
        self._live = False  # connected and restored: calls go straight out
        self._generation = 0  # bumped at each disconnect
        self._pending = Pending()  # calls waiting for their answer
        self._ready: asyncio.Future[list[str]] | None = None
        self._refusal: dict[str, Any] | None = None
        self._connecting = self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()
        for event in ("connect", "disconnect", "connect_error", "ready", "message", "messages", "err"):
            self.sio.on(event, getattr(self, f"_on_{event}"))

    def on(self, event: str, callback: Callable[..., Any]) -> Callable[..., Any]:
        """Call ``callback`` (plain or async) at each ``event`` of EVENTS; returns it."""
        if event not in self._listeners:
            raise ValueError(f"unknown event {event!r}; use one of {', '.join(EVENTS)}")
        self._listeners[event].append(callback)
        return callback

    def on_error(self, callback: Callable[[KasockiClientError], Any]) -> Callable[..., Any]:
        """Call ``callback`` with each ``err`` event (failed calls send one too) and ResumeError."""
        return self.on("err", callback)

    async def connect(self, timeout: float = 10) -> list[str]:
        """Connect, wait for ``ready`` and return its topics (also in ``topics``); resumes if subscribed."""
        if self._closed:
            raise closed_error("connect")
        await asyncio.wait_for(self._settled.wait(), timeout)  # python-socketio closes after `disconnect`
        self._ready = asyncio.get_running_loop().create_future()
        self._refusal, self._connecting = None, True
        try:  # headers by function: engine.io takes the Cookie header out of the dict it is given
            await self.sio.connect(
                self.url,
                headers=lambda: dict(self._headers),
                auth=self._auth,
                transports=self._transports,
                wait_timeout=timeout,
            )
        except socketio.exceptions.ConnectionError as exc:
            await self.sio.eio.disconnect()  # engine.io keeps its aiohttp session open after a refused connect
            raise KasockiClientError({"message": str(exc), **(self._refusal or {"name": "ConnectionError"})}) from exc
        finally:
            self._connecting = False
        return await asyncio.wait_for(asyncio.shield(self._ready), timeout)

    async def subscribe(self, assignments: Any) -> list[dict[str, Any]]:
        """Subscribe (once): a topic, an assignment or a list of them; returns the effective assignments."""
        if isinstance(assignments, tuple):  # socket.io would send it as several arguments
            assignments = list(assignments)
        effective: list[dict[str, Any]] = await self._call("subscribe", assignments)
        return effective

    async def filter(self, filters: dict[str, Any] | None) -> dict[str, Any] | None:
        """Set (a dict) or clear (None) the server-side filter; returns the filter in force."""
        in_force: dict[str, Any] | None = await self._call("filter", filters)
        return in_force

    async def consume(self) -> dict[str, Any]:
        """The next message that passes the filter (waits for one)."""
        if self._spare:
            return self._spare.popleft()
        message: dict[str, Any] = await self._call("consume", None)
        return message

    async def start(self, batch: int | None = None) -> None:
        """Stream into messages(); the server sends batches of up to ``batch`` messages if given."""
        self._stream_calls += 1
        await self._call("start", None if batch is None else {"batch": batch})

    async def stop(self) -> None:
        """Stop streaming; once this returns, messages() holds every streamed message."""
        self._stream_calls += 1
        self._state.stopped()
        await self._call("stop", None)

    def messages(self) -> KasockiClient:
        """Async iterator of streamed messages (batches flattened); ends after close(). A timeout loses nothing."""
        return self

    def __aiter__(self) -> KasockiClient:
        return self

    async def __anext__(self) -> dict[str, Any]:
        return await self._inbox.get()

    def positions(self) -> list[dict[str, Any]] | None:
        """Where a resume starts: ``[{topic, partition, offset}]``, or None before subscribing."""
        return self._state.positions()

    @property
    def buffered(self) -> int:
        """Messages waiting in messages()."""
        return len(self._inbox)

    @property
    def unanswered(self) -> int:
        """Calls waiting for their answer."""
        return len(self._pending)

    async def close(self) -> None:
        """Disconnect for good: waiting calls raise ClosedError; messages() ends after what it holds."""
        if self._closed:
            return
        self._closed, self._live = True, False
        pending = self._pending.take_all()
        self._inbox.end()
        await self.sio.shutdown()  # disconnects, or ends a reconnect loop
        if self.sio.eio.state == "connected":  # a reconnect completed meanwhile
            await self.sio.disconnect()
        for call in pending:
            if not call.future.done():
                call.future.set_exception(Stale() if call.resume else closed_error(call.event))

    async def _call(self, event: str, arg: Any, generation: int | None = None) -> Any:
        """Send now if live (or as a resume step of ``generation``), else once resumed; the answer."""
        if generation is not None and (generation != self._generation or self._closed):
            raise Stale
        if self._closed:
            raise closed_error(event)
        future = asyncio.get_running_loop().create_future()
        call = Call(event, arg, future, generation is not None, self._stream_calls)
        if self._live or call.resume:
            await self._send(call)
        else:
            self._pending.waiting.append(call)
        return await call.future

    async def _send(self, call: Call) -> None:
        if call.future.done():  # its caller gave up before it went out
            return
        self._pending.inflight.append(call)
        self._inbox.wake()

        def answer(err: Any = None, res: Any = None, *_: Any) -> None:
            if call not in self._pending.inflight:  # the connection was lost meanwhile: sent again
                return
            self._pending.inflight.remove(call)
            if err is not None:
                if not call.future.done():
                    call.future.set_exception(KasockiClientError(err))
                return
            if not call.resume:
                # The server's state changed, even if the caller gave up.
                self._state.succeeded(call.event, call.arg, res, call.stream_call == self._stream_calls)
            if not call.future.done():
                call.future.set_result(res)
            elif call.event == "consume":
                self._spare.append(res)

        await self.sio.emit(call.event, call.arg, callback=answer)

    async def _room(self) -> None:
        """Hold the read loop while live, the buffer is full and no call waits for its answer."""
        await self._inbox.hold(lambda: self._live and not self._closed and not self._pending.inflight)

    def _fire(self, event: str, *args: Any) -> None:
        for callback in list(self._listeners[event]):
            try:
                result = callback(*args)
                if inspect.isawaitable(result):
                    self._spawn(result)
            except Exception:
                logger.exception("a %r listener failed", event)

    def _on_ready(self, topics: Any) -> None:
        self.topics = topics
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(topics)
        self._fire("ready", topics)

    def _on_message(self, message: Any) -> None:
        self._state.delivered(message)
        self._inbox.put(message)
        self._fire("message", message)

    def _on_messages(self, batch: Any) -> None:
        for message in batch if isinstance(batch, list) else []:
            self._state.delivered(message)
            self._inbox.put(message)
        self._fire("messages", batch)

    def _on_err(self, error: Any) -> None:
        self._state.follow(error)
        self._fire("err", KasockiClientError(error))

    def _on_connect_error(self, data: Any = None) -> None:
        self._refusal = refusal(data)
        logger.warning("connection refused: %s", self._refusal)
        if not self._connecting:  # an automatic reconnect: no connect() call to raise it
            self._fire("err", KasockiClientError({"message": "connection refused", **self._refusal}))

    def _on_connect(self) -> None:
        if not self._closed:
            self._spawn(self._resume(self._generation))

    def _on_disconnect(self, reason: Any = None) -> None:
        self._live = False
        self._settled.clear()
        self._generation += 1
        self._pending.lost()  # resume steps end; other calls are sent again, first, in order
        logger.info("disconnected (%s)", reason)
        self._fire("disconnect", reason)

    async def _resume(self, generation: int) -> None:
        """Restore subscription, filter and streaming on a new connection, then send the waiting calls."""
        try:
            resumed, failure = await self._state.restore(lambda event, arg: self._call(event, arg, generation))
        except Stale:
            return  # disconnected again: the next connect resumes
        if failure is not None:  # the waiting calls still get their own answers
            self._fire("err", failure)
        while self._pending.waiting and generation == self._generation and not self._closed:
            await self._send(self._pending.waiting.pop(0))
        if generation == self._generation and not self._closed:
            self._live = True
            self._inbox.wake()
            if generation > 0:
                logger.info("resumed at %s", resumed["positions"])
                self._fire("resumed", resumed)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
