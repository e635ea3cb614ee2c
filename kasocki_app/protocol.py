"""Validation of client payloads: what ``subscribe`` and ``start`` accept.

The shapes are documented in docs/protocol.md. Validation is strict so that a
bad payload gets a precise error instead of a surprise later in Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .conf import conf
from .exceptions import InvalidArgumentError, InvalidAssignmentError

ASSIGNMENT_KEYS = frozenset({"topic", "partition", "offset", "timestamp"})
# Kafka's own limit on topic name length.
MAX_TOPIC_LENGTH = 249


@dataclass(frozen=True)
class AssignmentRequest:
    """One entry of a ``subscribe`` payload: a topic, or one of its partitions, and where to start."""

    topic: str
    partition: int | None = None  # None: every partition of the topic
    offset: int | None = None  # None and no timestamp: the latest offset
    timestamp: int | None = None  # epoch milliseconds


@dataclass(frozen=True)
class StartOptions:
    """What ``start`` accepts: ``batch`` > 0 asks for ``messages`` events of up to that many messages."""

    batch: int | None = None


def is_int(value: Any) -> bool:
    """A JSON integer: bool is an int in Python but not in JSON."""
    return isinstance(value, int) and not isinstance(value, bool)


def parse_subscription(arg: Any) -> list[AssignmentRequest]:
    """Turn a ``subscribe`` payload into assignment requests, or raise InvalidAssignmentError."""
    items = arg if isinstance(arg, list) else [arg]
    if not items:
        raise InvalidAssignmentError("subscribe needs at least one topic or assignment")
    if len(items) > conf.max_assignments:
        raise InvalidAssignmentError(
            f"subscribe accepts at most {conf.max_assignments} assignments, got {len(items)}",
            limit=conf.max_assignments,
        )
    requests = [parse_assignment(item) for item in items]
    whole_topics = {r.topic for r in requests if r.partition is None}
    seen: set[tuple[str, int | None]] = set()
    for request in requests:
        key = (request.topic, request.partition)
        if key in seen or (request.partition is not None and request.topic in whole_topics):
            raise InvalidAssignmentError(f"topic {request.topic!r} is assigned more than once")
        seen.add(key)
    return requests


def parse_assignment(item: Any) -> AssignmentRequest:
    if isinstance(item, str):
        item = {"topic": item}
    if not isinstance(item, dict):
        raise InvalidAssignmentError(
            "each assignment must be a topic name or an object with 'topic' "
            "and optionally 'partition', 'offset' or 'timestamp'"
        )
    unknown = sorted(str(k) for k in set(item) - ASSIGNMENT_KEYS)
    if unknown:
        raise InvalidAssignmentError(f"unknown assignment field(s): {', '.join(unknown)}")
    topic = item.get("topic")
    if not isinstance(topic, str) or not topic or len(topic) > MAX_TOPIC_LENGTH:
        raise InvalidAssignmentError(f"'topic' must be a non-empty string of at most {MAX_TOPIC_LENGTH} characters")
    partition = item.get("partition")
    offset = item.get("offset")
    timestamp = item.get("timestamp")
    for name, value in (("partition", partition), ("offset", offset), ("timestamp", timestamp)):
        if value is not None and (not is_int(value) or value < 0 or value >= 2**63):
            raise InvalidAssignmentError(f"'{name}' must be a non-negative integer")
    if offset is not None and partition is None:
        raise InvalidAssignmentError("'offset' needs a 'partition'")
    if offset is not None and timestamp is not None:
        raise InvalidAssignmentError("give either 'offset' or 'timestamp', not both")
    return AssignmentRequest(topic=topic, partition=partition, offset=offset, timestamp=timestamp)


def parse_start(arg: Any) -> StartOptions:
    """Validate a ``start`` payload: ``null`` or ``{"batch": N}``."""
    if arg is None:
        return StartOptions()
    if not isinstance(arg, dict) or set(arg) - {"batch"}:
        raise InvalidArgumentError('start takes null or {"batch": N}')
    batch = arg.get("batch")
    if batch is None:
        return StartOptions()
    if not is_int(batch) or not 1 <= batch <= conf.max_batch:
        raise InvalidArgumentError(f"'batch' must be an integer from 1 to {conf.max_batch}", limit=conf.max_batch)
    return StartOptions(batch=batch)
