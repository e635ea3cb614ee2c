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
from dataclasses import dataclass
from typing import Any

import engineio
import socketio
from engineio import packet as eio_packet

logger = logging.getLogger(__name__)

ORIGIN = "KasockiClient"
EVENTS = ("ready", "message", "messages", "err", "resumed", "disconnect")
_END = object()  # queued by close(): ends the message iteration


class KasockiClientError(Exception):
    """An error object of the server (or of this client): ``name``, ``message``, ``event``, ``details``."""

    def __init__(self, error: Any) -> None:
        plain = error if isinstance(error, dict) else {"message": str(error)}
        self.error: dict[str, Any] = plain
        self.name = str(plain.get("name") or "KasockiClientError")
        self.message = str(plain.get("message") or "Kasocki error")
        self.origin, self.event = plain.get("origin"), plain.get("event")
        self.details = {k: v for k, v in plain.items() if k not in ("name", "message", "origin", "event")}
        super().__init__(f"{self.name}: {self.message}")


def _error(name: str, message: str, **extra: Any) -> KasockiClientError:
    return KasockiClientError({"name": name, "message": message, "origin": ORIGIN, "event": None, **extra})


class _Stale(Exception):
    """Ends the resume of a connection that went away."""


@dataclass(eq=False)
class _Call:
    event: str
    arg: Any
    future: asyncio.Future[Any]
    resume: bool  # a resume step: never sent again
    stream_call: int  # start() and stop() calls so far


class _Engine(engineio.AsyncClient):  # type: ignore[misc]  # python-engineio ships no type information
    """engine.io client: the read loop waits in ``gate`` before message packets; ``on_reset`` ends a close."""

    gate: Callable[[], Awaitable[None]] | None = None
    on_reset: Callable[[], None] | None = None

    async def _reset(self) -> None:
        await super()._reset()
        if self.on_reset is not None:
            self.on_reset()

    async def _receive_packet(self, pkt: Any) -> None:
        if pkt.packet_type != eio_packet.MESSAGE or self.gate is None:
            await super()._receive_packet(pkt)
            return
        await self.gate()
        await super()._receive_packet(pkt)
        await asyncio.sleep(0)  # the packet's handler task runs before the next packet is read


