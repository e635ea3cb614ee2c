"""One connection's reader over the live tail, driven step by step as the feed drives it, under overload.

Each test reads a ``TailReader`` over the in-memory log with and without a wait, changes its
assignment as the feed does, and checks the offsets it hands out per partition: consecutive,
nothing skipped, whatever failed, waited or was cancelled on the way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import pytest
from confluent_kafka import Message

from kasocki_app.exceptions import KafkaError, TooManyConsumersError
from kasocki_app.ring import Entry
from kasocki_app.tail import LiveTail
from kasocki_app.tailing import TailReader
from kasocki_app.types import Position, Readable, TopicPartition
from tests.fakes import EXPECTED_WITHIN, FakeLog, FakeReader, settle

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


def offsets(records: Sequence[Readable], tp: TopicPartition) -> list[int]:
    """The offsets of ``tp`` among what a read handed out, ring entries and Kafka records alike."""
    found = []
    for record in records:
        if isinstance(record, Entry):
            if (record.topic, record.partition) == tp:
                found.append(record.offset)
        elif (record.topic(), record.partition()) == tp:
            offset = record.offset()
            assert offset is not None
            found.append(offset)
    return found


def produce(log: FakeLog, tp: TopicPartition, first: int, count: int) -> None:
    assert log.produce(tp.topic, [{"i": i} for i in range(first, first + count)], partition=tp.partition)[0] == first


async def read_until(reader: TailReader, got: list[Readable], tp: TopicPartition, last: int) -> None:
    """Read, with waits, until ``tp``'s offset ``last`` was handed out (or anything past it)."""
    for _ in range(100):
        if any(offset >= last for offset in offsets(got, tp)):
            return
        got += await reader.read(100, EXPECTED_WITHIN)
    raise AssertionError(f"{tp} never reached {last}")


async def behind_on_two_partitions(harness: Harness) -> tuple[TailReader, list[Readable]]:
    """t/0 from 10 and t/1 from 0, both behind their rings (opened at 20 and 1,000): t/0 hands over first.

    Returns the reader after its first read: t/0 10..19 (handed over at 20), t/1 0..89 (still behind).
    """
    log = harness.log
    produce(log, T0, 0, 20)
    produce(log, T1, 0, 1000)
    reader = harness.reader()
    await reader.add([Position("t", 0, 10), Position("t", 1, 0)])
    assert (reader.state(T0), reader.state(T1)) == ("catch-up", "catch-up")
    got = list(await reader.read(100, EXPECTED_WITHIN))  # the first read that waits opens the catch-up consumer
    assert offsets(got, T0) == list(range(10, 20)) and reader.state(T0) == "tail"
    return reader, got


async def fall_behind_while_the_consumer_reads_ahead(harness: Harness, reader: TailReader, got: list[Readable]) -> None:
    """t/0 on the tail at 23; the catch-up consumer (reading t/1 still) read t/0 up to 30; the ring moves past 23."""
    log = harness.log
    produce(log, T0, 20, 3)
    await settle()  # the shared reader puts 20..22 in the ring
    got += await reader.read(100, 0)  # 20..22 from the ring; the catch-up consumer reads them too
    assert offsets(got, T0)[-1] == 22
    produce(log, T0, 23, 8)
    got += await reader.read(100, 0)  # the catch-up consumer reads 23..30 before the ring has them
    await settle()  # the ring keeps 26..30: the reader, at 23, is behind it
    ring = harness.tail.find(T0)
    assert ring is not None and ring.low == 26


