"""Server processes under test: the project under uvicorn or daphne, and the ceiling-S app.

Each server runs as a child process in its own session, logs to a file in the
run's scratch folder and is stopped by its own pid (SIGINT, then SIGTERM, then
SIGKILL). ``ProcessStats`` reads a server's memory, threads, CPU time and TCP
connections to the broker with psutil; ``settle`` waits for its CPU to calm down.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
PROJECT_APP = "kasocki_project.asgi:application"
CEILING_APP = "bench.ceiling_app:app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Benchmark clients connect from a few loopback addresses, so per-address connection
# limits (where the server has them) are lifted, the scale figures may open up to the
# open-file limit's worth of connections, and the fan-in ramp may use every consumer one
# process can hold (the system check's ceiling); all other settings keep their defaults.
SERVER_SETTINGS = {
    "KASOCKI_MAX_CONNECTIONS": "20000",
    "KASOCKI_MAX_CONNECTIONS_PER_IP": "100000",
    "KASOCKI_MAX_CONNECTION_RATE_PER_IP": "100000",
    "KASOCKI_MAX_CONSUMERS": "1000",
}
# The listen queue of the scale figures' servers (uvicorn's default is 2048; the kernel caps it at somaxconn).
SCALE_BACKLOG = 16384


def raise_open_files() -> int:
    """Raise this process's soft limit of open files to its hard limit; children (servers, clients) inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def project_env(bootstrap: str, allowed_topics: list[str], database_url: str) -> dict[str, str]:
    """Environment of the project's processes: this broker, these topics, a throwaway database."""
    env = dict(os.environ)
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "kasocki_project.settings",
            "DJANGO_DEBUG": "false",
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KASOCKI_ALLOWED_TOPICS": ",".join(allowed_topics),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            **SERVER_SETTINGS,
        }
    )
    return env


def migrate(env: dict[str, str], log: Path) -> None:
    with open(log, "ab") as out:
        result = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=120,
        )
    if result.returncode != 0:
        raise RuntimeError(f"manage.py migrate failed:\n{tail(log)}")


def tail(path: Path, chars: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def uvicorn_command(app: str, port: int, backlog: int | None = None) -> list[str]:
    return [
        "-m", "uvicorn", app,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--log-level", "warning",
        "--no-access-log",
        "--timeout-graceful-shutdown", "5",
        *(("--backlog", str(backlog)) if backlog else ()),
    ]  # fmt: skip


def daphne_command(app: str, port: int) -> list[str]:
    return ["-m", "daphne", "-b", "127.0.0.1", "-p", str(port), "-v", "0", app]


class ServerProcess:
    """One server child process on 127.0.0.1."""

    def __init__(
        self,
        name: str,
        command: list[str],
        port: int,
        env: dict[str, str],
        log: Path,
        ready_path: str,
        profile: Path | None = None,
    ) -> None:
        self.name = name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.ready_path = ready_path
        prefix = [sys.executable]
        if profile is not None:
            # pyinstrument samples the server's main thread and writes a text report when it exits.
            prefix += ["-m", "pyinstrument", "-r", "text", "--show-all", "-o", str(profile)]
        self.argv = prefix + command
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60) -> ServerProcess:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = tail(self.log)
                print(f"--- {self.name} log (tail) ---\n{log}", file=sys.stderr)
                last = next((line for line in reversed(log.splitlines()) if line.strip()), "no output")
                raise RuntimeError(f"{self.name} did not start: {last.strip()}")
            time.sleep(0.1)
        return self

    def _answers(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            connection.request("GET", self.ready_path)
            return connection.getresponse().status == 200
        except OSError:
            return False
        finally:
            connection.close()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 20) -> None:
        """SIGINT (a graceful exit, which also lets a profiler write its report), then harder."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            if proc.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(wait)


@dataclass
class Sample:
    rss: int
    threads: int
    cpu: float  # user + system seconds, all threads
    broker_connections: int


class ProcessStats:
    """psutil readings of one process."""

    def __init__(self, pid: int, broker_port: int | None = None) -> None:
        self.process = psutil.Process(pid)
        self.broker_port = broker_port

    def cpu(self) -> float:
        times = self.process.cpu_times()
        return times.user + times.system

    def rss(self) -> int:
        return self.process.memory_info().rss

    def sample(self, connections: bool = False) -> Sample:
        with self.process.oneshot():
            rss = self.process.memory_info().rss
            threads = self.process.num_threads()
            cpu = self.cpu()
        broker = self.broker_connections() if connections else -1
        return Sample(rss=rss, threads=threads, cpu=cpu, broker_connections=broker)

    def broker_connections(self) -> int:
        """Established TCP connections from this process to the broker's port."""
        if self.broker_port is None:
            return -1
        return sum(
            1
            for conn in self.process.net_connections(kind="tcp")
            if conn.raddr and conn.raddr.port == self.broker_port and conn.status == psutil.CONN_ESTABLISHED
        )


def describe(sample: Sample) -> dict[str, Any]:
    return {
        "rss_mb": round(sample.rss / 2**20, 1),
        "threads": sample.threads,
        "broker_connections": sample.broker_connections,
    }


async def settle(stats: ProcessStats, limit: float, step: float = 2.0) -> tuple[float, float]:
    """Wait until the server's CPU is low or no longer falling (the work a ramp leaves behind:
    registry rows, closing connections), for at most ``limit`` seconds; (seconds waited, last core fraction).
    """
    began = time.monotonic()
    previous = math.inf
    while True:
        cpu = stats.cpu()
        await asyncio.sleep(step)
        fraction = (stats.cpu() - cpu) / step
        waited = time.monotonic() - began
        if fraction < 0.2 or previous - fraction < 0.05 or waited >= limit:
            return round(waited, 1), round(fraction, 2)
        previous = fraction
