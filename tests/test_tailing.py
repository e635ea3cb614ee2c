"""One connection's reader over the live tail, driven step by step as the feed drives it, under overload.

Each test reads a ``TailReader`` over the in-memory log with and without a wait, changes its
assignment as the feed does, and checks the offsets it hands out per partition: consecutive,
nothing skipped, whatever failed, waited or was cancelled on the way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from kasocki_app.exceptions import TooManyConsumersError
from kasocki_app.tail import LiveTail
from kasocki_app.tailing import TailReader
from kasocki_app.types import TopicPartition
from tests.fakes import FakeLog, FakeReader, settle

T0, T1, T2 = TopicPartition("t", 0), TopicPartition("t", 1), TopicPartition("t", 2)
TIMED_OUT = "Kafka did not answer within 10s"


class Harness:
    """A live tail over the fake log, and the catch-up consumers its readers open."""

    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.tail = LiveTail(log.open_reader, log)
        self.readers: list[TailReader] = []
        self.consumers_left: int | None = None  # None: no limit
        self.make_private: Callable[[FakeLog], FakeReader] = FakeReader
        self.prepare: list[Callable[[FakeReader], None]] = []  # applied to the next consumers opened, in turn

    async def open_private(self) -> FakeReader:
        if self.consumers_left is not None:
            if self.consumers_left <= 0:
                raise TooManyConsumersError("no consumer left", limit=0)
            self.consumers_left -= 1
        if self.log.opening is not None:
            await self.log.opening.wait()
        private = self.make_private(self.log)
        self.log.readers.append(private)
        if self.prepare:
            self.prepare.pop(0)(private)
        return private

    def reader(self) -> TailReader:
        reader = TailReader(self.tail, self.open_private)
        self.readers.append(reader)
        return reader

    async def close(self) -> None:
        for reader in self.readers:
            await reader.close()
        await self.tail.close()


@pytest.fixture
async def harness(log: FakeLog, settings: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Harness]:
    settings.KASOCKI_TAIL_RECORDS = 5
    monkeypatch.setattr("kasocki_app.tail.WAIT_MAX_SECONDS", 60.0)  # the pump waits for records, not the clock
    log.create_topic("t", 3)
    made = Harness(log)
    yield made
    await made.close()


def produce(log: FakeLog, tp: TopicPartition, first: int, count: int) -> None:
    assert log.produce(tp.topic, [{"i": i} for i in range(first, first + count)], partition=tp.partition)[0] == first


async def test_records_the_shared_reader_reads_while_their_ring_opens_are_in_the_ring(harness, log):
    tail = harness.tail
    await tail.open([T0])  # the pump runs, for t/0
    log.assigning = asyncio.Event()  # t/1's assignment takes effect, but the call returns late
    opening = asyncio.ensure_future(tail.open([T1]))
    await settle()
    assert not opening.done() and tail.find(T1) is None
    produce(log, T1, 0, 3)  # the pump reads them at once: t/1 is assigned to the shared reader
    await settle()
    log.assigning.set()
    await opening
    produce(log, T1, 3, 2)
    await settle()
    ring = tail.find(T1)
    assert ring is not None and ring.low == 0
    assert [entry.offset for entry in ring.since(0, 100)] == [0, 1, 2, 3, 4]
