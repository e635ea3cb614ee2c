#!/usr/bin/env python3
"""`make run`: serve Kasocki on http://127.0.0.1:8000 with a demo topic, starting Kafka if needed.

Uses KAFKA_BOOTSTRAP_SERVERS when it is reachable; otherwise starts a local broker
(scripts/kafka.py) and stops it again on Ctrl-C. The demo producer creates and fills
the topic `demo` (KASOCKI_DEMO_TOPIC), which is added to KASOCKI_ALLOWED_TOPICS, before
the server starts; it then feeds it. "Serving Kasocki on ..." is printed once /readyz
answers 200. `scripts/run.py 127.0.0.1:8001` serves on another address.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import kafka as broker_script  # noqa: E402  (scripts/kafka.py)

# How long the server may take to answer /readyz before `make run` says why it does not.
READY_TIMEOUT = 60.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve Kasocki with a demo topic, starting Kafka if needed.")
    parser.add_argument("address", nargs="?", default="127.0.0.1:8000", help="host:port to serve on")
    address = parser.parse_args(argv).address
    env = dict(os.environ)
    bootstrap = env.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    started_broker = False
    if not broker_script.reachable(bootstrap):
        print(f"No Kafka at {bootstrap}: starting a local broker ...", flush=True)
        try:
            port = 9092 if not broker_script.port_in_use(9092) else 0
            bootstrap = broker_script.start("run", port).bootstrap
        except broker_script.BrokerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        started_broker = True
        print(f"Kafka {broker_script.kafka_version()} is up at {bootstrap}", flush=True)
    topic = env.get("KASOCKI_DEMO_TOPIC", "demo")
    allowed = [t for t in env.get("KASOCKI_ALLOWED_TOPICS", "").split(",") if t]
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        KASOCKI_ALLOWED_TOPICS=",".join(dict.fromkeys([*allowed, topic])),
        PYTHONUNBUFFERED="1",
    )
    python = sys.executable
    manage = str(ROOT / "manage.py")
    children: list[subprocess.Popen[bytes]] = []
    try:
        subprocess.run([python, manage, "migrate", "--noinput", "-v", "0"], env=env, check=True)
        # The topic exists and holds its backfill before the server starts: a client that comes
        # as soon as the server answers must not be told that the topic does not exist.
        demo = [python, manage, "kasocki_demo_producer", "--topic", topic]
        subprocess.run([*demo, "--backfill", "500", "--no-stream"], env=env, check=True)
        children.append(subprocess.Popen([*demo, "--rate", "5"], env=env))
        server = subprocess.Popen([python, manage, "runserver", address, "--noreload"], env=env)
        children.append(server)
        url = f"http://{address}"
        if wait_ready(server, url):
            print(f"Serving Kasocki on {url} (Ctrl-C to stop)", flush=True)
        return server.wait()
    except KeyboardInterrupt:
        return 0
    except subprocess.CalledProcessError as exc:
        return exc.returncode
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        if started_broker:
            broker_script.stop("run")
            print("Stopped the local Kafka broker.", flush=True)


def wait_ready(server: subprocess.Popen[bytes], url: str) -> bool:
    """Wait until the server answers /readyz with 200; False when it exits first."""
    deadline = time.monotonic() + READY_TIMEOUT
    answer = "no answer"
    while server.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=5):
                return True
        except urllib.error.HTTPError as exc:
            with exc:
                answer = f"{exc.code} {exc.read().decode(errors='replace')}"
        except OSError:
            pass  # not listening yet
        if time.monotonic() > deadline:
            print(f"The server does not get ready at {url}: /readyz answers {answer}", file=sys.stderr, flush=True)
            return False
        time.sleep(0.2)
    return False


if __name__ == "__main__":
    sys.exit(main())
