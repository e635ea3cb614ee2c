"""What KasockiClient needs to resume exactly after a reconnect: its state and its unanswered calls.

ResumeState keeps the subscription, the last offset delivered per partition, the filter the server
last accepted and whether streaming is on; restore() subscribes again from the next offsets (without
topics that went away), re-applies the filter and restarts streaming with the same options.
Pending keeps the calls without an answer, so that those a lost connection took are sent again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .client_transport import KasockiClientError, client_error

# A call on the resuming connection: (event, arg) -> the server's answer.
Send = Callable[[str, Any], Awaitable[Any]]


class Stale(Exception):
    """Ends the resume of a connection that went away."""


@dataclass(eq=False)
class Call:
    """One call of the client and the future of its answer."""

    event: str
    arg: Any
    future: asyncio.Future[Any]
    resume: bool  # a resume step: never sent again
    stream_call: int  # start() and stop() calls so far


class Pending:
    """Calls without an answer yet: waiting to go out, or in flight on the current connection."""

    def __init__(self) -> None:
        self.waiting: list[Call] = []  # to send once live
        self.inflight: list[Call] = []  # sent on this connection, unanswered

    def __len__(self) -> int:
        return len(self.inflight) + len(self.waiting)

    def lost(self) -> None:
        """The connection went away: its resume steps end, its other calls go out again first, in order."""
        lost, self.inflight = self.inflight, []
        for call in lost:
            if call.resume and not call.future.done():
                call.future.set_exception(Stale())
        self.waiting[:0] = [call for call in lost if not call.resume]

    def take_all(self) -> list[Call]:
        """Every pending call, leaving none (the client is closing)."""
        pending, self.inflight, self.waiting = [*self.inflight, *self.waiting], [], []
        return pending


class ResumeState:
    """One client's subscription, offsets delivered, filter and streaming, kept for its resumes."""

    def __init__(self) -> None:
        self.subscription: list[dict[str, Any]] | None = None  # to resume, once subscribed
        self.filter: dict[str, Any] | None = None  # as the server last accepted it
        self.streaming = False
        self.start_options: Any = None  # of the start() in force
        self.offsets: dict[tuple[Any, int], int] = {}  # last delivered offset per (topic, partition)

    def positions(self) -> list[dict[str, Any]] | None:
        """Where a resume starts: ``[{topic, partition, offset}]``, or None before subscribing."""
        if self.subscription is None:
            return None
        return [dict(a, offset=self.next_offset(a)) for a in self.subscription]

    def next_offset(self, assignment: dict[str, Any]) -> int:
        """The last offset delivered + 1; the first answer's offset if nothing came from the partition."""
        last = self.offsets.get((assignment["topic"], assignment["partition"]))
        return assignment["offset"] if last is None else last + 1

    def succeeded(self, event: str, arg: Any, res: Any, latest_stream_call: bool) -> None:
        """Keep what a resume restores from a call the server answered."""
        if event == "subscribe":
            self.subscription = [_assignment(a) for a in res] if isinstance(res, list) else []
        elif event == "filter":
            self.filter = res
        elif event == "consume":
            self.delivered(res)
        elif event == "start" and latest_stream_call:  # no stop() since
            self.streaming, self.start_options = True, arg

    def stopped(self) -> None:
        """stop() was called: a resume does not restart streaming."""
        self.streaming, self.start_options = False, None

    def delivered(self, message: Any) -> None:
        """Note a message's offset, if it carries valid ``_kafka`` metadata."""
        meta = message.get("_kafka") if isinstance(message, dict) else None
        if isinstance(meta, dict) and type(meta.get("partition")) is int and type(meta.get("offset")) is int:
            key = (meta.get("topic"), meta["partition"])
            self.offsets[key] = max(meta["offset"], self.offsets.get(key, -1))

    def follow(self, error: Any) -> None:
        """Follow the cluster from an ``err`` event: partitions added are resumed, topics gone dropped."""
        if not isinstance(error, dict) or self.subscription is None:
            return
        if error.get("name") == "PartitionsChangedError" and isinstance(error.get("added"), list):
            known = {(a["topic"], a["partition"]) for a in self.subscription}
            added = [_assignment(a) for a in error["added"] if (a["topic"], a["partition"]) not in known]
            self.subscription += added
        elif error.get("name") == "TopicNotAvailableError" and isinstance(error.get("topic"), str):
            self.forget({error["topic"]})

    def forget(self, topics: set[str]) -> None:
        """Drop ``topics`` from the subscription and the offsets."""
        self.subscription = [a for a in self.subscription or [] if a["topic"] not in topics]
        self.offsets = {key: offset for key, offset in self.offsets.items() if key[0] not in topics}

    async def restore(self, call: Send) -> tuple[dict[str, Any], KasockiClientError | None]:
        """Subscribe, filter and start again through ``call``: what was restored, and a ResumeError if refused.

        Stale from ``call`` (the connection went away again) passes through.
        """
        resumed: dict[str, Any] = {"positions": None, "assignments": None, "filter": None, "started": False}
        try:
            if self.subscription is not None:
                resumed["positions"] = self.positions()
                answer = await self._resubscribe(resumed["positions"], call)
                self.subscription, resumed["assignments"] = [_assignment(a) for a in answer], answer
            if self.filter is not None:
                resumed["filter"] = await call("filter", self.filter)
            if self.subscription is not None and self.streaming:
                await call("start", self.start_options)
                resumed["started"] = True
        except KasockiClientError as exc:
            message = f"could not restore the subscription after a reconnect: {exc.message}"
            return resumed, client_error("ResumeError", message, event=exc.event, cause=exc.error)
        return resumed, None

    async def _resubscribe(self, positions: list[dict[str, Any]], call: Send) -> Any:
        """Subscribe from ``positions``; without the topics that are no longer available, if some are."""
        try:
            return await call("subscribe", positions)
        except KasockiClientError as exc:
            available = exc.details.get("availableTopics")
            if exc.name != "TopicNotAvailableError" or not isinstance(available, list):
                raise
            kept = [p for p in positions if p["topic"] in available]
            if not kept or len(kept) == len(positions):
                raise
            self.forget({p["topic"] for p in positions} - set(available))
            return await call("subscribe", kept)


def _assignment(a: dict[str, Any]) -> dict[str, Any]:
    return {"topic": a["topic"], "partition": a["partition"], "offset": a["offset"]}
