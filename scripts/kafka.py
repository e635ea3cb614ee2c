#!/usr/bin/env python3
"""Run a single-node Apache Kafka broker (KRaft) on loopback for development and tests.

    python scripts/kafka.py start [--name NAME] [--port PORT]   # prints the bootstrap address
    python scripts/kafka.py status [--name NAME]
    python scripts/kafka.py stop [--name NAME] [--keep-data]

The broker's release jars are resolved from Maven Central with ``mvn`` (see
``tools/kafka/pom.xml``) into a cache outside the repository, so only the first
start downloads. Each broker keeps its data in a fresh temporary directory that
``stop`` removes.

``stop --keep-data`` (``stop(name, keep_data=True)``) ends the broker with
SIGTERM but keeps its data directory; the next ``start`` of the same name then
restarts it from that data, on the same port, as a broker that went down and came
back (its topics and records are still there). A plain ``stop`` discards the kept
data. Standard library only: it runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
POM = ROOT / "tools" / "kafka" / "pom.xml"
START_TIMEOUT = float(os.environ.get("KASOCKI_KAFKA_START_TIMEOUT", "90"))
STOP_TIMEOUT = 20.0

# Broker settings for a throwaway single node. auto.create.topics.enable is off
# so that asking for a topic that does not exist never creates it.
SERVER_PROPERTIES = """\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data_dir}/logs
num.partitions=1
auto.create.topics.enable=false
delete.topic.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.check.interval.ms=1000
"""

LOG4J2_YAML = """\
Configuration:
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
"""


class BrokerError(RuntimeError):
    """The broker could not be started, found or stopped."""


@dataclass
class Broker:
    """What ``start`` left running: enough for ``stop`` to end exactly that process."""

    name: str
    pid: int
    port: int
    data_dir: str

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"


def kafka_version() -> str:
    text = POM.read_text()
    return text.split("<kafka.version>", 1)[1].split("</kafka.version>", 1)[0].strip()


def cache_dir() -> Path:
    base = os.environ.get("KASOCKI_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "kasocki"
    )
    return Path(base)


def state_file(name: str) -> Path:
    """The record of the broker running under ``name``."""
    return cache_dir() / "run" / f"kafka-{name}.json"


def kept_file(name: str) -> Path:
    """The record of a broker stopped with its data kept, for ``start`` to restart it."""
    return cache_dir() / "run" / f"kafka-{name}.kept.json"


def require(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(
            f"'{tool}' is not installed, and a local Kafka broker needs it "
            "(Java 17+ and Maven). Install it, or point KAFKA_BOOTSTRAP_SERVERS "
            "at a running broker instead, e.g. KAFKA_BOOTSTRAP_SERVERS=host:9092."
        )
    return path


def resolve_jars() -> Path:
    """Return the folder of the broker's classpath, downloading it once."""
    libs = cache_dir() / f"kafka-{kafka_version()}" / "libs"
    complete = libs / ".complete"
    if complete.exists():
        return libs
    mvn = require("mvn")
    require("java")
    print(f"Resolving Apache Kafka {kafka_version()} jars into {libs} ...", file=sys.stderr)
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        mvn,
        "-q",
        "-B",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        f"-DoutputDirectory={tmp}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    if result.returncode != 0:
        raise BrokerError(f"mvn could not resolve Kafka's jars:\n{result.stdout}{result.stderr}")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    complete.touch()
    return libs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def reachable(bootstrap: str, timeout: float = 2.0) -> bool:
    """True when the first address of a bootstrap list ("host:port,...") accepts TCP connections."""
    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def start_or_reuse(name: str) -> tuple[str, Callable[[], object] | None]:
    """(bootstrap, stop) for KAFKA_BOOTSTRAP_SERVERS when it is reachable (stop is None), else a new broker."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured and reachable(configured):
        return configured, None
    broker = start(name)
    return broker.bootstrap, lambda: stop(name)


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def api_versions_ok(port: int) -> bool:
    """True when a broker answers an ApiVersions request (the first request any client sends)."""
    client_id = b"kasocki-wait"
    body = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            header = sock.recv(10)
    except OSError:
        return False
    # size (int32), correlation id (int32), error code (int16)
    return len(header) >= 10 and struct.unpack(">iih", header[:10])[1:] == (1, 0)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def is_our_broker(broker: Broker) -> bool:
    """Guard against a reused pid: the process must be a broker using our data dir."""
    try:
        cmdline = Path(f"/proc/{broker.pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return alive(broker.pid)
    return b"kafka.Kafka" in cmdline and any(broker.data_dir.encode() in arg for arg in cmdline)


def load(name: str) -> Broker | None:
    path = state_file(name)
    if not path.exists():
        return None
    broker = Broker(**json.loads(path.read_text()))
    if alive(broker.pid) and is_our_broker(broker):
        return broker
    path.unlink(missing_ok=True)
    return None


def load_kept(name: str) -> Broker | None:
    """The broker stopped under ``name`` with its data kept, if its data is still there."""
    path = kept_file(name)
    if not path.exists():
        return None
    broker = Broker(**json.loads(path.read_text()))
    if (Path(broker.data_dir) / "server.properties").exists():
        return broker
    path.unlink(missing_ok=True)
    return None


def listener_ports(data_dir: str) -> dict[str, int]:
    """The port of each listener in the broker's server.properties: {"PLAINTEXT": ..., "CONTROLLER": ...}."""
    props = dict(
        line.split("=", 1) for line in (Path(data_dir) / "server.properties").read_text().splitlines() if "=" in line
    )
    listeners = (item.split("://", 1) for item in props["listeners"].split(","))
    return {scheme: int(address.rsplit(":", 1)[1]) for scheme, address in listeners}