class _SocketIO(socketio.AsyncClient):  # type: ignore[misc]  # python-socketio ships no type information
    def _engineio_client_class(self) -> type[engineio.AsyncClient]:
        return _Engine


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
        self.sio = _SocketIO(reconnection=reconnection, **{"handle_sigint": False, **options})
        self._settled = asyncio.Event()  # no connection is being closed
        self._settled.set()
        self.sio.eio.gate, self.sio.eio.on_reset = self._room, self._settled.set
        self._buffer = max(1, buffer)
        self._queue: asyncio.Queue[Any] = asyncio.Queue()  # for messages(); bounded by the gate
        self._wake = asyncio.Event()  # the gate may open
        self._listeners: dict[str, list[Callable[..., Any]]] = {event: [] for event in EVENTS}
        self._subscription: list[dict[str, Any]] | None = None  # to resume, once subscribed
        self._filter: dict[str, Any] | None = None  # as the server last accepted it
        self._streaming, self._start_options, self._stream_calls = False, None, 0
        self._offsets: dict[tuple[Any, int], int] = {}  # last delivered offset per (topic, partition)
        self._spare: deque[dict[str, Any]] = deque()  # answers to consume() calls their callers gave up
        self._live = False  # connected and restored: calls go straight out
        self._generation = 0  # bumped at each disconnect
        self._waiting: list[_Call] = []  # to send once live
        self._inflight: list[_Call] = []  # sent on this connection, unanswered
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
            raise _error("ClosedError", "the Kasocki client was closed", event="connect")
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
        self._streaming, self._start_options = False, None
        await self._call("stop", None)

    def messages(self) -> KasockiClient:
        """Async iterator of streamed messages (batches flattened); ends after close(). A timeout loses nothing."""
        return self

    def __aiter__(self) -> KasockiClient:
        return self

    async def __anext__(self) -> dict[str, Any]:
        item: dict[str, Any] = await self._queue.get()
        self._wake.set()
        if item is _END:
            self._queue.put_nowait(_END)  # for the other iterations
            raise StopAsyncIteration
        return item

    def positions(self) -> list[dict[str, Any]] | None:
        """Where a resume starts: ``[{topic, partition, offset}]``, or None before subscribing."""
        if self._subscription is None:
            return None
        return [dict(a, offset=self._next_offset(a)) for a in self._subscription]

    def _next_offset(self, assignment: dict[str, Any]) -> int:
        """The last offset delivered + 1; the first answer's offset if nothing came from the partition."""
        last = self._offsets.get((assignment["topic"], assignment["partition"]))
        return assignment["offset"] if last is None else last + 1

    @property
    def buffered(self) -> int:
        """Messages waiting in messages()."""
        return self._queue.qsize()

    @property
    def unanswered(self) -> int:
        """Calls waiting for their answer."""
        return len(self._inflight) + len(self._waiting)

    async def close(self) -> None:
        """Disconnect for good: waiting calls raise ClosedError; messages() ends after what it holds."""
        if self._closed:
            return
        self._closed, self._live = True, False
        pending, self._inflight, self._waiting = [*self._inflight, *self._waiting], [], []
        self._wake.set()
        self._queue.put_nowait(_END)
        await self.sio.shutdown()  # disconnects, or ends a reconnect loop
        if self.sio.eio.state == "connected":  # a reconnect completed meanwhile
            await self.sio.disconnect()
        for call in pending:
            if not call.future.done():
                closed = _error("ClosedError", "the Kasocki client was closed", event=call.event)
                call.future.set_exception(_Stale() if call.resume else closed)

    async def _call(self, event: str, arg: Any, generation: int | None = None) -> Any:
        """Send now if live (or as a resume step of ``generation``), else once resumed; the answer."""
        if generation is not None and (generation != self._generation or self._closed):
            raise _Stale
        if self._closed:
            raise _error("ClosedError", "the Kasocki client was closed", event=event)
        future = asyncio.get_running_loop().create_future()
        call = _Call(event, arg, future, generation is not None, self._stream_calls)
        if self._live or call.resume:
            await self._send(call)
        else:
            self._waiting.append(call)
        return await call.future

    async def _send(self, call: _Call) -> None:
        if call.future.done():  # its caller gave up before it went out
            return
        self._inflight.append(call)
        self._wake.set()

        def answer(err: Any = None, res: Any = None, *_: Any) -> None:
            if call not in self._inflight:  # the connection was lost meanwhile: sent again
                return
            self._inflight.remove(call)
            if err is not None:
                if not call.future.done():
                    call.future.set_exception(KasockiClientError(err))
                return
            if not call.resume:
                self._succeeded(call, res)  # the server's state changed, even if the caller gave up
            if not call.future.done():
                call.future.set_result(res)
            elif call.event == "consume":
                self._spare.append(res)

        await self.sio.emit(call.event, call.arg, callback=answer)

    def _succeeded(self, call: _Call, res: Any) -> None:
        """Keep what a resume restores."""
        if call.event == "subscribe":
            self._subscription = [_assignment(a) for a in res] if isinstance(res, list) else []
        elif call.event == "filter":
            self._filter = res
        elif call.event == "consume":
            self._delivered(res)
        elif call.event == "start" and call.stream_call == self._stream_calls:  # no stop() since
            self._streaming, self._start_options = True, call.arg

    def _delivered(self, message: Any) -> None:
        meta = message.get("_kafka") if isinstance(message, dict) else None
        if isinstance(meta, dict) and type(meta.get("partition")) is int and type(meta.get("offset")) is int:
            key = (meta.get("topic"), meta["partition"])
            self._offsets[key] = max(meta["offset"], self._offsets.get(key, -1))

    async def _room(self) -> None:
        """Hold the read loop while live, the buffer is full and no call waits for its answer."""
        while self._live and not self._closed and not self._inflight and self._queue.qsize() >= self._buffer:
            self._wake.clear()
            await self._wake.wait()

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
        self._delivered(message)
        self._queue.put_nowait(message)
        self._fire("message", message)

    def _on_messages(self, batch: Any) -> None:
        for message in batch if isinstance(batch, list) else []:
            self._delivered(message)
            self._queue.put_nowait(message)
        self._fire("messages", batch)

    def _on_err(self, error: Any) -> None:
        if isinstance(error, dict) and self._subscription is not None:  # follow the cluster
            if error.get("name") == "PartitionsChangedError" and isinstance(error.get("added"), list):
                known = {(a["topic"], a["partition"]) for a in self._subscription}
                added = [_assignment(a) for a in error["added"] if (a["topic"], a["partition"]) not in known]
                self._subscription += added
            elif error.get("name") == "TopicNotAvailableError" and isinstance(error.get("topic"), str):
                self._forget({error["topic"]})
        self._fire("err", KasockiClientError(error))

    def _forget(self, topics: set[str]) -> None:
        self._subscription = [a for a in self._subscription or [] if a["topic"] not in topics]
        self._offsets = {key: offset for key, offset in self._offsets.items() if key[0] not in topics}

    def _on_connect_error(self, data: Any = None) -> None:
        # A Kasocki refusal is {"message", "data": <error object>}; engine.io failures are strings.
        inner, message = (data.get("data"), data.get("message")) if isinstance(data, dict) else (None, data)
        if isinstance(inner, dict) and "name" in inner:
            self._refusal = {"origin": ORIGIN, "event": "connect", **inner}
        else:
            self._refusal = {"name": "ConnectionError", "origin": ORIGIN, "event": "connect"}
            self._refusal.update({"message": str(message)} if message else {})
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
        lost, self._inflight = self._inflight, []
        for call in lost:
            if call.resume and not call.future.done():
                call.future.set_exception(_Stale())
        self._waiting[:0] = [call for call in lost if not call.resume]  # sent again, first, in order
        logger.info("disconnected (%s)", reason)
        self._fire("disconnect", reason)

    async def _resume(self, generation: int) -> None:
        """Restore subscription, filter and streaming on a new connection, then send the waiting calls."""
        resumed: dict[str, Any] = {"positions": None, "assignments": None, "filter": None, "started": False}
        try:
            if self._subscription is not None:
                resumed["positions"] = self.positions()
                answer = await self._resubscribe(resumed["positions"], generation)
                self._subscription, resumed["assignments"] = [_assignment(a) for a in answer], answer
            if self._filter is not None:
                resumed["filter"] = await self._call("filter", self._filter, generation)
            if self._subscription is not None and self._streaming:
                await self._call("start", self._start_options, generation)
                resumed["started"] = True
        except _Stale:
            return  # disconnected again: the next connect resumes
        except KasockiClientError as exc:  # the waiting calls still get their own answers
            message = f"could not restore the subscription after a reconnect: {exc.message}"
            self._fire("err", _error("ResumeError", message, event=exc.event, cause=exc.error))
        while self._waiting and generation == self._generation and not self._closed:
            await self._send(self._waiting.pop(0))
        if generation == self._generation and not self._closed:
            self._live = True
            self._wake.set()
            if generation > 0:
                logger.info("resumed at %s", resumed["positions"])
                self._fire("resumed", resumed)

    async def _resubscribe(self, positions: list[dict[str, Any]], generation: int) -> Any:
        """Subscribe from ``positions``; without the topics that are no longer available, if some are."""
        try:
            return await self._call("subscribe", positions, generation)
        except KasockiClientError as exc:
            available = exc.details.get("availableTopics")
            if exc.name != "TopicNotAvailableError" or not isinstance(available, list):
                raise
            kept = [p for p in positions if p["topic"] in available]
            if not kept or len(kept) == len(positions):
                raise
            self._forget({p["topic"] for p in positions} - set(available))
            return await self._call("subscribe", kept, generation)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _assignment(a: dict[str, Any]) -> dict[str, Any]:
    return {"topic": a["topic"], "partition": a["partition"], "offset": a["offset"]}
