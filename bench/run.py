"""Kasocki benchmark: throughput, latency and scale of the real server against a real broker.

    .venv/bin/python bench/run.py                 # the full run (make bench), under 10 minutes
    .venv/bin/python bench/run.py --quick         # small counts, a smoke test of the whole suite
    .venv/bin/python bench/run.py --only 4a,5     # some figures only (see bench/README.md)
    .venv/bin/python bench/run.py --out FILE      # JSON elsewhere than bench/results/latest.json
    .venv/bin/python bench/run.py --profile DIR   # run project servers under pyinstrument

Reuses the broker at KAFKA_BOOTSTRAP_SERVERS when reachable, else starts one with
scripts/kafka.py (and stops it at the end). Produces its own topics, runs the
server as a subprocess with a throwaway SQLite database, and deletes its topics
when done. Every figure is the median of several rounds; the ceilings are
measured in the same run so that figures read as ratios of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402

from bench import memory, report, scale_run, workloads  # noqa: E402
from bench.kafka_setup import Topics, broker_port, produce_dataset, start_or_reuse_broker  # noqa: E402
from bench.scale import FULL_SCALE, QUICK_SCALE, ScalePlan  # noqa: E402
from bench.servers import (  # noqa: E402
    CEILING_APP,
    PROJECT_APP,
    SERVER_SETTINGS,
    ProcessStats,
    ServerProcess,
    daphne_command,
    describe,
    free_port,
    migrate,
    project_env,
    raise_open_files,
    uvicorn_command,
)

T = TypeVar("T")
DEFAULT_OUT = ROOT / "bench" / "results" / "latest.json"


@dataclass(frozen=True)
class Plan:
    """Counts and time caps of one run. Caps bound every round whatever the server does."""

    budget: float  # seconds for the whole run; the fan-in ramp shrinks to fit
    rounds: int
    partitions: int
    records: int  # in the data topic; the slow client needs about 200k available
    ceiling_k: int
    ceiling_s: int
    ceiling_s_emit: int
    consume_1: int
    consume_8: int
    start: int
    batch: int
    cap: float  # seconds, per throughput round
    scan_cap: float  # seconds, per filtered-scan round
    latency_rate: float
    latency_warmup: float
    latency_seconds: float
    storm_clients: int
    slow_seconds: float
    fan_clients: int
    fan_partitions: int
    fan_rate_per_client: float
    fan_concurrency: int
    fan_ramp: float  # at most this many seconds to open the clients
    fan_warmup: float
    fan_window: float


FULL = Plan(
    budget=1800, rounds=3, partitions=4, records=240_000,
    ceiling_k=240_000, ceiling_s=60_000, ceiling_s_emit=20_000,
    consume_1=8_000, consume_8=16_000, start=60_000, batch=240_000,
    cap=8.0, scan_cap=10.0,
    latency_rate=1000, latency_warmup=1.0, latency_seconds=5.0,
    storm_clients=100, slow_seconds=10.0,
    fan_clients=1000, fan_partitions=100, fan_rate_per_client=2.0, fan_concurrency=20, fan_ramp=200.0,
    fan_warmup=3.0, fan_window=8.0,
)  # fmt: skip
QUICK = Plan(
    budget=240, rounds=3, partitions=4, records=20_000,
    ceiling_k=20_000, ceiling_s=5_000, ceiling_s_emit=2_000,
    consume_1=1_000, consume_8=2_000, start=5_000, batch=20_000,
    cap=4.0, scan_cap=5.0,
    latency_rate=1000, latency_warmup=0.5, latency_seconds=1.5,
    storm_clients=100, slow_seconds=3.0,
    fan_clients=50, fan_partitions=10, fan_rate_per_client=2.0, fan_concurrency=10, fan_ramp=20.0,
    fan_warmup=1.0, fan_window=2.0,
)  # fmt: skip

FIGURE_NUMBERS = {number: key for key, number, _title, _unit in report.FIGURES}


def arun(coro: Coroutine[Any, Any, T]) -> T:
    """Run a workload on a fresh event loop (uvloop when installed, as the servers use)."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


