#!/usr/bin/env python3
"""`make run`: serve Kasocki on http://127.0.0.1:8000 with a demo topic, starting Kafka if needed.

Uses KAFKA_BOOTSTRAP_SERVERS when it is reachable; otherwise starts a local broker
(scripts/kafka.py) and stops it again on Ctrl-C. The demo producer fills and feeds
the topic `demo` (KASOCKI_DEMO_TOPIC), which is added to KASOCKI_ALLOWED_TOPICS.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))

import kafka as broker_script  # noqa: E402  (scripts/kafka.py)


def main() -> int:
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
        children.append(
            subprocess.Popen(
                [python, manage, "kasocki_demo_producer", "--topic", topic, "--rate", "5", "--backfill", "500"],
                env=env,
            )
        )
        print("Serving Kasocki on http://127.0.0.1:8000 (Ctrl-C to stop)", flush=True)
        server = subprocess.Popen([python, manage, "runserver", "127.0.0.1:8000", "--noreload"], env=env)
        children.append(server)
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


if __name__ == "__main__":
    sys.exit(main())
