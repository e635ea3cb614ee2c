#!/usr/bin/env python3
"""Check what `make run` and `make test` cannot install themselves, and say what to do."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import kafka

NEEDED = {
    "java": "Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless)",
    "mvn": "Maven (Debian: apt-get install maven)",
    "node": "Node.js 18 or newer with npm",
    "npm": "npm",
}


def broker_configured() -> bool:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    return bool(bootstrap) and kafka.reachable(bootstrap)


def main() -> int:
    problems = []
    if sys.version_info < (3, 11):
        problems.append(f"Python 3.11 or newer (this is {sys.version.split()[0]})")
    skip_kafka_tools = broker_configured()
    for tool, what in NEEDED.items():
        if skip_kafka_tools and tool in {"java", "mvn"}:
            continue
        if shutil.which(tool) is None:
            problems.append(f"{tool}: {what}")
    if problems:
        print("Missing prerequisites:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print(
            "Java and Maven are only needed to run a local Kafka broker: to use an existing one instead,\n"
            "set KAFKA_BOOTSTRAP_SERVERS=host:port (it must be reachable).",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
