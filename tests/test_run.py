"""`make run` (scripts/run.py) as a real process: serving the demo when it says so, one log line per request."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

from tests.e2e import http_status
from tests.live_server import free_port

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 90.0


class Output:
    """The lines a process writes (stdout and stderr), collected by a thread."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._read, args=(process,), daemon=True)
        self._thread.start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        assert process.stdout is not None
        with process.stdout:
            for raw in process.stdout:
                self._new.put(raw.decode(errors="replace").rstrip("\n"))
        self._new.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        """The first line (from now on) that holds ``text``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._new.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line with {text!r}:\n" + "\n".join(self.lines)) from None
            if line is None:
                raise AssertionError(f"the process ended with no line with {text!r}:\n" + "\n".join(self.lines))
            self.lines.append(line)
            if text in line:
                return line

    def rest(self) -> list[str]:
        """Every line, once the process has closed its output."""
        self._thread.join(30)
        while (line := self._new.get_nowait()) is not None:
            self.lines.append(line)
        return self.lines


def test_make_run_serves_the_demo_topic_once_it_says_so_and_logs_each_request_once(kafka, tmp_path):
    topic = f"test-demo-{uuid.uuid4().hex[:12]}"
    address = f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap,
        "KASOCKI_DEMO_TOPIC": topic,
        "KASOCKI_ALLOWED_TOPICS": "",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
    }
    # A session of its own, so that the test can press Ctrl-C as a terminal does: SIGINT to the group.
    process = subprocess.Popen(
        [sys.executable, "scripts/run.py", address],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    output = Output(process)
    probe = uuid.uuid4().hex
    try:
        output.wait_for(f"Serving Kasocki on http://{address}", START_TIMEOUT)
        # At once, as a user who read that line: ready, and the demo topic is there.
        assert http_status(f"http://{address}/readyz") == 200
        with urllib.request.urlopen(f"http://{address}/v2/stream/{topic}", timeout=10) as stream:
            assert stream.status == 200 and stream.read(3) == b":ok"
        assert http_status(f"http://{address}/healthz?probe={probe}") == 200
        assert http_status(f"http://{address}/no-such-page-{probe}") == 404
        output.wait_for(f"GET /no-such-page-{probe} 404", 10)
    finally:
        os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(30)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(5)
            kafka.delete_topics([topic])
    lines = output.rest()
    # Each request once: the server's access line, and Django's own line for the 404.
    for text in (
        f"GET /healthz?probe={probe} 200",
        f"GET /no-such-page-{probe} 404",
        f"Not Found: /no-such-page-{probe}",
    ):
        found = [line for line in lines if text in line]
        assert len(found) == 1, "\n".join(found)
