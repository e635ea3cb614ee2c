"""Clients of the deployment test, each connecting from a loopback source address of its own.

nginx's ``hash $remote_addr consistent`` sends one address to one process, so clients spread
over the processes by connecting from distinct addresses (Linux routes all of 127.0.0.0/8 to lo).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import socketio

from kasocki_app.client import KasockiClient

ROOT = Path(__file__).resolve().parent.parent
CSRF_FIELD = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def loopback_addresses() -> Iterator[str]:
    """127.0.1.1, 127.0.1.2, ...: one fresh source address per client (127.0.0.x stay free for other uses)."""
    number = 257
    while True:
        yield f"127.{(number >> 16) & 255}.{(number >> 8) & 255}.{number & 255}"
        number += 1


def session_from(address: str) -> aiohttp.ClientSession:
    """An aiohttp session whose connections leave from ``address``; the test certificate is self-signed."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), ssl=False)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True))


class StreamClient:
    """A python-socketio client that records what arrives, in order: messages by position, errors, the end."""

    def __init__(self, address: str, transports: list[str] | None = None, headers: dict[str, str] | None = None):
        self.address = address
        self.transports = transports
        self.headers = headers or {}
        self.session = session_from(address)
        self.sio = socketio.AsyncClient(
            reconnection=False, http_session=self.session, ssl_verify=False, handle_sigint=False
        )
        self.log: list[tuple[float, str, Any]] = []  # (monotonic time, "message" or "err", position or error)
        self.refusal: Any = None
        self.disconnected_at: float | None = None
        self._ready: asyncio.Future[list[str]] | None = None
        self.sio.on("ready", self._on_ready)
        self.sio.on("message", self._on_message)
        self.sio.on("err", lambda error: self.log.append((time.monotonic(), "err", error)))
        self.sio.on("connect_error", self._on_connect_error)
        self.sio.on("disconnect", self._on_disconnect)

    def _on_ready(self, topics: list[str]) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_result(topics)

    def _on_message(self, message: dict[str, Any]) -> None:
        meta = message["_kafka"]
        self.log.append((time.monotonic(), "message", (meta["topic"], meta["partition"], meta["offset"])))

    def _on_connect_error(self, data: Any = None) -> None:
        self.refusal = data.get("data") if isinstance(data, dict) else data

    def _on_disconnect(self, *reason: Any) -> None:
        self.disconnected_at = time.monotonic()

    async def connect(self, url: str, timeout: float = 30) -> list[str]:
        """Connect and return the topics of ``ready``."""
        self._ready = asyncio.get_running_loop().create_future()
        await self.sio.connect(url, transports=self.transports, headers=self.headers, wait_timeout=timeout)
        return await asyncio.wait_for(self._ready, timeout)

    async def ok(self, event: str, arg: Any, timeout: float = 30) -> Any:
        err, res = await self.sio.call(event, arg, timeout=timeout)
        assert err is None, f"{event} failed for {self.address}: {err}"
        return res

    @property
    def sid(self) -> str:
        return str(self.sio.get_sid("/"))

    def received(self, topic: str) -> list[tuple[int, int]]:
        """(partition, offset) of every message of ``topic``, in arrival order."""
        return [(p, o) for _, kind, item in self.log if kind == "message" for t, p, o in [item] if t == topic]

    def errors(self) -> list[tuple[float, dict[str, Any]]]:
        return [(at, item) for at, kind, item in self.log if kind == "err"]

    async def close(self) -> None:
        # Bounded: a polling client's disconnect waits for its long-poll to be answered.
        with contextlib.suppress(Exception):
            if self.sio.connected:
                await asyncio.wait_for(self.sio.disconnect(), 5)
        await self.session.close()


class FailoverClient:
    """kasocki_app.client reading a topic to a known end, noting when it was cut off and when it resumed."""

    def __init__(self, url: str, address: str, transports: list[str]) -> None:
        self.kind = f"python {'+'.join(transports)}"
        self.address = address
        self.session = session_from(address)
        # socket.io's default reconnection delays: the resume time is what a default client sees.
        self.client = KasockiClient(url, transports=transports, http_session=self.session, ssl_verify=False)
        self.received: list[tuple[int, int]] = []
        self.errors: list[Any] = []
        self.disconnected_at: float | None = None
        self.resumed_at: float | None = None
        self.client.on("disconnect", lambda *_: setattr(self, "disconnected_at", time.time()))
        self.client.on("resumed", lambda *_: setattr(self, "resumed_at", time.time()))
        self.client.on_error(self.errors.append)
        self._reader: asyncio.Task[None] | None = None

    async def start(self, topic: str, partitions: int) -> str:
        await self.client.connect(timeout=30)
        await self.client.subscribe([{"topic": topic, "partition": p, "offset": 0} for p in range(partitions)])
        await self.client.start()
        self._reader = asyncio.ensure_future(self._read())
        return str(self.client.sio.get_sid("/"))

    async def _read(self) -> None:
        async for message in self.client.messages():
            self.received.append((message["_kafka"]["partition"], message["_kafka"]["offset"]))

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.session.close()