def start(name: str = "default", port: int = 0) -> Broker:
    """Start a broker (or return the one already running under ``name``).

    A broker stopped with ``keep_data=True`` is started again from its data, on its port.
    """
    running = load(name)
    if running is not None:
        return running
    java = require("java")
    libs = resolve_jars()
    kept = load_kept(name)
    if kept is not None:
        if port and port != kept.port:
            raise BrokerError(
                f"broker {name!r} was stopped with its data kept, on port {kept.port}: start it on that "
                f"port, or stop it (without --keep-data) to discard the data first"
            )
        for needed in listener_ports(kept.data_dir).values():
            if port_in_use(needed):
                raise BrokerError(f"port {needed} is already in use on 127.0.0.1")
        kept_file(name).unlink(missing_ok=True)
        return launch(name, kept.port, kept.data_dir, java_command(java, libs, kept.data_dir), restart=True)
    port = port or free_port()
    if port_in_use(port):
        raise BrokerError(f"port {port} is already in use on 127.0.0.1")
    controller_port = free_port()
    data_dir = tempfile.mkdtemp(prefix=f"kasocki-kafka-{name}-")
    props = Path(data_dir) / "server.properties"
    props.write_text(SERVER_PROPERTIES.format(port=port, controller_port=controller_port, data_dir=data_dir))
    (Path(data_dir) / "log4j2.yaml").write_text(LOG4J2_YAML)
    java_cmd = java_command(java, libs, data_dir)
    cluster_id = "-"
    while cluster_id.startswith("-"):  # the storage tool would take a leading "-" for an option
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    fmt = subprocess.run(
        [*java_cmd, "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(props)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if fmt.returncode != 0:
        shutil.rmtree(data_dir, ignore_errors=True)
        raise BrokerError(f"formatting the broker's storage failed:\n{fmt.stdout}{fmt.stderr}")
    return launch(name, port, data_dir, java_cmd, restart=False)


def java_command(java: str, libs: Path, data_dir: str) -> list[str]:
    return [
        java,
        "-Xms256m",
        "-Xmx1g",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={data_dir}/log4j2.yaml",
        "-cp",
        f"{libs}/*",
    ]


# Brokers this process started, by name: the broker outlives the call that started it, so its Popen
# is kept here (a Popen collected while its process runs warns), and stop() reaps it.
_children: dict[str, subprocess.Popen[bytes]] = {}


def launch(name: str, port: int, data_dir: str, java_cmd: list[str], restart: bool) -> Broker:
    """Run the broker over a formatted ``data_dir`` and wait until it answers on ``port``."""
    log = open(Path(data_dir) / "broker.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [*java_cmd, "kafka.Kafka", str(Path(data_dir) / "server.properties")],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    _children[name] = proc
    broker = Broker(name=name, pid=proc.pid, port=port, data_dir=data_dir)
    state_file(name).parent.mkdir(parents=True, exist_ok=True)
    state_file(name).write_text(json.dumps(asdict(broker)))
    deadline = time.monotonic() + START_TIMEOUT
    while not api_versions_ok(port):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = (Path(data_dir) / "broker.log").read_text(errors="replace")[-3000:]
            stop(name, keep_data=restart)  # a restart keeps the data it was given
            raise BrokerError(f"the Kafka broker did not come up on port {port}:\n{tail}")
        time.sleep(0.1)
    return broker


def stop(name: str = "default", keep_data: bool = False) -> bool:
    """Stop the broker started under ``name``; False if there was none.

    Its data is removed, unless ``keep_data``: then the next ``start(name)`` restarts
    it from that data on the same port. Stopping a broker that is already stopped
    with its data kept discards the data (unless ``keep_data`` again).
    """
    path = state_file(name)
    if path.exists():
        broker = Broker(**json.loads(path.read_text()))
        if alive(broker.pid) and is_our_broker(broker):
            os.kill(broker.pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while alive(broker.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if alive(broker.pid):
                os.kill(broker.pid, signal.SIGKILL)
                while alive(broker.pid) and time.monotonic() < deadline + STOP_TIMEOUT:
                    time.sleep(0.05)
            with contextlib.suppress(ChildProcessError):  # reap it when it is a child of ours
                os.waitpid(broker.pid, os.WNOHANG)
        child = _children.pop(name, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(STOP_TIMEOUT)
        path.unlink(missing_ok=True)
    else:
        kept = load_kept(name)
        if kept is None:
            return False
        broker = kept
    if keep_data:
        kept_file(name).parent.mkdir(parents=True, exist_ok=True)
        kept_file(name).write_text(json.dumps(asdict(broker)))
    else:
        shutil.rmtree(broker.data_dir, ignore_errors=True)
        kept_file(name).unlink(missing_ok=True)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["start", "stop", "status", "version"])
    parser.add_argument("--name", default="default", help="instance name (default: %(default)s)")
    parser.add_argument("--port", type=int, default=0, help="broker port (default: a free one)")
    parser.add_argument(
        "--keep-data", action="store_true", help="stop: keep the data, so that the next start restarts from it"
    )
    args = parser.parse_args(argv)
    try:
        if args.command == "version":
            print(kafka_version())
        elif args.command == "start":
            began = time.monotonic()
            broker = start(args.name, args.port)
            print(
                f"Kafka {kafka_version()} ({args.name}, pid {broker.pid}) is up after "
                f"{time.monotonic() - began:.1f}s at:",
                file=sys.stderr,
            )
            print(broker.bootstrap)
        elif args.command == "stop":
            if not stop(args.name, keep_data=args.keep_data):
                print("not running", file=sys.stderr)
            elif args.keep_data:
                print(f"stopped; its data is kept for the next start of {args.name!r}", file=sys.stderr)
            else:
                print("stopped", file=sys.stderr)
        else:
            broker = load(args.name)
            if broker is None:
                kept = load_kept(args.name)
                if kept is not None:
                    print(
                        f"not running; stopped with its data kept (start restarts it on port {kept.port})",
                        file=sys.stderr,
                    )
                else:
                    print("not running", file=sys.stderr)
                return 1
            print(broker.bootstrap)
    except BrokerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
