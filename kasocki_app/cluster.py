"""The process's Kafka admin client: topic metadata (cached briefly) and offset lookups.

Every call that waits on the network runs in a thread (``threads.py``) with a timeout.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from typing import Any

from confluent_kafka import KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from .conf import conf
from .kafka import librdkafka_log
from .threads import executor, kafka_error, no_answer, run_blocking, within

# librdkafka fails a request at its request_timeout; past this much more, it is never answering.
ANSWER_GRACE_SECONDS = 5.0


def _earliest() -> OffsetSpec:
    spec: OffsetSpec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]  # confluent-kafka leaves it unannotated
    return spec


def _latest() -> OffsetSpec:
    spec: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]  # confluent-kafka leaves it unannotated
    return spec


class Cluster:
    """Process-wide admin client with a short-lived cache of topic metadata."""

    def __init__(self) -> None:
        self._admin: AdminClient | None = None
        self._lock = threading.Lock()
        self._topics: dict[str, int] = {}
        self._topics_at = float("-inf")
        self._inflight: concurrent.futures.Future[dict[str, int]] | None = None

    def admin(self) -> AdminClient:
        with self._lock:
            if self._admin is None:
                config = {**conf.kafka_config, "client.id": "kasocki-admin"}
                self._admin = AdminClient(config, logger=librdkafka_log)
            return self._admin

    def reset(self) -> None:
        """Forget the admin client and cache (when the settings change)."""
        with self._lock:
            self._admin = None
            self._topics_at = float("-inf")

    def _fetch_topics(self) -> dict[str, int]:
        metadata = self.admin().list_topics(timeout=conf.kafka_timeout)
        topics = {
            name: len(topic.partitions)
            for name, topic in metadata.topics.items()
            if topic.error is None and not name.startswith("__")
        }
        self._topics, self._topics_at = topics, time.monotonic()
        return topics

    async def topics(self, fresh: bool = False) -> dict[str, int]:
        """Topic name to partition count, for every non-internal topic of the cluster.

        ``fresh`` skips the cache. Concurrent lookups share one metadata request,
        so a burst of connections costs the broker one request, not one each.
        """
        if not fresh and time.monotonic() - self._topics_at <= conf.metadata_cache_seconds:
            return self._topics
        with self._lock:
            if self._inflight is None or self._inflight.done():
                self._inflight = executor().submit(self._fetch_topics)
            inflight = self._inflight
        waiter = asyncio.wrap_future(inflight)
        # Whoever gives up first (timeout, disconnect), the outcome counts as seen: asyncio
        # would otherwise log "exception was never retrieved" for every abandoned lookup.
        waiter.add_done_callback(_seen)
        try:
            # shield: one caller's cancellation must not cancel the lookup the others share.
            return await within(asyncio.shield(waiter), conf.kafka_timeout)
        except TimeoutError:
            raise no_answer(conf.kafka_timeout) from None
        except KafkaException as exc:
            raise kafka_error(exc) from None

    def describe(self, names: list[str], timeout: float = 3.0) -> dict[str, list[tuple[int, int]]]:
        """Blocking: (earliest, latest) offsets per partition of each existing topic, for the admin pages."""
        metadata = self.admin().list_topics(timeout=timeout).topics
        partitions = [
            (t, p) for t in names if t in metadata and metadata[t].error is None for p in metadata[t].partitions
        ]
        earliest = self._list_offsets({tp: _earliest() for tp in partitions})
        latest = self._list_offsets({tp: _latest() for tp in partitions})
        facts: dict[str, list[tuple[int, int]]] = {}
        for topic, partition in sorted(partitions):
            facts.setdefault(topic, []).append((earliest[(topic, partition)], latest[(topic, partition)]))
        return facts

    def log_ends(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Blocking: the latest offset of each partition (for metrics, from a scrape's thread)."""
        return self._list_offsets({tp: _latest() for tp in partitions})

    async def watermarks(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int]]:
        """(earliest, latest) offsets of each partition."""

        def lookup() -> dict[tuple[str, int], tuple[int, int]]:
            earliest = self._list_offsets({(t, p): _earliest() for t, p in partitions})
            latest = self._list_offsets({(t, p): _latest() for t, p in partitions})
            return {tp: (earliest[tp], latest[tp]) for tp in partitions}

        return await run_blocking(lookup)

    async def offsets_for_times(self, queries: dict[tuple[str, int], int]) -> dict[tuple[str, int], int]:
        """First offset at or after each timestamp (epoch ms); -1 where no such message exists."""
        return await run_blocking(self._list_offsets, {tp: OffsetSpec.for_timestamp(ms) for tp, ms in queries.items()})

    def _list_offsets(self, specs: dict[tuple[str, int], OffsetSpec]) -> dict[tuple[str, int], int]:
        if not specs:
            return {}
        request = {TopicPartition(t, p): spec for (t, p), spec in specs.items()}
        # The client is held until every answer is in: one dropped meanwhile (reset() on a
        # settings change) never resolves its futures, and a wait on them held its pool
        # thread for good (the process then hung at exit joining it). The wait is bounded too.
        admin = self.admin()
        futures = admin.list_offsets(request, request_timeout=conf.kafka_timeout)
        deadline = time.monotonic() + conf.kafka_timeout + ANSWER_GRACE_SECONDS
        try:
            return {
                (tp.topic, tp.partition): future.result(max(0.0, deadline - time.monotonic())).offset
                for tp, future in futures.items()
            }
        except concurrent.futures.TimeoutError:
            raise no_answer(conf.kafka_timeout) from None


cluster = Cluster()


def _seen(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