# kasocki-client.js under node, through nginx: subscribes from offset 0, streams, and reports
# JSON lines: subscribed, disconnect, resumed, then done once `total` messages arrived.
NODE_CLIENT = r"""
const https = require("node:https");
const { io } = require("socket.io-client");
const Kasocki = require("./kasocki_app/static/kasocki_app/kasocki-client.js");
const [url, address, topic, partitions, total] = process.argv.slice(1);
const say = (step, data) => process.stdout.write(JSON.stringify({ step, at: Date.now() / 1000, ...data }) + "\n");
const agent = new https.Agent({ localAddress: address, rejectUnauthorized: false });
const client = Kasocki.connect(io, url, { agent, rejectUnauthorized: false, forceNew: true });
const received = [];
const errors = [];
const sids = [];
let subscribed = false;
client.socket.on("connect", () => sids.push(client.socket.id));
client.on("err", (error) => errors.push(error));
client.on("disconnect", (reason) => say("disconnect", { reason }));
client.on("resumed", (resumed) => say("resumed", { sid: client.socket.id, positions: resumed.positions }));
client.on("message", (message) => {
  received.push([message._kafka.partition, message._kafka.offset]);
  // Stays connected afterwards, for the test to find its connection; the test ends the process.
  if (received.length === Number(total)) say("done", { received, errors, sids });
});
client.on("ready", async () => {
  if (subscribed) return;
  subscribed = true;
  const assignments = [];
  for (let p = 0; p < Number(partitions); p++) assignments.push({ topic, partition: p, offset: 0 });
  await client.subscribe(assignments);
  await client.start();
  say("subscribed", { sid: client.socket.id });
});
setTimeout(() => {
  console.error(`timed out with ${received.length} of ${total} messages`);
  process.exit(1);
}, 90000);
"""


class NodeClient:
    """kasocki-client.js in a node process; ``expect`` reads its next report."""

    kind = "javascript"

    def __init__(self, address: str) -> None:
        self.address = address
        self.process: asyncio.subprocess.Process | None = None
        self.reports: list[dict[str, Any]] = []

    async def start(self, url: str, topic: str, partitions: int, total: int) -> str:
        self.process = await asyncio.create_subprocess_exec(
            "node",
            "-e",
            NODE_CLIENT,
            url,
            self.address,
            topic,
            str(partitions),
            str(total),
            cwd=ROOT,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return str((await self.expect("subscribed"))["sid"])

    async def expect(self, step: str, timeout: float = 60) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            raise AssertionError(f"node client: no {step!r} within {timeout}s") from None
        if not line:
            stderr = await self.process.stderr.read() if self.process.stderr else b""
            raise AssertionError(f"node client ended before {step!r}: {stderr.decode(errors='replace')}")
        report = orjson.loads(line)
        self.reports.append(report)
        assert report["step"] == step, f"node client: expected {step!r}, got {report}"
        return dict(report)

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


class AdminBrowser:
    """A signed-in admin user's browser: session cookie, CSRF token and Origin/Referer like a browser's."""

    def __init__(self, url: str, address: str) -> None:
        self.url = url
        self.address = address
        self.session = session_from(address)

    async def form_token(self, path: str) -> str:
        async with self.session.get(f"{self.url}{path}", allow_redirects=False) as response:
            assert response.status == 200, f"GET {path}: {response.status}"
            found = CSRF_FIELD.search(await response.text())
        assert found, f"no CSRF token in {path}"
        return found.group(1)

    async def post(self, path: str, data: dict[str, Any], origin: str | None = None) -> tuple[int, str]:
        """POST a form the way a browser does after loading ``path``; (status, Location)."""
        form = {"csrfmiddlewaretoken": await self.form_token(path), **data}
        headers = {"Origin": origin or self.url, "Referer": f"{self.url}{path}"}
        async with self.session.post(f"{self.url}{path}", data=form, headers=headers, allow_redirects=False) as r:
            return r.status, r.headers.get("Location", "")

    async def login(self, username: str, password: str, origin: str | None = None) -> tuple[int, str]:
        return await self.post("/admin/login/?next=/admin/", {"username": username, "password": password}, origin)

    async def close(self) -> None:
        await self.session.close()
