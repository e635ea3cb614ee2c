"""The live tail over the in-memory log: joins, catch-up, handover, demotion, filter groups, closing.

Every test checks exact offsets per client: nothing twice, nothing skipped, in order.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from confluent_kafka import KafkaError as RdKafkaError
from confluent_kafka import Message
from prometheus_client import REGISTRY

from kasocki_app.connection import Connection
from kasocki_app.exceptions import KafkaError, TooManyConsumersError
from kasocki_app.feed import Feed
from kasocki_app.logs import ContextFilter, bind
from kasocki_app.tail import LiveTail
from kasocki_app.tailing import TailReader
from kasocki_app.types import Position, TopicPartition
from kasocki_app.watch import ClusterWatch
from tests.fakes import EXPECTED_WITHIN, Changes, FakeLog, FakeOutbound, FakeReader, emit, offsets_of, settle

T0 = TopicPartition("t", 0)


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_total") or 0.0


class Clients:
    """Connections over one live tail of the fake log."""

    def __init__(self, log: FakeLog) -> None:
        self.log = log
        self.tail = LiveTail(log.open_reader, log)
        log.changes.listeners.append(self.tail.nudge)
        self.connections: list[Connection] = []
        self.consumers_left: int | None = None  # None: no limit

    async def open_reader(self) -> TailReader:
        return TailReader(self.tail, self.open_private)

    async def open_private(self) -> FakeReader:
        if self.consumers_left is not None:
            if self.consumers_left <= 0:
                raise TooManyConsumersError("no consumer left", limit=0)
            self.consumers_left -= 1
        return await self.log.open_reader()

    def connect(self) -> tuple[Connection, FakeOutbound]:
        outbound = FakeOutbound()
        connection = Connection(f"sid-{len(self.connections)}", outbound, self.open_reader, self.log)
        self.connections.append(connection)
        return connection, outbound

    @staticmethod
    def state(connection: Connection, tp: TopicPartition = T0) -> str:
        reader = connection.feed.reader
        assert isinstance(reader, TailReader)
        return reader.state(tp)

    @property
    def private_readers(self) -> list[Any]:
        return [r for r in self.log.open_readers if r is not self.tail.reader]

    async def close(self) -> None:
        for connection in self.connections:
            await connection.close()
        await self.tail.close()


@pytest.fixture
async def clients(log: FakeLog, settings: Any, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Clients]:
    settings.KASOCKI_ASSIGNMENT_CHECK_SECONDS = 0
    settings.KASOCKI_TAIL_RECORDS = 5
    monkeypatch.setattr("kasocki_app.feed.WAIT_MAX_SECONDS", 60.0)
    monkeypatch.setattr("kasocki_app.tail.WAIT_MAX_SECONDS", 60.0)
    log.create_topic("t")
    made = Clients(log)
    yield made
    await made.close()


def numbered(count: int, start: int = 0) -> list[dict[str, int]]:
    return [{"i": i, "bucket": i % 3} for i in range(start, start + count)]


async def ring_of_15_to_19(clients: Clients) -> Connection:
    """Offsets 0..19 in the log; a first client at latest opened the ring at 10; it keeps 15..19."""
    log = clients.log
    log.produce("t", numbered(10))
    first, outbound = clients.connect()
    await first.subscribe({"topic": "t", "partition": 0})
    await first.start(None)
    for i in range(10, 20):  # one at a time: the first client keeps up with the ring
        log.produce("t", numbered(1, i))
        await outbound.until(lambda n=i: len(outbound.messages()) == n - 9, "the first client's message")
    ring = clients.tail.find(T0)
    assert ring is not None and (ring.low, ring.high, len(ring)) == (15, 20, 5)
    return first


@pytest.mark.parametrize(
    ("position", "joins"),
    [
        (12, "catch-up"),  # before the ring
        (15, "tail"),  # at its start
        (17, "tail"),  # inside
        (20, "tail"),  # at its end: the next record
        (None, "tail"),  # latest
    ],
)
async def test_a_client_joins_the_tail_or_catches_up_by_where_it_starts(clients, position, joins):
    await ring_of_15_to_19(clients)
    client, outbound = clients.connect()
    request = {"topic": "t", "partition": 0} | ({} if position is None else {"offset": position})
    await client.subscribe(request)
    assert clients.state(client) == joins
    assert clients.private_readers == []  # none until it reads: an idle subscription holds no consumer
    await client.start(None)
    clients.log.produce("t", numbered(5, 20))
    start = 20 if position is None else position
    await outbound.until(lambda: len(outbound.messages()) == 25 - start, "every message from the start")
    await settle()
    assert offsets_of(outbound.messages()) == [("t", 0, o) for o in range(start, 25)]
    assert clients.state(client) == "tail"  # caught up: handed over, its own reader closed
    assert clients.private_readers == []


async def test_a_client_paused_for_its_backlog_lets_its_catch_up_consumer_go_and_reads_on_exactly(
    clients, settings, monkeypatch
):
    # A stalled client kept its consumer's prefetch (megabytes) beside its backlog for as long as it stalled.
    monkeypatch.setattr("kasocki_app.stream.RELEASE_SECONDS", 0.05)
    settings.KASOCKI_MAX_BACKLOG_BYTES = 1000
    settings.KASOCKI_CONSUME_BATCH_SIZE = 5  # read as it is sent: the catch-up lasts
    clients.log.produce("t", numbered(50))
    client, outbound = clients.connect()
    await client.subscribe({"topic": "t", "partition": 0, "offset": 0})  # behind the ring, opened at 50
    assert clients.private_readers == []  # subscribed, not reading: no consumer
    await client.start(None)
    await outbound.until(lambda: len(outbound.messages()) >= 3, "catching up")
    assert len(clients.private_readers) == 1
    outbound.backlog_bytes = 1001  # the client stops reading
    await outbound.until(lambda: not clients.private_readers, "its consumer let go while it does not read")
    assert len(outbound.messages()) < 50 and clients.state(client) == "catch-up"
    outbound.backlog_bytes = 0  # it reads again: a new consumer, from where it was
    await outbound.until(lambda: len(outbound.messages()) == 50, "the rest of the catch-up")
    clients.log.produce("t", numbered(5, 50))
    await outbound.until(lambda: len(outbound.messages()) == 55, "the ring's records")
    assert offsets_of(outbound.messages()) == [("t", 0, o) for o in range(55)]
    assert clients.state(client) == "tail" and clients.private_readers == []


@pytest.mark.parametrize(("offset", "joins"), [(12, "catch-up"), (17, "tail")])
async def test_a_timestamp_joins_where_its_offset_is(clients, offset, joins):
    await ring_of_15_to_19(clients)
    timestamp = clients.log.topics["t"][0].records[offset].timestamp()[1]
    client, _ = clients.connect()
    acked = await client.subscribe({"topic": "t", "partition": 0, "timestamp": timestamp})
    assert acked == [{"topic": "t", "partition": 0, "offset": offset}]
    assert clients.state(client) == joins
    got = offsets_of([await emit(client, "consume") for _ in range(20 - offset)])
    assert got == [("t", 0, o) for o in range(offset, 20)]


async def test_handover_under_concurrent_produce_loses_and_repeats_nothing(clients):
    await ring_of_15_to_19(clients)
    client, outbound = clients.connect()
    await client.subscribe({"topic": "t", "partition": 0, "offset": 0})
    await client.start({"batch": 3})
    handovers, demotions = counter("kasocki_handovers"), counter("kasocki_demotions")
    for i in range(20, 60):  # produced while the client catches up and hands over
        clients.log.produce("t", numbered(1, i))
        await settle()
    await outbound.until(lambda: len(outbound.messages()) == 60, "every message")
    assert offsets_of(outbound.messages()) == [("t", 0, o) for o in range(60)]
    assert clients.state(client) == "tail"
    # Handed over once, and once more after each time the 5-record ring moved past what it held.
    assert counter("kasocki_handovers") - handovers == counter("kasocki_demotions") - demotions + 1
    assert clients.private_readers == []


async def test_a_client_that_falls_behind_the_ring_is_demoted_and_rejoins(clients):
    await ring_of_15_to_19(clients)
    slow, outbound = clients.connect()
    await slow.subscribe({"topic": "t", "partition": 0})
    assert clients.state(slow) == "tail"
    demotions = counter("kasocki_demotions")
    outbound.backlog_bytes = 10**9  # the client stops reading: its stream pauses
    await slow.start(None)
    await outbound.until(lambda: outbound.probes > 0, "the stream looking at the client")
    clients.log.produce("t", numbered(20, 20))  # the ring moves past it (5 records kept)
    await settle()
    outbound.backlog_bytes = 0
    await outbound.until(lambda: len(outbound.messages()) == 20, "the backlog after the pause")
    assert counter("kasocki_demotions") > demotions
    clients.log.produce("t", numbered(3, 40))
    await outbound.until(lambda: len(outbound.messages()) == 23, "the messages after rejoining")
    assert offsets_of(outbound.messages()) == [("t", 0, o) for o in range(20, 43)]
    assert clients.state(slow) == "tail" and clients.private_readers == []


async def test_equal_filters_share_one_evaluation_and_one_encode_per_record(clients):
    first = await ring_of_15_to_19(clients)
    await emit(first, "stop")
    group: list[tuple[Connection, FakeOutbound]] = []
    for spec in [{"bucket": 1}, {"bucket": 1}, {"bucket": 2}, None, None]:
        client, outbound = clients.connect()
        await client.subscribe({"topic": "t", "partition": 0})
        client.set_filter(spec)
        await client.start(None)
        group.append((client, outbound))
    evaluations, encodes = counter("kasocki_filter_evaluations"), counter("kasocki_message_encodes")
    for i in range(20, 26):  # one at a time: the 5-record ring keeps what each client has not judged yet
        clients.log.produce("t", numbered(1, i))
        await settle()
    expected = [2, 2, 2, 6, 6]  # buckets of 20..25: 2, 0, 1, 2, 0, 1
    for (_, outbound), count in zip(group, expected, strict=True):
        await outbound.until(lambda o=outbound, n=count: len(o.messages()) == n, "the group's messages")
    assert counter("kasocki_filter_evaluations") - evaluations == 6 * 2  # two distinct filters
    assert counter("kasocki_message_encodes") - encodes == 6  # once per record, whoever receives it
    assert [m["i"] for m in group[0][1].messages()] == [22, 25]
    # A filter change moves a client to another group: judged by its new filter from the next record on.
    group[0][0].set_filter({"bucket": 2})
    for i in range(26, 29):  # buckets 2, 0, 1
        clients.log.produce("t", numbered(1, i))
        await settle()
    await group[0][1].until(lambda: len(group[0][1].messages()) == 3, "the message of the new filter")
    assert [m["i"] for m in group[0][1].messages()] == [22, 25, 26]


async def test_consume_during_start_on_the_tail_is_served_first(clients):
    await ring_of_15_to_19(clients)
    client, outbound = clients.connect()
    await client.subscribe({"topic": "t", "partition": 0})
    await client.start(None)
    await settle()
    waiting = [emit(client, "consume") for _ in range(3)]
    await settle()
    clients.log.produce("t", numbered(6, 20))
    got = offsets_of([await call for call in waiting])
    await outbound.until(lambda: len(outbound.messages()) == 3, "the stream's messages")
    assert got == [("t", 0, o) for o in (20, 21, 22)]
    assert offsets_of(outbound.messages()) == [("t", 0, o) for o in (23, 24, 25)]


async def test_a_tail_nobody_reads_closes_after_the_grace_period_and_reopens(clients, settings):
    first = await ring_of_15_to_19(clients)
    shared = clients.tail.reader
    await first.close()
    assert clients.tail.find(T0) is not None  # kept for the grace period
    settings.KASOCKI_TAIL_GRACE_SECONDS = 0  # (not a valid setting: here, no wait for time to pass)
    clients.log.produce("t", numbered(1, 20))  # wakes the pump, which looks for rings nobody reads
    await settle()
    assert clients.tail.rings == {} and shared is not None and T0 not in shared.positions
    client, outbound = clients.connect()
    await client.subscribe({"topic": "t", "partition": 0, "offset": 19})
    assert clients.state(client) == "catch-up"  # the new ring starts at the log end, 21
    await client.start(None)
    clients.log.produce("t", numbered(2, 21))
    await outbound.until(lambda: len(outbound.messages()) == 4, "the messages from 19")
    assert offsets_of(outbound.messages()) == [("t", 0, o) for o in range(19, 23)]
    assert clients.state(client) == "tail"


async def test_a_lost_offset_of_the_tail_sends_its_readers_to_their_own_reset(clients, settings):
    settings.KASOCKI_RESET_POLICY = "earliest"
    await ring_of_15_to_19(clients)
    client, outbound = clients.connect()
    await client.subscribe({"topic": "t", "partition": 0})
    await client.start(None)
    await settle()
    # The shared reader meets a lost offset: its readers leave the ring and go on by themselves.
    clients.log.fail("t", 0, code=RdKafkaError._AUTO_OFFSET_RESET)  # an error record of the shared reader only
    clients.log.produce("t", numbered(2, 20))
    await outbound.until(lambda: len(outbound.messages()) == 2, "the messages after the ring closed")
    assert offsets_of(outbound.messages()) == [("t", 0, 20), ("t", 0, 21)]


async def test_a_ring_reopened_while_its_lost_offset_is_removed_waits_for_the_removal(clients, settings):
    # Both change the shared reader's assignment: in the other order the partition would end
    # up unassigned under an open ring, whose readers then wait for records forever.
    settings.KASOCKI_RESET_POLICY = "earliest"
    await ring_of_15_to_19(clients)
    shared = clients.tail.reader
    assert isinstance(shared, FakeReader)
    clients.log.assigning = asyncio.Event()  # assignment changes are made; their calls return once set
    clients.log.fail("t", 0, code=RdKafkaError._AUTO_OFFSET_RESET)  # the pump closes the ring, removes t/0
    await settle()
    assert clients.tail.find(T0) is None and T0 not in shared.positions, "the pump is not removing t/0"
    reopen = asyncio.create_task(clients.tail.open([T0]))
    await settle()
    assert T0 not in shared.positions, "the ring was reopened before its removal returned"
    clients.log.assigning.set()
    await reopen
    assert T0 in shared.positions and clients.tail.find(T0) is not None


async def test_a_ring_whose_assignment_failed_leaves_no_partition_assigned_without_it(clients):
    await ring_of_15_to_19(clients)
    shared = clients.tail.reader
    assert isinstance(shared, FakeReader)
    clients.log.create_topic("u")
    u0 = TopicPartition("u", 0)
    # librdkafka makes the change, but the call fails (it timed out): no ring opens ...
    shared.change_failure = KafkaError("Kafka did not answer within 10s", code="_TIMED_OUT")
    with pytest.raises(KafkaError):
        await clients.tail.open([u0])
    assert clients.tail.find(u0) is None
    # ... and the partition is not left assigned, where the next open's add would meet it.
    assert u0 not in shared.positions
    await clients.tail.open([u0])
    assert clients.tail.find(u0) is not None and u0 in shared.positions


class SlowLookups:
    """The fake log's watermarks of ``slow`` partitions come once ``answer`` is set (a slow broker)."""

    def __init__(self, log: FakeLog, slow: set[TopicPartition]) -> None:
        self.slow = slow
        self.answer = asyncio.Event()
        self.asked = asyncio.Event()
        self._lookup = log.watermarks
        log.watermarks = self.watermarks  # type: ignore[method-assign]

    async def watermarks(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        marks = await self._lookup(partitions)  # as the broker saw them when asked
        if self.slow.intersection(partitions):
            self.asked.set()
            await self.answer.wait()
        return marks


@pytest.mark.parametrize("closing", ["idle after the grace period", "lost offset"])
async def test_a_slow_lookup_of_a_new_ring_stalls_no_other_ring(clients, settings, closing):
    # The pump closes a ring (an idle one it sweeps, or one whose offset was lost) while another
    # ring's watermarks are looked up: delivery to every ring must go on meanwhile.
    log, tail = clients.log, clients.tail
    await ring_of_15_to_19(clients)  # a client reads t/0 at the head
    client, outbound = clients.connect()
    await client.subscribe({"topic": "t", "partition": 0})
    await client.start(None)
    log.create_topic("idle")
    idle, new = TopicPartition("idle", 0), TopicPartition("new", 0)
    await tail.open([idle])  # a ring nobody reads
    log.create_topic("new")
    slow = SlowLookups(log, {new})
    opening = asyncio.create_task(tail.open([new]))
    try:
        await asyncio.wait_for(slow.asked.wait(), EXPECTED_WITHIN)
        if closing == "lost offset":
            log.fail("idle", 0, code=RdKafkaError._AUTO_OFFSET_RESET)
        else:
            settings.KASOCKI_TAIL_GRACE_SECONDS = 0  # (not a valid setting: here, no wait for time to pass)
            log.produce("idle", numbered(1))  # wakes the pump, which then sweeps
        await settle()
        log.produce("t", numbered(2, 20))
        await outbound.until(lambda: len(outbound.messages()) == 2, "t/0's records while the lookup waits")
        assert offsets_of(outbound.messages()) == [("t", 0, 20), ("t", 0, 21)]
        assert tail.find(idle) is None  # closed by the pump, which did not wait either
        assert not opening.done()
    finally:
        slow.answer.set()
        await opening
    shared = tail.reader
    assert isinstance(shared, FakeReader)
    assert tail.find(new) is not None and new in shared.positions
    await log.changes.until(lambda: idle not in shared.positions, "the closed ring's removal")


class FetchedAhead(FakeReader):
    """A shared reader as ``reader.py`` allows: what it fetched of a partition still comes after the
    partition's removal returned. Records of ``held`` partitions are fetched but not handed out yet."""

    def __init__(self, log: FakeLog) -> None:
        super().__init__(log)
        self.held: set[TopicPartition] = set()
        self.fetched: list[Message] = []

    async def remove(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in self.held.intersection(partitions):
            log = self.log.topics[tp.topic][tp.partition]
            self.fetched += log.records[self.positions[tp] : log.end]
        self.held.difference_update(partitions)
        await super().remove(partitions)

    def _take(self, max_records: int) -> list[Message]:
        fetched, self.fetched = self.fetched[:max_records], self.fetched[max_records:]
        hidden = {tp: self.positions.pop(tp) for tp in self.held if tp in self.positions}
        try:
            return fetched + super()._take(max_records - len(fetched))
        finally:
            self.positions.update(hidden)


@pytest.mark.parametrize("had", ["its ring open", "its ring opened and closed"])
async def test_a_ring_reopened_after_a_slow_lookup_starts_after_what_its_last_assignment_fetched(log, had):
    # A mark looked up while the shared reader had the partition may lie behind records of that
    # assignment which come after its removal: a ring starting at the mark would take them and skip
    # what lies between.
    shared = FetchedAhead(log)

    async def open_shared() -> FetchedAhead:
        log.readers.append(shared)
        return shared

    log.create_topic("t")
    log.create_topic("new")
    new = TopicPartition("new", 0)
    slow = SlowLookups(log, {new})
    tail = LiveTail(open_shared, log)
    try:
        log.produce("t", numbered(10))
        if had == "its ring open":
            await tail.open([T0])  # at 10
        opening = asyncio.create_task(tail.open([T0, new]))
        await asyncio.wait_for(slow.asked.wait(), EXPECTED_WITHIN)
        if had != "its ring open":
            await asyncio.wait_for(tail.open([T0]), EXPECTED_WITHIN)  # another client's, during the lookup (of 10)
        log.produce("t", numbered(3, 10))
        await settle()  # in the ring: 10..12
        shared.held.add(T0)
        log.produce("t", numbered(1, 13))  # fetched, not handed out yet
        log.fail("t", 0, code=RdKafkaError._AUTO_OFFSET_RESET)  # the pump closes the ring
        await settle()
        assert tail.find(T0) is None and T0 not in shared.positions and shared.fetched
        slow.answer.set()
        await opening
        log.produce("t", numbered(1, 14))
        await settle()
        ring = tail.find(T0)
        assert ring is not None
        assert [e.offset for e in ring.since(ring.low, 100)] == list(range(ring.low, ring.high)) != []
    finally:
        slow.answer.set()
        await tail.close()


@pytest.mark.parametrize("first", ["the removal", "the reopen"])
async def test_a_ring_the_pump_closed_and_reopened_at_once_keeps_its_partition_assigned(clients, first):
    # The pump closes a ring at once and leaves its partition's removal from the shared reader to
    # whoever takes the tail's lock next: the reopen's add must come after it, whoever that is.
    log, tail = clients.log, clients.tail
    await tail.open([T0])
    shared = tail.reader
    assert isinstance(shared, FakeReader)
    changes: list[tuple[str, asyncio.Task[Any] | None]] = []  # of t/0, and which task made each
    add, remove = shared.add, shared.remove

    async def adding(positions: Sequence[Position]) -> None:
        changes.extend(("add", asyncio.current_task()) for p in positions if p.tp == T0)
        await add(positions)

    async def removing(partitions: Sequence[TopicPartition]) -> None:
        changes.extend(("remove", asyncio.current_task()) for tp in partitions if tp == T0)
        await remove(partitions)

    shared.add, shared.remove = adding, removing  # type: ignore[method-assign]
    log.create_topic("u")
    log.create_topic("v")
    log.assigning = asyncio.Event()  # assignment changes are made; their calls return once set
    holding = asyncio.create_task(tail.open([TopicPartition("u", 0)]))  # holds the lock meanwhile
    await settle()

    def reopen() -> asyncio.Task[None]:  # with a partition that has no ring yet: it waits for the lock
        return asyncio.create_task(tail.open([T0, TopicPartition("v", 0)]))

    reopening = reopen() if first == "the reopen" else None
    await settle()
    log.fail("t", 0, code=RdKafkaError._AUTO_OFFSET_RESET)  # the pump closes t/0's ring
    await settle()
    assert tail.find(T0) is None and changes == [], "the ring is closed; its removal waits for the lock"
    reopening = reopening or reopen()
    await settle()
    log.assigning.set()
    await holding
    await reopening
    await settle()  # the removals' task, when its turn came after the reopen
    assert [kind for kind, _ in changes] == ["remove", "add"]
    assert (changes[0][1] is reopening) == (first == "the reopen")
    ring = tail.find(T0)
    assert ring is not None and T0 in shared.positions
    log.produce("t", numbered(1))
    await settle()
    assert ring.high == 1, "t/0's record is not in the reopened ring"


async def test_lines_of_process_wide_tasks_carry_no_connection(clients, log, settings, caplog):
    caplog.handler.addFilter(ContextFilter())
    caplog.set_level(logging.DEBUG, logger="kasocki_app")
    bind("sid-gone", "192.0.2.1")  # the connection whose subscribe opened the tail and started the watch
    await clients.tail.open([T0])
    watch = ClusterWatch(log, clients.tail.nudge)
    watch.ensure_started()
    try:

        async def unreachable() -> Any:
            raise KafkaError("Kafka did not answer within 10s", code="_TIMED_OUT")

        log.fingerprint = unreachable  # type: ignore[method-assign]
        settings.KASOCKI_TAIL_GRACE_SECONDS = 0
        log.produce("t", numbered(1))  # wakes the pump, which closes the ring nobody reads
        await settle()
        assert clients.tail.find(T0) is None and watch.generation > 0
    finally:
        await watch.close()
    lines = {r.name: r for r in caplog.records if "closed: no reader" in r.message or "cluster watch" in r.message}
    assert {name: (r.sid, r.client) for name, r in lines.items()} == {
        "kasocki_app.tail": ("-", "-"),
        "kasocki_app.watch": ("-", "-"),
    }


async def test_no_private_reader_is_opened_for_clients_at_the_head(clients):
    clients.consumers_left = 0
    await ring_of_15_to_19(clients)
    connected = [clients.connect() for _ in range(20)]
    for client, _ in connected:
        await client.subscribe({"topic": "t", "partition": 0})
        await client.start(None)
    clients.log.produce("t", numbered(3, 20))
    for _, outbound in connected:
        await outbound.until(lambda o=outbound: len(o.messages()) == 3, "every client's messages")
        assert offsets_of(outbound.messages()) == [("t", 0, o) for o in (20, 21, 22)]
    assert len(clients.log.open_readers) == 1  # the shared one


async def test_catch_up_waits_for_a_free_consumer_instead_of_failing(clients):
    await ring_of_15_to_19(clients)
    clients.consumers_left = 0
    client, outbound = clients.connect()
    acked = await client.subscribe({"topic": "t", "partition": 0, "offset": 10})
    assert acked == [{"topic": "t", "partition": 0, "offset": 10}] and clients.private_readers == []
    await client.start(None)
    await settle()
    assert outbound.messages() == [] and outbound.errors() == []
    clients.consumers_left = 1
    clients.tail.nudge()  # the next wait of the stream tries again
    await outbound.until(lambda: len(outbound.messages()) == 10, "the messages once a consumer was free")
    assert offsets_of(outbound.messages()) == [("t", 0, o) for o in range(10, 20)]


async def test_idle_clients_on_the_tail_look_at_the_cluster_only_when_it_changed(clients, log, monkeypatch):
    # Without the watch an idle stream would wake at this interval (and look, the check being due).
    monkeypatch.setattr("kasocki_app.feed.WAIT_MAX_SECONDS", 0.01)
    watch = ClusterWatch(log, clients.tail.nudge)
    looks = Changes()
    fingerprint = log.fingerprint

    async def counted() -> Any:
        looks.notify()
        return await fingerprint()

    log.fingerprint = counted  # type: ignore[method-assign]
    watch.ensure_started()
    try:
        idle = []
        for i in range(3):
            outbound = FakeOutbound()
            connection = Connection(f"idle-{i}", outbound, clients.open_reader, log, watch=watch)
            clients.connections.append(connection)
            await connection.subscribe({"topic": "t", "partition": 0})
            await connection.start(None)
            idle.append(outbound)
        await settle()
        asked = log.asked
        woken: Counter[str] = Counter()
        original = Feed.after_take

        async def step(feed: Feed, event: str) -> None:
            woken[feed.sid] += 1
            await original(feed, event)

        monkeypatch.setattr(Feed, "after_take", step)
        for _ in range(3):  # three looks of the watch at an unchanged cluster
            await looks.wait(EXPECTED_WITHIN)
            await settle()
        assert woken == {} and log.asked == asked  # no stream woke, no connection looked itself
        log.produce("t", numbered(1, 20))  # records wake the streams, but the cluster did not change
        for outbound in idle:
            await outbound.until(lambda o=outbound: len(o.messages()) == 1, "the record")
        assert log.asked == asked
        log.disallow("t")
        for outbound in idle:
            await outbound.until(lambda o=outbound: o.errors() != [], "the topic's removal")
            assert [e["name"] for e in outbound.errors()] == ["TopicNotAvailableError"]
    finally:
        await watch.close()


async def test_an_error_of_the_shared_reader_naming_a_partition_reaches_only_its_readers(clients, log):
    log.create_topic("u")
    on_t, t_out = clients.connect()
    on_u, u_out = clients.connect()
    await on_t.subscribe({"topic": "t", "partition": 0})
    await on_u.subscribe({"topic": "u", "partition": 0})
    await on_t.start(None)
    await on_u.start(None)
    await settle()
    shared = clients.tail.reader
    assert isinstance(shared, FakeReader)
    shared.errors.append(KafkaError("u [0]: topic does not exist (Broker: Unknown topic or partition)", code="X"))
    shared.errors.append(KafkaError("127.0.0.1:9092/bootstrap: Connection refused", code="_TRANSPORT"))
    log.produce("t", numbered(1, 0))  # wakes the pump, which hands the errors out
    log.produce("u", numbered(1, 0))
    await u_out.until(lambda: len(u_out.errors()) == 2, "both errors at the reader of u")
    await t_out.until(lambda: len(t_out.messages()) == 1, "the message of t")
    await settle()
    assert [e["code"] for e in t_out.errors()] == ["_TRANSPORT"]  # nothing about u
