"""Run a ``curl -N ...`` command line as a shell splits it, and read the server-sent events it prints.

Without curl on the machine, the same request (the URL and the ``-H`` headers of the command) is
made from Python instead, so that the command's text is still what is tested.
"""

from __future__ import annotations

import itertools
import queue
import shlex
import shutil
import subprocess
import threading
import urllib.request
from typing import IO, Any

import orjson


class CurlStream:
    """One run of the command; its output lines are read with a timeout each."""

    def __init__(self, command: str) -> None:
        args = shlex.split(command)  # what a POSIX shell passes to curl
        assert args[:2] == ["curl", "-N"], args
        self.url = args[-1]
        self.headers = dict(value.split(": ", 1) for flag, value in itertools.pairwise(args) if flag == "-H")
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._process: subprocess.Popen[bytes] | None = None
        self._response: Any = None
        curl = shutil.which("curl")
        output: IO[bytes]
        if curl is not None:
            self._process = subprocess.Popen(
                [curl, *args[1:]], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
            )
            assert self._process.stdout is not None
            output = self._process.stdout
        else:
            request = urllib.request.Request(self.url, headers=self.headers)
            output = self._response = urllib.request.urlopen(request, timeout=30)
        self._reader = threading.Thread(target=self._pump, args=(output,), name="curl-output", daemon=True)
        self._reader.start()

    def _pump(self, output: IO[bytes]) -> None:
        try:
            with output:
                for line in output:
                    self._lines.put(line.decode())
        except Exception:  # the response closed under the read by close(): the end, as EOF is
            pass
        self._lines.put(None)

    def line(self, timeout: float = 30) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the command printed nothing for {timeout}s: {self.url}") from None
        assert line is not None, f"the stream ended: {self.url}"
        return line.rstrip("\r\n")

    def started(self) -> str:
        """The first id the stream sent: the server has subscribed, so what is produced now arrives."""
        while not (line := self.line()).startswith("id: "):
            pass
        return line[4:]

    def messages(self, count: int) -> list[Any]:
        """The data of the next ``count`` message events."""
        found: list[Any] = []
        while len(found) < count:
            line = self.line()
            if line.startswith("event: "):
                assert line == "event: message", line
            elif line.startswith("data: "):
                found.append(orjson.loads(line[6:]))
        return found

    def close(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(10)
        if self._response is not None:
            self._response.close()
        self._reader.join(10)
