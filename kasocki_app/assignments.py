"""From what a client asked for to concrete partition offsets, and keeping that in step with the cluster."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import topics
from .access import ANONYMOUS, Principal
from .conf import conf
from .exceptions import InvalidAssignmentError, PartitionNotAvailableError, TopicNotAvailableError
from .kafka import cluster
from .protocol import AssignmentRequest

Position = dict[str, Any]  # {"topic", "partition", "offset"[, "reset_from"]}


async def resolve(requests: list[AssignmentRequest], principal: Principal = ANONYMOUS) -> list[Position]:
    """Check access and partitions, then turn each request into a concrete starting offset per partition."""
    available = await topics.available_topics(principal)
    if any(r.topic not in available for r in requests):
        available = await topics.available_topics(principal, fresh=True)  # the topic may be brand new
    wanted: dict[tuple[str, int], AssignmentRequest] = {}
    for request in requests:
        if request.topic not in available:
            raise TopicNotAvailableError(f"topic {request.topic!r} is not available", availableTopics=sorted(available))
        count = available[request.topic]
        if request.partition is not None and request.partition >= count:
            raise PartitionNotAvailableError(
                f"topic {request.topic!r} has no partition {request.partition}", topic=request.topic, partitions=count
            )
        for partition in [request.partition] if request.partition is not None else range(count):
            wanted[(request.topic, partition)] = request
    if len(wanted) > conf.max_partitions:
        raise InvalidAssignmentError(
            f"subscribe covers {len(wanted)} partitions; at most {conf.max_partitions} are allowed",
            limit=conf.max_partitions,
        )
    marks = await cluster.watermarks(list(wanted))
    times = await cluster.offsets_for_times({tp: r.timestamp for tp, r in wanted.items() if r.timestamp is not None})
    positions = []
    for (topic, partition), request in sorted(wanted.items()):
        low, high = marks[(topic, partition)]
        position: Position = {"topic": topic, "partition": partition}
        if request.offset is not None:
            if low <= request.offset <= high:
                position["offset"] = request.offset
            else:
                position["offset"] = reset_offset(low, high)
                position["reset_from"] = request.offset
        elif request.timestamp is not None:
            found = times[(topic, partition)]
            position["offset"] = high if found < 0 else found  # beyond the newest message: latest
        else:
            position["offset"] = high
        positions.append(position)
    return positions


def reset_offset(low: int, high: int) -> int:
    """Where to start when a wanted offset is not in the log (KASOCKI_RESET_POLICY)."""
    return high if conf.reset_policy == "latest" else low


@dataclass
class ClusterChanges:
    """How the cluster moved under a subscription since it was made."""

    gone: list[str] = field(default_factory=list)  # topics deleted or no longer allowed
    grown: dict[str, list[int]] = field(default_factory=dict)  # whole-topic subscriptions: new partitions


def compare(requests: list[AssignmentRequest], assigned: list[Position], available: dict[str, int]) -> ClusterChanges:
    """What changed for a subscription: topics that went away, partitions added to whole-topic requests."""
    changes = ClusterChanges()
    by_topic: dict[str, set[int]] = {}
    for position in assigned:
        by_topic.setdefault(position["topic"], set()).add(position["partition"])
    for topic in sorted(by_topic):
        if topic not in available:
            changes.gone.append(topic)
    whole = {r.topic for r in requests if r.partition is None}
    for topic in sorted(whole):
        if topic in available and topic in by_topic:
            new = [p for p in range(available[topic]) if p not in by_topic[topic]]
            if new:
                changes.grown[topic] = new
    return changes
