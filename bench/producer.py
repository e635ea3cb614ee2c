"""A steady-rate producer, run as its own process: ``python -m bench.producer --topic T --rate R ...``.

Each record carries ``sent_at`` (epoch seconds, float) stamped just before it
is handed to the producer, so a client on the same machine can compute
produce-to-receive latency. Records go round-robin over the partitions, so
each partition gets rate / partitions records per second. It stops after
``--duration`` seconds or on SIGTERM, flushes, and prints a JSON summary.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

import orjson
from confluent_kafka import Producer

from bench.data import Records


def run(bootstrap: str, topic: str, partitions: int, rate: float, duration: float, linger_ms: float) -> dict[str, Any]:
    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": linger_ms, "acks": 1, "socket.nagle.disable": True}
    )
    records = Records(seed=7)
    stopping = False

    def stop(*_args: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    errors = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal errors
        if err is not None:
            errors += 1

    sent = 0
    began = time.perf_counter()
    while not stopping:
        elapsed = time.perf_counter() - began
        if elapsed >= duration:
            break
        due = int(elapsed * rate)
        while sent < due:
            record = records.record(sent)
            record["sent_at"] = time.time()
            try:
                producer.produce(
                    topic, value=orjson.dumps(record), partition=sent % partitions, on_delivery=on_delivery
                )
            except BufferError:
                producer.poll(0.01)
                continue
            sent += 1
        producer.poll(0)
        next_due = (sent + 1) / rate
        time.sleep(min(0.01, max(0.0, next_due - (time.perf_counter() - began))))
    elapsed = time.perf_counter() - began
    remaining = producer.flush(10)
    return {
        "sent": sent,
        "seconds": round(elapsed, 3),
        "rate": round(sent / elapsed, 1),
        "undelivered": remaining,
        "errors": errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--partitions", type=int, default=1)
    parser.add_argument("--rate", type=float, required=True, help="records per second")
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--linger-ms", type=float, default=1.0)
    args = parser.parse_args(argv)
    summary = run(args.bootstrap, args.topic, args.partitions, args.rate, args.duration, args.linger_ms)
    print(orjson.dumps(summary).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