async def test_a_catch_up_assignment_whose_call_failed_after_it_was_made_skips_nothing(harness, log):
    # The consumer budget was spent when the client subscribed: the stream's read opens the consumer
    # later, and its assignment call times out while librdkafka makes the assignment all the same.
    produce(log, T0, 0, 20)
    produce(log, T1, 0, 1000)
    harness.consumers_left = 0
    reader = harness.reader()
    await reader.add([Position("t", 0, 10), Position("t", 1, 0)])
    harness.consumers_left = None
    harness.prepare.append(lambda private: setattr(private, "change_failure", KafkaError(TIMED_OUT, code="_TIMED_OUT")))
    with pytest.raises(KafkaError, match="did not answer"):
        await reader.read(100, EXPECTED_WITHIN)
    got: list[Readable] = []
    while reader.state(T0) != "tail":  # t/0 10..19, handed over at 20
        got += await reader.read(100, EXPECTED_WITHIN)
    await fall_behind_while_the_consumer_reads_ahead(harness, reader, got)
    produce(log, T0, 31, 2)
    await read_until(reader, got, T0, 32)
    assert offsets(got, T0) == list(range(10, 33))
    await read_until(reader, got, T1, 999)
    assert offsets(got, T1) == list(range(1000))


class FetchedBeforeRemove(FakeReader):
    """A catch-up consumer as ``kafka.KafkaSource``: a wait under way when a partition is removed ends
    first, and the record it fetched of that partition (at its position then) comes with the next read."""

    def __init__(self, log: FakeLog) -> None:
        super().__init__(log)
        self.fetched: list[Message] = []

    async def remove(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            position = self.positions.get(tp)
            records = self.log.topics[tp.topic][tp.partition].records
            if position is not None and position < len(records) and not self.fetched:
                self.fetched.append(records[position])
        await super().remove(partitions)

    def _take(self, max_records: int) -> list[Message]:
        fetched, self.fetched = self.fetched[:max_records], self.fetched[max_records:]
        return fetched + super()._take(max_records - len(fetched))


async def test_a_partition_demoted_after_its_consumer_let_it_go_takes_nothing_that_consumer_still_brings(harness, log):
    harness.make_private = FetchedBeforeRemove
    reader, got = await behind_on_two_partitions(harness)
    await fall_behind_while_the_consumer_reads_ahead(harness, reader, got)
    produce(log, T0, 31, 1)
    await settle()
    # A partition added to the subscription (the feed follows the cluster): the consumer lets t/0 go;
    # its wait under way had fetched t/0's 31.
    await reader.add([Position("t", 2, 0)])
    (private,) = (r for r in harness.log.open_readers if isinstance(r, FetchedBeforeRemove))
    assert T0 not in private.positions
    await read_until(reader, got, T0, 31)
    assert offsets(got, T0) == list(range(10, 32))
    await read_until(reader, got, T1, 999)
    assert offsets(got, T1) == list(range(1000))


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


class Announced(FakeReader):
    """A catch-up consumer that says when one of its reads returned records."""

    def __init__(self, log: FakeLog, returned: asyncio.Event) -> None:
        super().__init__(log)
        self.returned = returned

    async def read(self, max_records: int, timeout: float) -> list[Message]:
        records = await super().read(max_records, timeout)
        if records:
            self.returned.set()
        return records


async def test_what_a_catch_up_read_brought_goes_out_before_the_consumer_is_read_again(harness, log):
    # Seen end to end (tests/test_e2e_tail.py, about 1 run in 5 once catch-up consumers opened at the first
    # read): a take with room for part of what the consumer's read had brought handed a partition over on the
    # way (dropping its records past the ring's start), so it still had room, and read the consumer again:
    # newer records went out while older ones still waited, which were then dropped as passed. Offsets skipped.
    returned = asyncio.Event()
    harness.make_private = lambda log: Announced(log, returned)
    produce(log, T0, 0, 10)
    produce(log, T1, 0, 1000)
    first = harness.reader()
    await first.add([Position("t", 0, 10)])  # t/0's ring opens at 10
    produce(log, T0, 10, 10)
    await settle()  # the ring keeps 15..19
    reader = harness.reader()
    await reader.add([Position("t", 0, 0), Position("t", 1, 0)])  # both behind their rings
    waiting = asyncio.ensure_future(reader.read(100, EXPECTED_WITHIN))  # opens a consumer, which reads 100
    await returned.wait()  # t/0 0..19 and t/1 0..79 came; the stream has not taken them yet
    got = list(await reader.read(50, 0))  # meanwhile a consume takes 50: t/0 hands over at 15 on the way
    got += await waiting
    await read_until(reader, got, T1, 150)
    assert offsets(got, T0) == list(range(20))
    received = offsets(got, T1)
    assert received == list(range(len(received)))


async def test_a_catch_up_read_that_returned_is_handed_out_before_what_is_read_after_it(harness, log):
    returned = asyncio.Event()
    harness.make_private = lambda log: Announced(log, returned)
    produce(log, T0, 0, 20)
    harness.consumers_left = 0
    reader = harness.reader()
    await reader.add([Position("t", 0, 0)])  # behind the ring (at 20); no consumer free yet
    harness.consumers_left = None
    waiting = asyncio.ensure_future(reader.read(100, EXPECTED_WITHIN))  # the stream: opens one, reads 0..19 at once
    await returned.wait()  # the consumer's read returned; the stream has not resumed yet
    produce(log, T0, 20, 1)
    got = list(await reader.read(100, 0))  # meanwhile a consume takes what the consumer has now
    got += await waiting
    await read_until(reader, got, T0, 20)
    assert offsets(got, T0) == list(range(21))


async def test_a_failing_catch_up_read_loses_nothing_taken_before_it(harness, log):
    produce(log, T1, 0, 1000)
    reader = harness.reader()
    await reader.add([Position("t", 0, 0), Position("t", 1, 0)])  # t/0 on the tail (its ring at 0), t/1 behind
    assert (reader.state(T0), reader.state(T1)) == ("tail", "catch-up")
    got = list(await reader.read(100, EXPECTED_WITHIN))  # opens the catch-up consumer
    produce(log, T0, 0, 3)
    await settle()  # the ring has t/0's 0..2
    (private,) = (r for r in log.open_readers if r is not harness.tail.reader)
    private.read_failure = KafkaError("reading Kafka failed", code="_FAIL")
    got += await reader.read(100, 0)  # t/0's entries first, then the consumer's read fails: they still go out
    produce(log, T0, 3, 1)
    await settle()
    await read_until(reader, got, T0, 3)
    assert offsets(got, T0) == [0, 1, 2, 3]
    assert [e.details["code"] for e in reader.take_errors()] == ["_FAIL"]


async def test_records_reaching_a_ring_while_the_catch_up_consumer_is_let_go_end_the_wait(harness, log):
    # Seen end to end: a client handed over, its next read let go of the catch-up consumer (a close
    # that takes a while), the other partition's ring grew meanwhile, and the read then slept through
    # the wake for its whole timeout.
    produce(log, T0, 0, 20)
    produce(log, T1, 0, 5)
    closing = asyncio.Event()

    class SlowToClose(FakeReader):
        async def close(self) -> bool:
            await closing.wait()
            return await super().close()

    harness.make_private = SlowToClose
    reader = harness.reader()
    await reader.add([Position("t", 0, 10), Position("t", 1, 5)])
    assert (reader.state(T0), reader.state(T1)) == ("catch-up", "tail")
    got = list(await reader.read(100, EXPECTED_WITHIN))  # opens the catch-up consumer
    assert offsets(got, T0) == list(range(10, 20)) and reader.state(T0) == "tail"
    waiting = asyncio.ensure_future(reader.read(100, 60))  # first lets the catch-up consumer go
    await settle()
    produce(log, T1, 5, 3)
    await settle()  # the shared reader puts them in t/1's ring and wakes its readers
    closing.set()
    got = await asyncio.wait_for(waiting, EXPECTED_WITHIN)
    assert offsets(got, T1) == [5, 6, 7]
