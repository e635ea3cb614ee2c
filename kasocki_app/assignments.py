"""Every rule of where to read: requests to start positions, lost offsets, and what changed in the cluster.

The functions return positions and changes; the connection applies them to its
reader and its pipeline. What they need to know of the cluster comes through a
``Catalog``: the live cluster and whitelist in production, an in-memory log in tests.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from . import topics
from .access import ANONYMOUS, Principal
from .cluster import cluster
from .conf import conf
from .exceptions import (
    InvalidAssignmentError,
    OffsetOutOfRangeError,
    PartitionNotAvailableError,
    PartitionsChangedError,
    TopicNotAvailableError,
)
from .protocol import AssignmentRequest
from .types import Position, TopicPartition


class Catalog(Protocol):
    """What the cluster holds, and which of it a client may read."""

    async def available_topics(self, principal: Principal, fresh: bool = False) -> dict[str, int]:
        """Topics ``principal`` may read that exist, with their partition counts."""
        ...

    async def watermarks(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        """(earliest, latest) offsets of each partition."""
        ...

    async def offsets_for_times(self, queries: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        """First offset at or after each timestamp (epoch ms); -1 where there is none."""
        ...

    async def fingerprint(self) -> Hashable:
        """Equal as long as no client's available topics can have changed (``watch.py``)."""
        ...


class KafkaCatalog:
    """The live cluster (``cluster.cluster``) and the whitelist (``topics``)."""

    async def available_topics(self, principal: Principal, fresh: bool = False) -> dict[str, int]:
        return await topics.available_topics(principal, fresh=fresh)

    async def watermarks(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        # The admin client's calls take plain (topic, partition) tuples.
        marks = await cluster.watermarks([(tp.topic, tp.partition) for tp in partitions])
        return {TopicPartition(*tp): mark for tp, mark in marks.items()}

    async def offsets_for_times(self, queries: Mapping[TopicPartition, int]) -> dict[TopicPartition, int]:
        found = await cluster.offsets_for_times({(tp.topic, tp.partition): ms for tp, ms in queries.items()})
        return {TopicPartition(*tp): offset for tp, offset in found.items()}

    async def fingerprint(self) -> Hashable:
        # Both cached per process (single flight): the same queries the connections' checks made.
        entries = await topics.entries()
        existing = await cluster.topics()
        return (entries, tuple(conf.allowed_topics), tuple(sorted(existing.items())))


CATALOG = KafkaCatalog()


async def resolve(
    requests: list[AssignmentRequest], principal: Principal = ANONYMOUS, catalog: Catalog = CATALOG
) -> list[Position]:
    """Check access and partitions, then turn each request into a concrete starting offset per partition."""
    available = await catalog.available_topics(principal)
    if any(r.topic not in available for r in requests):
        available = await catalog.available_topics(principal, fresh=True)  # the topic may be brand new
    wanted: dict[TopicPartition, AssignmentRequest] = {}
    for request in requests:
        if request.topic not in available:
            raise TopicNotAvailableError(f"topic {request.topic!r} is not available", availableTopics=sorted(available))
        count = available[request.topic]
        if request.partition is not None and request.partition >= count:
            raise PartitionNotAvailableError(
                f"topic {request.topic!r} has no partition {request.partition}", topic=request.topic, partitions=count
            )
        for partition in [request.partition] if request.partition is not None else range(count):
            wanted[TopicPartition(request.topic, partition)] = request
    if len(wanted) > conf.max_partitions:
        raise InvalidAssignmentError(
            f"subscribe covers {len(wanted)} partitions; at most {conf.max_partitions} are allowed",
            limit=conf.max_partitions,
        )
    marks = await catalog.watermarks(list(wanted))
    times = await catalog.offsets_for_times({tp: r.timestamp for tp, r in wanted.items() if r.timestamp is not None})
    positions = []
    for tp, request in sorted(wanted.items()):
        low, high = marks[tp]
        if request.offset is not None:
            if low <= request.offset <= high:
                positions.append(Position(tp.topic, tp.partition, request.offset))
            else:
                positions.append(Position(tp.topic, tp.partition, reset_offset(low, high), reset_from=request.offset))
        elif request.timestamp is not None:
            found = times[tp]
            positions.append(Position(tp.topic, tp.partition, high if found < 0 else found))  # none after it: latest
        else:
            positions.append(Position(tp.topic, tp.partition, high))
    return positions


def reset_offset(low: int, high: int) -> int:
    """Where to start when a wanted offset is not in the log (KASOCKI_RESET_POLICY)."""
    return high if conf.reset_policy == "latest" else low


def after_lost_offset(tp: TopicPartition, lost: int | None, low: int, high: int) -> Position:
    """Where a partition goes on when its next offset ``lost`` left the log (retention) while read."""
    return Position(tp.topic, tp.partition, reset_offset(low, high), reset_from=lost)


def lost_offset_error(position: Position) -> OffsetOutOfRangeError:
    return OffsetOutOfRangeError(
        f"the next offset of {position.topic}/{position.partition} is no longer in the log; "
        f"continuing from offset {position.offset}",
        topic=position.topic,
        partition=position.partition,
        reset_from=position.reset_from,
        offset=position.offset,
    )


@dataclass
class ClusterChanges:
    """How the cluster moved under a subscription since it was made."""

    gone: list[str] = field(default_factory=list)  # topics deleted or no longer allowed
    grown: dict[str, list[int]] = field(default_factory=dict)  # whole-topic subscriptions: new partitions


def compare(
    requests: Iterable[AssignmentRequest], assigned: Iterable[Position], available: dict[str, int]
) -> ClusterChanges:
    """What changed for a subscription: topics that went away, partitions added to whole-topic requests."""
    changes = ClusterChanges()
    by_topic: dict[str, set[int]] = {}
    for position in assigned:
        by_topic.setdefault(position.topic, set()).add(position.partition)
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


def gone_error(topic: str, available: dict[str, int]) -> TopicNotAvailableError:
    return TopicNotAvailableError(
        f"topic {topic!r} is no longer available", topic=topic, availableTopics=sorted(available)
    )


async def new_partitions(topic: str, partitions: list[int], catalog: Catalog = CATALOG) -> list[Position]:
    """Where partitions added to a whole-topic subscription start: their beginning, nothing is missed."""
    marks = await catalog.watermarks([TopicPartition(topic, p) for p in partitions])
    return [Position(topic, p, marks[TopicPartition(topic, p)][0]) for p in partitions]


def grown_error(topic: str, count: int, added: list[Position]) -> PartitionsChangedError:
    return PartitionsChangedError(
        f"topic {topic!r} now has {count} partitions; reading the new ones from the start",
        topic=topic,
        partitions=count,
        added=[position.to_dict() for position in added],
    )