class Bench:
    def __init__(self, args: argparse.Namespace, plan: Plan, scale_plan: ScalePlan) -> None:
        self.args = args
        self.plan = plan
        self.scale_plan = scale_plan
        self.scale_topics: dict[str, str] = {}
        self.began = time.monotonic()
        self.load_at_start = os.getloadavg()
        self.deadline = self.began + plan.budget
        self.only = _parse_only(args.only)
        self.scratch = Path(tempfile.mkdtemp(prefix="kasocki-bench-"))
        self.figures: dict[str, Any] = {}
        self.dataset: dict[str, Any] = {}
        self.servers: list[ServerProcess] = []
        self.producers: list[subprocess.Popen[bytes]] = []
        self.bootstrap = ""
        self.stop_broker: Callable[[], None] | None = None
        self.topics: Topics | None = None
        self.env: dict[str, str] = {}
        self.main: ServerProcess | None = None
        self.server_errors: dict[str, list[str]] = {}

    # --- helpers ----------------------------------------------------------------

    def wanted(self, key: str) -> bool:
        """Whether to run a figure: selected with --only (or no --only), and time left in the budget."""
        if self.only is not None and key not in self.only:
            return False
        if self.remaining() <= 0:
            number, title, unit = report.TITLES[key]
            self.log(f"figure {number} skipped: the {self.plan.budget:.0f} s time budget is spent")
            self.figures[key] = {"figure": number, "title": title, "value": float("nan"), "unit": unit,
                                 "skipped": f"the {self.plan.budget:.0f} s time budget was spent"}  # fmt: skip
            return False
        return True

    def log(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f}s] {text}", file=sys.stderr, flush=True)

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    @contextlib.contextmanager
    def measuring(self, key: str, *also: str) -> Iterator[None]:
        """Record a figure's failure instead of ending the run (``also``: other figures of the same measurement)."""
        number, title, _unit = report.TITLES[key]
        others = f" (and {', '.join(report.TITLES[k][0] for k in also)})" if also else ""
        self.log(f"figure {number}: {title}{others}")
        began = time.monotonic()
        try:
            yield
        except Exception as exc:
            self.log(f"figure {number} failed: {exc!r}")
            traceback.print_exc(file=sys.stderr)
            for failed in (key, *also):
                number, title, unit = report.TITLES[failed]
                self.figures[failed] = {"figure": number, "title": title, "value": float("nan"), "unit": unit,
                                        "error": f"{type(exc).__name__}: {exc}"[:500]}  # fmt: skip
        for done in (key, *also):
            if done in self.figures:
                self.figures[done]["wall_seconds"] = round(time.monotonic() - began, 1)

    def server(
        self,
        name: str,
        kind: str = "uvicorn",
        app: str = PROJECT_APP,
        extra_env: dict[str, str] | None = None,
        backlog: int | None = None,
    ) -> ServerProcess:
        """A server subprocess, started; ``extra_env`` changes settings for this one (e.g. a what-if)."""
        port = free_port()
        command = daphne_command(app, port) if kind == "daphne" else uvicorn_command(app, port, backlog)
        profile = None
        if self.args.profile and app == PROJECT_APP:
            profile = Path(self.args.profile).resolve() / f"{name}.txt"
            profile.parent.mkdir(parents=True, exist_ok=True)
        ready = "/healthz" if app == PROJECT_APP else "/socket.io/?EIO=4&transport=polling"
        env = {**self.env, **(extra_env or {})}
        server = ServerProcess(name, command, port, env, self.scratch / f"{name}.log", ready, profile)
        self.servers.append(server)
        return server.start()

    def stop_server(self, server: ServerProcess | None) -> None:
        if server is not None:
            server.stop()
            with contextlib.suppress(ValueError):
                self.servers.remove(server)
            self.collect_log_errors(server)

    def collect_log_errors(self, server: ServerProcess) -> None:
        """Keep the first error lines of a server's log with the results (the scratch folder goes away)."""
        try:
            lines = server.log.read_text(errors="replace").splitlines()
        except OSError:
            return
        markers = (" ERROR ", " CRITICAL ", "Traceback", "ERROR:")
        found = [line[:300] for line in lines if any(marker in line for marker in markers)]
        if found:
            kept = self.server_errors.setdefault(server.name, [])
            kept.extend(found[: max(0, 10 - len(kept))])
            self.log(f"  {server.name}: {len(found)} error lines in its log, e.g. {found[0][:200]}")

    def main_server(self) -> ServerProcess:
        if self.main is None or not self.main.alive():
            self.main = self.server("uvicorn-main")
        return self.main

    def producer(self, topic: str, partitions: int, rate: float, duration: float) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "bench.producer", "--bootstrap", self.bootstrap, "--topic", topic,
                "--partitions", str(partitions), "--rate", str(rate), "--duration", str(duration)]  # fmt: skip
        with open(self.scratch / "producer.log", "ab") as log:
            proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=log, start_new_session=True)  # fmt: skip
        self.producers.append(proc)
        return proc

    def stop_producer(self, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
        if proc.poll() is None:
            proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        with contextlib.suppress(ValueError):
            self.producers.remove(proc)
        try:
            return orjson.loads(out.strip().splitlines()[-1])
        except (IndexError, orjson.JSONDecodeError):
            return {}

    def rounds(self, make: Callable[[], dict[str, Any]]) -> list[dict[str, Any]]:
        results = []
        for index in range(self.plan.rounds):
            result = make()
            self.log(f"  round {index + 1}: {_short(result)}")
            results.append(result)
        return results

    # --- the run ----------------------------------------------------------------

    def setup(self) -> None:
        self.log("broker: reusing KAFKA_BOOTSTRAP_SERVERS when reachable, else starting one")
        self.bootstrap, self.stop_broker = start_or_reuse_broker()
        self.topics = Topics(self.bootstrap)
        self.topics.wait_ready()
        plan = self.plan
        self.data_topic = self.topics.create("data", plan.partitions)
        self.latency_topic = self.topics.create("latency", plan.partitions)
        self.fan_topic = self.topics.create("fanin", plan.fan_partitions)
        self.scale_topics = scale_run.create_topics(self.topics, lambda key: self.only is None or key in self.only)
        self.log(f"producing {plan.records:,} records to {self.data_topic}")
        self.dataset = produce_dataset(self.bootstrap, self.data_topic, plan.partitions, plan.records)
        self.log(f"  {self.dataset}")
        self.highs = self.dataset["high_watermarks"]
        self.env = project_env(
            self.bootstrap,
            [self.data_topic, self.latency_topic, self.fan_topic, *self.scale_topics.values()],
            f"sqlite:///{self.scratch / 'bench.sqlite3'}",
        )
        if self.args.kafka_config:
            self.env["DJANGO_SETTINGS_MODULE"] = "bench.whatif_settings"
            self.env["KASOCKI_BENCH_KAFKA_CONFIG"] = orjson.dumps(self.args.kafka_config).decode()
        migrate(self.env, self.scratch / "migrate.log")

    def run(self) -> None:
        plan = self.plan
        total = sum(self.highs)
        for key, server_settings in (("ceiling_kafka", False), ("kafka_server_settings", True)):
            if self.wanted(key):
                with self.measuring(key):
                    extra = self.args.kafka_config if server_settings else None
                    rounds = self.rounds(
                        lambda s=server_settings, e=extra: workloads.ceiling_kafka(
                            self.bootstrap,
                            self.data_topic,
                            plan.partitions,
                            min(plan.ceiling_k, total),
                            plan.cap / 2 if s else plan.cap,
                            s,
                            e,
                        )
                    )
                    self.figures[key] = report.figure(
                        key,
                        rounds,
                        "rate",
                        consumer_config="the server's (kasocki_app.kafka)" if server_settings else "librdkafka's",
                    )

        modes = [
            (key, mode, count)
            for key, mode, count in (
                ("ceiling_socketio", "eio", plan.ceiling_s),
                ("ceiling_socketio_emit", "emit", plan.ceiling_s_emit),
            )
            if self.wanted(key)
        ]
        if modes:
            ceiling = self.server("uvicorn-ceiling", app=CEILING_APP)
            try:
                for key, mode, count in modes:
                    with self.measuring(key):
                        rounds = self.rounds(
                            lambda m=mode, c=count: arun(
                                workloads.ceiling_socketio(ceiling.url, c, plan.cap, ceiling.pid, m)
                            )
                        )
                        self.figures[key] = report.figure(key, rounds, "rate", mode=mode)
            finally:
                self.stop_server(ceiling)

        for key, in_flight, count in (("consume_1", 1, plan.consume_1), ("consume_8", 8, plan.consume_8)):
            if self.wanted(key):
                with self.measuring(key):
                    server = self.main_server()
                    rounds = self.rounds(
                        lambda n=in_flight, c=count, s=server: arun(
                            workloads.consume_acks(s.url, self.data_topic, plan.partitions, c, plan.cap, n, s.pid)
                        )
                    )
                    self.figures[key] = report.figure(key, rounds, "rate", in_flight=in_flight)

        if self.wanted("consume_1_daphne"):
            with self.measuring("consume_1_daphne"):
                daphne = self.server("daphne-consume", kind="daphne")
                try:
                    rounds = self.rounds(
                        lambda: arun(
                            workloads.consume_acks(
                                daphne.url, self.data_topic, plan.partitions, plan.consume_1, plan.cap, 1, daphne.pid
                            )
                        )
                    )
                    self.figures["consume_1_daphne"] = report.figure("consume_1_daphne", rounds, "rate", in_flight=1)
                finally:
                    self.stop_server(daphne)

        if self.wanted("start_uvicorn"):
            with self.measuring("start_uvicorn"):
                self.figures["start_uvicorn"] = self.stream_figure("start_uvicorn", self.main_server(), None)

        if self.wanted("batch_500"):
            with self.measuring("batch_500"):
                self.figures["batch_500"] = self.stream_figure("batch_500", self.main_server(), 500)

        if self.wanted("filtered_scan"):
            with self.measuring("filtered_scan"):
                server = self.main_server()
                rounds = self.rounds(
                    lambda: arun(
                        workloads.filtered_scan(server.url, self.data_topic, self.highs, plan.scan_cap, server.pid)
                    )
                )
                self.figures["filtered_scan"] = report.figure(
                    "filtered_scan", rounds, "rate", filter={"bucket": workloads.FILTER_BUCKET}
                )

        if self.wanted("latency_1000"):
            with self.measuring("latency_1000"):
                self.figures["latency_1000"] = self.latency_figure(self.main_server())

        if self.wanted("connect_storm"):
            with self.measuring("connect_storm"):
                server = self.main_server()
                rounds = self.rounds(
                    lambda: arun(
                        workloads.connect_storm(
                            server.url, self.data_topic, plan.storm_clients, server.pid, broker_port(self.bootstrap)
                        )
                    )
                )
                self.figures["connect_storm"] = report.figure("connect_storm", rounds, "p99_ms")

        self.stop_server(self.main)
        self.main = None

        if self.wanted("start_daphne"):
            with self.measuring("start_daphne"):
                daphne = self.server("daphne", kind="daphne")
                try:
                    self.figures["start_daphne"] = self.stream_figure("start_daphne", daphne, None)
                finally:
                    self.stop_server(daphne)

        if self.wanted("slow_client"):
            with self.measuring("slow_client"):
                self.figures["slow_client"] = self.slow_client_figure()

        if self.wanted("fan_in"):
            with self.measuring("fan_in"):
                self.figures["fan_in"] = self.fan_in_figure()

        if self.wanted("catchup_memory"):
            with self.measuring("catchup_memory"):
                self.figures["catchup_memory"] = self.catchup_memory_figure()

        scale_run.run(self, self.scale_plan, self.scale_topics, arun)

    def stream_figure(self, key: str, server: ServerProcess, batch: int | None) -> dict[str, Any]:
        plan = self.plan
        target = min(plan.batch if batch else plan.start, sum(self.highs))
        rounds = self.rounds(
            lambda: arun(
                workloads.stream(server.url, self.data_topic, plan.partitions, target, plan.cap, server.pid, batch)
            )
        )
        return report.figure(key, rounds, "rate", batch=batch)

    def latency_figure(self, server: ServerProcess) -> dict[str, Any]:
        plan = self.plan
        duration = plan.rounds * (plan.latency_warmup + plan.latency_seconds + 3) + 5
        producer = self.producer(self.latency_topic, plan.partitions, plan.latency_rate, duration)
        control = workloads.ControlConsumer(self.bootstrap, self.latency_topic, plan.partitions).start()
        try:
            time.sleep(1.0)  # the producer's first records and the topic's metadata
            rounds = self.rounds(
                lambda: arun(
                    workloads.latency(
                        server.url,
                        self.latency_topic,
                        plan.partitions,
                        plan.latency_warmup,
                        plan.latency_seconds,
                        control,
                    )
                )
            )
        finally:
            produced = self.stop_producer(producer)
            control.stop()
        return report.figure(
            "latency_1000", rounds, "p99_ms", producer=produced, producer_linger_ms=1, rate=plan.latency_rate
        )

    def slow_client_figure(self) -> dict[str, Any]:
        plan = self.plan
        available = sum(self.highs)

        def one_round() -> dict[str, Any]:
            server = self.server("uvicorn-slow")  # a fresh process per round: RSS from a clean start
            try:
                return arun(
                    workloads.slow_client(server.url, self.data_topic, plan.partitions, plan.slow_seconds, server.pid)
                )
            finally:
                self.stop_server(server)

        rounds = self.rounds(one_round)
        return report.figure("slow_client", rounds, "growth_mb", messages_available=available)

    def catchup_memory_figure(self) -> dict[str, Any]:
        """Figure 17 (bench/memory.py): every server, transport and mode, one round each."""
        quick = self.args.quick
        rows = arun(
            memory.run_servers(
                self.bootstrap,
                list(memory.SERVERS),
                list(memory.TRANSPORTS),
                list(memory.MODES),
                memory.CLIENTS,
                5.0 if quick else 15.0,
                5.0 if quick else 10.0,
                self.scratch,
                lambda line: self.log("  " + line),
            )
        )
        return report.figure("catchup_memory", [memory.worst(rows)], "worst_peak_over_bound", rows=rows)

    def fan_in_figure(self) -> dict[str, Any]:
        plan = self.plan
        measure = plan.fan_warmup + plan.rounds * plan.fan_window
        reserve = measure + 45  # measuring, then closing the clients and the server
        ramp = min(plan.fan_ramp, self.remaining() - reserve)
        if ramp < 10:
            return {"figure": "8", "title": report.TITLES["fan_in"][1], "value": float("nan"), "unit": "ms",
                    "skipped": f"only {self.remaining():.0f} s of the time budget left"}  # fmt: skip
        server = self.server("uvicorn-fanin")
        try:
            stats = ProcessStats(server.pid, broker_port(self.bootstrap))
            idle = describe(stats.sample(connections=True))
            result = arun(self._fan_in(server, ramp, measure))
        finally:
            self.stop_server(server)
        clients = result["ramp"]["clients"]
        expected = clients * plan.fan_rate_per_client
        extra: dict[str, Any] = {
            "clients": clients,
            "wanted_clients": plan.fan_clients,
            "partitions": plan.fan_partitions,
            "producer_rate": plan.fan_partitions * plan.fan_rate_per_client,
            "expected_rate": expected,
            "idle_server": idle,
            "ramp": result["ramp"],
            "producer": result["producer"],
        }
        if clients < plan.fan_clients:
            extra["partial"] = (
                f"only {clients} of {plan.fan_clients} clients were connected within the "
                f"{ramp:.0f} s ramp ({result['ramp']['failed']} failed)"
            )
        fig = report.figure("fan_in", result["windows"], "p99_ms", **extra)
        fig["max_rss_mb"] = max((w["rss_mb"] for w in result["windows"]), default=float("nan"))
        return fig

    async def _fan_in(self, server: ServerProcess, ramp: float, measure: float) -> dict[str, Any]:
        """The producer runs from the start, so clients join a live stream and the broker is in a steady state."""
        plan = self.plan
        fan = workloads.FanIn(server.url, self.fan_topic, plan.fan_partitions, server.pid, broker_port(self.bootstrap))
        control = workloads.ControlConsumer(self.bootstrap, self.fan_topic, plan.fan_partitions).start()
        rate = plan.fan_partitions * plan.fan_rate_per_client
        producer = self.producer(self.fan_topic, plan.fan_partitions, rate, ramp + measure + 120)
        try:
            self.log(f"  opening up to {plan.fan_clients} clients within {ramp:.0f} s")
            ramped = await fan.ramp(plan.fan_clients, plan.fan_concurrency, time.monotonic() + ramp)
            self.log(f"  ramp: {ramped}")
            await asyncio.sleep(plan.fan_warmup)
            windows = []
            for index in range(plan.rounds):
                window = await fan.window(plan.fan_window, control)
                self.log(f"  window {index + 1}: {_short(window)}")
                windows.append(window)
        finally:
            produced = self.stop_producer(producer)
            control.stop()
            await fan.close()
        return {"ramp": ramped, "windows": windows, "producer": produced}

    def cleanup(self) -> None:
        for proc in list(self.producers):
            self.stop_producer(proc)
        for server in list(self.servers):
            self.stop_server(server)
        if self.topics is not None:
            self.topics.delete_all()
        if self.stop_broker is not None:
            self.log("stopping the broker this run started")
            self.stop_broker()
        if self.args.keep:
            self.log(f"scratch files kept in {self.scratch}")
        else:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def results(self) -> dict[str, Any]:
        targets = report.evaluate(self.figures)
        return {
            "format": 1,
            "mode": "quick" if self.args.quick else "full",
            "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "wall_seconds": round(time.monotonic() - self.began, 1),
            "plan": {**asdict(self.plan), "scale": asdict(self.scale_plan)},
            "machine": machine(),
            # Other work on the machine skews every figure; the 1-minute load average tells how much.
            "load_average_1min": {"start": round(self.load_at_start[0], 2), "end": round(os.getloadavg()[0], 2)},
            "dataset": self.dataset,
            "server_settings": SERVER_SETTINGS,
            "server_kafka_config_override": self.args.kafka_config or None,
            "server_revision": revision(),
            "figures": self.figures,
            "targets": targets,
            "server_log_errors": self.server_errors,
        }


def revision() -> dict[str, Any]:
    """The commit the server code came from, and whether its files had uncommitted changes."""

    def git(*argv: str) -> str:
        try:
            return subprocess.run(
                ["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    commit = git("rev-parse", "HEAD")
    changed = git("status", "--porcelain", "--", "kasocki_app", "kasocki_project")
    return {"commit": commit or None, "server_files_changed": bool(changed)}


def machine() -> dict[str, Any]:
    packages = ("python-socketio", "python-engineio", "uvicorn", "daphne", "websockets", "confluent-kafka",
                "orjson", "uvloop", "Django")  # fmt: skip
    versions = {}
    for name in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "packages": versions,
    }


def _short(result: dict[str, Any]) -> str:
    keep = {k: (round(v, 1) if isinstance(v, float) else v) for k, v in result.items() if not isinstance(v, list)}
    return str(keep)[:300]


def _parse_only(text: str | None) -> set[str] | None:
    if not text:
        return None
    keys = set()
    for item in text.split(","):
        item = item.strip()
        lettered = {k for n, k in FIGURE_NUMBERS.items() if n.rstrip("abcdefgh") == item}  # "11": 11a..11e
        if item in FIGURE_NUMBERS:
            keys.add(FIGURE_NUMBERS[item])
        elif item in report.TITLES:
            keys.add(item)
        elif item in report.GROUPS:
            keys |= {FIGURE_NUMBERS[n] for n in report.GROUPS[item]}
        elif lettered:
            keys |= lettered
        else:
            raise SystemExit(
                f"unknown figure {item!r}; use numbers ({', '.join(FIGURE_NUMBERS)}), keys, "
                f"or a group ({', '.join(report.GROUPS)})"
            )
    return keys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test of the whole suite")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file (default: %(default)s)")
    parser.add_argument("--only", help="comma-separated figures to run, e.g. 1,2,4a,5")
    parser.add_argument("--rounds", type=int, help="rounds per figure (default 3)")
    parser.add_argument(
        "--budget", type=float, help="seconds after which no new figure starts (default 1800; 240 with --quick)"
    )
    parser.add_argument("--fan-clients", type=int, help="clients for figure 8 (default 1000; 50 with --quick)")
    parser.add_argument("--sse-clients", type=int, help="SSE clients for figure 16 (default 1000; 100 with --quick)")
    parser.add_argument(
        "--scale-levels", help="the three client counts of figure 11 (default 1000,3000,10000; 50,100,200 with --quick)"
    )
    parser.add_argument("--profile", metavar="DIR", help="run the project's servers under pyinstrument, reports in DIR")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (server logs)")
    parser.add_argument(
        "--kafka-config",
        metavar="JSON",
        help="what-if: extra librdkafka settings for the server's consumers, e.g. '{\"fetch.queue.backoff.ms\": 10}'",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.kafka_config:
        try:
            args.kafka_config = orjson.loads(args.kafka_config)
        except orjson.JSONDecodeError as exc:
            parser.error(f"--kafka-config: {exc}")
        if not isinstance(args.kafka_config, dict):
            parser.error("--kafka-config must be a JSON object")
    if args.rounds:
        plan = replace(plan, rounds=args.rounds)
    if args.budget:
        plan = replace(plan, budget=args.budget)
    if args.fan_clients:
        plan = replace(plan, fan_clients=args.fan_clients)
    scale_plan = QUICK_SCALE if args.quick else FULL_SCALE
    if args.scale_levels:
        levels = tuple(int(n) for n in args.scale_levels.split(","))
        if len(levels) != 3 or any(n < 1 for n in levels):
            parser.error("--scale-levels takes three client counts, e.g. 1000,3000,10000")
        scale_plan = replace(scale_plan, fan_levels=(levels[0], levels[1], levels[2]))
    if args.sse_clients:
        scale_plan = replace(scale_plan, sse_clients=args.sse_clients)
    # Thousands of sockets in the servers and the client processes: they inherit this limit.
    raise_open_files()
    bench = Bench(args, plan, scale_plan)
    status = 0
    try:
        bench.setup()
        bench.run()
    except KeyboardInterrupt:
        bench.log("interrupted; cleaning up")
        status = 130
    except Exception:
        bench.log("the benchmark could not run:")
        traceback.print_exc(file=sys.stderr)
        status = 1
    finally:
        bench.cleanup()
    results = bench.results()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    print()
    print(f"Kasocki benchmark ({results['mode']}, {plan.rounds} rounds, medians) in {results['wall_seconds']} s")
    load = results["load_average_1min"]
    print(
        f"(machine: {os.cpu_count()} CPUs; 1-minute load average {load['start']} at the start, "
        f"{load['end']} at the end)"
    )
    if args.kafka_config:
        print(f"WHAT-IF: the server's consumers ran with extra librdkafka settings {args.kafka_config}")
    print(report.table(bench.figures, results["targets"]))
    print(f"\nresults: {out}")
    return status


if __name__ == "__main__":
    sys.exit(main())
