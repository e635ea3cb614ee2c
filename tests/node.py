"""Running the node scripts of tests/js against the live server."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
JS = ROOT / "tests" / "js"


def node() -> str:
    path = shutil.which("node")
    assert path, "node is not on PATH (see scripts/prerequisites.py)"
    assert (ROOT / "node_modules" / "socket.io-client").is_dir(), "node_modules is missing: run `npm ci`"
    return path


def run_script(script: str, *args: str, timeout: float = 60) -> dict[str, Any]:
    """Run tests/js/<script> to completion; return the JSON object it prints."""
    try:
        done = subprocess.run(
            [node(), str(JS / script), *args], cwd=ROOT, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{script} did not finish within {timeout}s; stderr:\n{exc.stderr!r}") from None
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, f"{script} exited with {done.returncode}:\n{stderr}"
    lines = done.stdout.decode().splitlines()
    assert len(lines) == 1, f"{script} should print one JSON line, printed {lines!r}"
    return orjson.loads(lines[0])


class Conversation:
    """A node script that reports JSON lines on stdout and waits for lines on stdin."""

    def __init__(self, process: asyncio.subprocess.Process, script: str) -> None:
        self.process = process
        self.script = script
        self._stderr = asyncio.ensure_future(process.stderr.read()) if process.stderr else None

    @classmethod
    async def start(cls, script: str, *args: str) -> Conversation:
        process = await asyncio.create_subprocess_exec(
            node(),
            str(JS / script),
            *args,
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process, script)

    async def expect(self, step: str, timeout: float = 30) -> dict[str, Any]:
        """The next line, which must report ``step``."""
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.script}: no {step!r} within {timeout}s{await self._failure()}") from None
        if not line:
            raise AssertionError(f"{self.script} ended before {step!r}{await self._failure()}")
        report = orjson.loads(line)
        assert report.get("step") == step, f"{self.script}: expected {step!r}, got {report!r}"
        return report

    async def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        await self.process.stdin.drain()

    async def finish(self, timeout: float = 30) -> None:
        try:
            code = await asyncio.wait_for(self.process.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"{self.script} did not exit within {timeout}s{await self._failure()}") from None
        assert code == 0, f"{self.script} exited with {code}{await self._failure()}"

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._stderr is not None:
            with contextlib.suppress(Exception):
                await self._stderr

    async def _failure(self) -> str:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        stderr = await self._stderr if self._stderr is not None else b""
        return f"; exit code {self.process.returncode}, stderr:\n{stderr.decode(errors='replace')}"
