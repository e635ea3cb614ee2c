"""Helpers for end-to-end tests: reach into the live server's state, wait for conditions, ask over HTTP."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import orjson


def server_service() -> Any:
    """The Service (connections by sid) of the live server's socket.io namespace."""
    from kasocki_project.asgi import application

    return application.sio.namespace_handlers["/"].service


async def wait_until(condition: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    """Wait for state changed by the server's thread; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def collect(client: Any, event: str, count: int, timeout: float = 15) -> list[Any]:
    """Exactly ``count`` payloads of ``event``."""
    return [await client.next(event, timeout) for _ in range(count)]


def offsets(messages: list[dict[str, Any]]) -> list[tuple[str, int, int]]:
    return [(m["_kafka"]["topic"], m["_kafka"]["partition"], m["_kafka"]["offset"]) for m in messages]


def http_status(url: str) -> int:
    """The status of a GET, error statuses included."""
    return http_json(url, decode=False)[0]


def http_json(url: str, decode: bool = True) -> tuple[int, Any]:
    """The status and JSON body of a GET, error statuses included."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, orjson.loads(response.read()) if decode else None
    except urllib.error.HTTPError as exc:
        with exc:  # the error holds the response's connection
            return exc.code, orjson.loads(exc.read()) if decode else None
