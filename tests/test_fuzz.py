"""Property-based fuzzing of every client event through the live server.

Random JSON goes to one live connection; every call must get a well-formed ack
that agrees with the validators, the connection must stay usable and the server
must never log a traceback. The hypothesis loops are plain functions driven by
an event loop of their own, so one socket.io client serves many examples.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st

from kasocki_app import exceptions, jsonshim
from kasocki_app.conf import conf
from kasocki_app.exceptions import KasockiError
from kasocki_app.filters import compile_filters
from kasocki_app.namespace import CLIENT_EVENTS
from kasocki_app.protocol import parse_start, parse_subscription
from tests.clients import RecordingClient
from tests.e2e import server_service, wait_until

pytestmark = pytest.mark.django_db(transaction=True)

CALL_TIMEOUT = 10
ERROR_NAMES = frozenset(
    name
    for name, value in vars(exceptions).items()
    if isinstance(value, type) and issubclass(value, KasockiError) and value is not KasockiError
)
UNKNOWN_EVENTS = [
    "unsubscribe",
    "connect",
    "disconnect",
    "message",
    "err",
    "ready",
    "",
    "Subscribe",
    "consume ",
    "__proto__",
    "ευρετήριο",
    "\U0001f600",
    "\ud800",
    "e" * 300,
]
FUZZ_SETTINGS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    # No shrinking: every example costs round trips to the live server, and after a failure the
    # connection may hold state (a waiting consume, a filter) that makes replays meaningless.
    phases=[Phase.explicit, Phase.generate],
    report_multiple_bugs=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- strategies ---------------------------------------------------------------


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each picked about as often as its weight says (st.one_of drops repeats)."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(pool) - 1).flatmap(pool.__getitem__)


# Any code point, lone surrogates included: the server's JSON layer must cope with them.
TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
INTS = st.integers() | st.sampled_from(
    [0, -1, 1, 2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64, 2**64 + 1, 10**40, -(10**40)]
)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
KEYS = st.sampled_from(["a", "b", "0", "1", "user.name", "topic", "partition", "offset", "batch", "_kafka"]) | TEXT


def long_string(around: int) -> st.SearchStrategy[str]:
    return st.integers(around - 2, around + 2).map(lambda n: "x" * n)


def nested(depth: int, leaf: Any) -> Any:
    for level in range(depth):
        leaf = [leaf] if level % 2 else {"n": leaf}
    return leaf


STRINGS = weighted(
    (4, TEXT),
    (2, TEXT.map(lambda s: f"/{s}/")),
    (1, st.sampled_from(["/(/", "/(a)\\1/", "/(?=x)/", "/^(a+)+$/", "a..b", ".", "a.", ".".join("abcdefghijklmnopq")])),
    (1, long_string(conf.max_string_length)),
    (1, st.integers(conf.max_pattern_length - 1, conf.max_pattern_length + 2).map(lambda n: "/" + "p" * n + "/")),
    (1, st.integers(10_000, 60_000).map(lambda n: "L" * n)),
)
SCALARS = st.none() | st.booleans() | INTS | FLOATS | STRINGS
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=20,
)
DEEP = st.builds(nested, st.integers(50, 200), SCALARS)
WIDE = st.integers(conf.max_filter_list_length - 1, conf.max_assignments + 2).map(lambda n: [f"t{i}" for i in range(n)])
ANY_JSON = JSON | DEEP | WIDE


NOW_MS = int(time.time() * 1000)


@st.composite
def assignments(draw: st.DrawFn, topics: st.SearchStrategy[str]) -> dict[str, Any]:
    """One assignment object: mostly valid, with a partition, offset or timestamp now and then out of range."""
    item: dict[str, Any] = {"topic": draw(topics)}
    if draw(st.integers(0, 3)):
        item["partition"] = draw(weighted((4, st.integers(0, 2)), (1, st.integers(-1, 3)), (1, INTS), (1, SCALARS)))
    start = draw(st.sampled_from(["latest"] * 3 + ["offset"] * 3 + ["timestamp"] * 2 + ["both"]))
    if start in ("offset", "both"):
        item["offset"] = draw(weighted((3, st.integers(-1, 5)), (1, INTS)))
    if start in ("timestamp", "both"):
        item["timestamp"] = draw(weighted((2, st.integers(-1, 5)), (1, INTS), (1, st.just(NOW_MS))))
    if draw(st.integers(0, 9)) == 0:
        item[draw(KEYS)] = draw(JSON)  # an unknown field, or one of the known ones with any value
    return item


def subscription_strategy(topic: str, hidden: str) -> st.SearchStrategy[Any]:
    """``subscribe`` payloads: mostly well-shaped, naming the allowed topic, a hidden one, or junk."""
    topics = weighted(
        (3, st.just(topic)), (1, st.sampled_from([hidden, "__consumer_offsets", "t" * 249, "t" * 250, ""])), (1, TEXT)
    )
    shaped = weighted((4, assignments(topics)), (2, topics), (1, st.dictionaries(KEYS, JSON, max_size=4)))
    return weighted((3, shaped), (2, st.lists(shaped, max_size=4)), (1, ANY_JSON))


def filter_strategy() -> st.SearchStrategy[Any]:
    """``filter`` payloads: dotted paths to scalars, patterns and lists, with every limit nearby."""
    many_keys = st.integers(conf.max_filter_keys - 1, conf.max_filter_keys + 1).map(
        lambda n: {f"k{i}": i for i in range(n)}
    )
    deep_path = st.integers(conf.max_filter_path_depth - 1, conf.max_filter_path_depth + 1).map(
        lambda n: {".".join(["p"] * n): 1}
    )
    long_list = st.integers(conf.max_filter_list_length - 1, conf.max_filter_list_length + 1).map(
        lambda n: {"a": list(range(n))}
    )
    values = weighted((6, SCALARS), (2, st.lists(SCALARS, min_size=1, max_size=4)), (1, JSON))
    keys = weighted((4, KEYS), (1, STRINGS))
    shaped = weighted(
        (1, st.dictionaries(keys, values, max_size=2)), (2, st.dictionaries(keys, values, min_size=2, max_size=6))
    )
    return weighted((6, shaped), (1, many_keys), (1, deep_path), (1, long_list), (1, st.none()), (2, ANY_JSON))


START = st.none() | st.fixed_dictionaries({}, optional={"batch": st.integers(-1, 2) | INTS | SCALARS}) | ANY_JSON


def calls(topic: str, hidden: str) -> st.SearchStrategy[tuple[str, tuple[Any, ...]]]:
    """An event name and its arguments: usually one, sometimes none or several."""
    payloads = {
        "subscribe": subscription_strategy(topic, hidden),
        "filter": filter_strategy(),
        "start": START,
        "consume": ANY_JSON,
        "stop": ANY_JSON,
    }

    def with_args(event: str, payload: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[str, tuple[Any, ...]]]:
        args = weighted(
            (6, st.tuples(payload)),
            (1, st.just(())),
            (1, st.tuples(payload, ANY_JSON)),
            (1, st.tuples(ANY_JSON, ANY_JSON, JSON)),
        )
        return st.tuples(st.just(event), args)

    weights = {"subscribe": 3, "filter": 3, "start": 2, "consume": 1, "stop": 1}
    unknown = st.sampled_from(UNKNOWN_EVENTS).flatmap(lambda event: with_args(event, ANY_JSON))
    return weighted(*((weights[event], with_args(event, payload)) for event, payload in payloads.items()), (2, unknown))


# --- what the server must answer ----------------------------------------------


def as_server_sees(value: Any) -> Any:
    """``value`` after the trip through the server's JSON layer."""
    return jsonshim.loads(jsonshim.dumps(value))


def encoded_size(args: tuple[Any, ...]) -> int:
    return len(jsonshim.dumps(["event", *args]))


def validator_verdict(event: str, args: tuple[Any, ...]) -> str | None:
    """The error name the validators give before Kafka is asked, or None when the payload is valid."""
    if event not in CLIENT_EVENTS:
        return "UnknownEventError"
    if event == "consume":
        return "NotSubscribedError"
    if event == "stop":
        return None
    if len(args) > 1:
        return "InvalidArgumentError"
    arg = as_server_sees(args[0]) if args else None
    validate: Callable[[Any], Any] = {"subscribe": parse_subscription, "filter": compile_filters, "start": parse_start}[
        event
    ]
    try:
        validate(arg)
    except KasockiError as exc:
        return exc.name
    return "NotSubscribedError" if event == "start" else None


def subscription_verdict(arg: Any, available: dict[str, int]) -> str | None:
    """For a valid ``subscribe`` payload: the error Kafka's answers lead to, in request order."""
    for request in parse_subscription(as_server_sees(arg)):
        if request.topic not in available:
            return "TopicNotAvailableError"
        if request.partition is not None and request.partition >= available[request.topic]:
            return "PartitionNotAvailableError"
    return None


def check_ack(event: str, err: Any, res: Any, expected: str | None) -> None:
    if expected is None:
        assert err is None, f"{event}: unexpected error {err!r}"
        return
    assert res is None, f"{event}: error ack with a result {res!r}"
    assert isinstance(err, dict), f"{event}: expected {expected}, got {err!r}"
    assert err["name"] == expected, f"{event}: expected {expected}, got {err!r}"
    assert err["name"] in ERROR_NAMES
    assert err["origin"] == "Kasocki"
    assert err["event"] == event[:64]
    assert isinstance(err["message"], str) and err["message"]


def tracebacks(caplog: pytest.LogCaptureFixture, since: int = 0) -> list[str]:
    """Server log records (the server runs in this process) that carry a traceback."""
    gc.collect()  # "Task exception was never retrieved" is logged when the task is collected
    return [
        f"{record.name}: {record.getMessage()}"
        for record in caplog.records[since:]
        if record.exc_info or "Traceback" in record.getMessage()
    ]


class Driver:
    """Runs a socket.io client on an event loop owned by a synchronous test."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.runner = asyncio.Runner()
        self.client = self.connect()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return self.runner.run(asyncio.wait_for(coro, timeout))

    def connect(self) -> RecordingClient:
        client = self.run(RecordingClient().connect(self.url))
        self.run(client.next("ready"))
        return client

    def reconnect(self) -> None:
        self.run(self.client.close())
        self.client = self.connect()

    def call(self, event: str, *args: Any) -> tuple[Any, Any]:
        return self.run(self.client.call(event, *args, timeout=CALL_TIMEOUT), CALL_TIMEOUT + 5)

    def close(self) -> None:
        try:
            self.run(self.client.close())
        finally:
            self.runner.close()


@pytest.fixture(autouse=True)
def many_connections_from_one_address(settings: Any) -> None:
    """Every client here comes from 127.0.0.1, and the fuzz opens a new connection after each subscribe."""
    settings.KASOCKI_MAX_CONNECTION_RATE_PER_IP = 10_000


@pytest.fixture
def driver(asgi_server) -> Iterator[Callable[[], Driver]]:
    drivers: list[Driver] = []

    def make() -> Driver:
        drivers.append(Driver(asgi_server.url))
        return drivers[-1]

    yield make
    for each in drivers:
        each.close()


# --- the properties -----------------------------------------------------------


def test_random_payloads_for_every_event_get_well_formed_acks(kafka, make_topic, allow, driver, caplog):
    """Any event with any arguments, on a connection that has not subscribed (a successful subscribe reconnects)."""
    caplog.set_level(logging.WARNING)
    topic, hidden = make_topic(2), make_topic()
    allow(topic)
    per_partition = 3
    for partition in (0, 1):
        kafka.produce(topic, [{"i": i} for i in range(per_partition)], partition=partition)
    available = {topic: 2}
    fuzz = driver()
    seen: dict[str, int] = {}

    @settings(FUZZ_SETTINGS, max_examples=180)
    @given(call=calls(topic, hidden))
    # The rarer answers of subscribe, whatever the random draws.
    @example(call=("subscribe", ([{"topic": topic, "partition": 1, "timestamp": NOW_MS}, hidden],)))
    @example(call=("subscribe", ({"topic": topic, "partition": 2, "offset": 0},)))
    @example(call=("subscribe", ([topic, {"topic": topic, "partition": 0}],)))
    @example(
        call=("subscribe", ([{"topic": topic, "partition": 0, "offset": 10**6}, {"topic": topic, "partition": 1}],))
    )
    def each_call_gets_one_well_formed_ack(call: tuple[str, tuple[Any, ...]]) -> None:
        event, args = call
        if encoded_size(args) > conf.max_payload_bytes - 100:
            return  # over the frame limit the server rightly closes the connection (test_bad_input covers it)
        logged = len(caplog.records)
        expected = validator_verdict(event, args)
        if event == "subscribe" and expected is None:
            expected = subscription_verdict(args[0] if args else None, available)
        kind = f"{event if event in CLIENT_EVENTS else 'unknown'}:{expected or 'ok'}"
        seen[kind] = seen.get(kind, 0) + 1

        err, res = fuzz.call(event, *args)

        check_ack(event, err, res, expected)
        if err is not None:
            # The same error also reaches the client as an ``err`` event.
            assert fuzz.run(fuzz.client.next("err", CALL_TIMEOUT)) == err
        elif event == "filter":
            arg = as_server_sees(args[0]) if args else None
            assert res == (None if arg is None else arg)
        elif event == "subscribe":
            requested = parse_subscription(as_server_sees(args[0]))
            wanted = {(r.topic, p) for r in requested for p in ([r.partition] if r.partition is not None else range(2))}
            assert [(a["topic"], a["partition"]) for a in res] == sorted(wanted)
            assert all(0 <= a["offset"] <= per_partition for a in res)
            fuzz.reconnect()  # subscribe works once per connection; go on with a fresh one
        else:
            assert res is None
        assert tracebacks(caplog, logged) == []

    each_call_gets_one_well_formed_ack()

    # The fuzz reached every kind of answer, not just the first validation error.
    assert {
        "subscribe:ok",
        "subscribe:InvalidAssignmentError",
        "subscribe:TopicNotAvailableError",
        "subscribe:PartitionNotAvailableError",
        "subscribe:InvalidArgumentError",
        "filter:ok",
        "filter:InvalidFilterError",
        "start:InvalidArgumentError",
        "start:NotSubscribedError",
        "consume:NotSubscribedError",
        "stop:ok",
        "unknown:UnknownEventError",
    } <= set(seen), seen
    # The connection the fuzz used is still fully usable.
    assert fuzz.call("filter", None) == (None, None)
    assert fuzz.call("subscribe", {"topic": topic, "partition": 1, "offset": per_partition}) == (
        None,
        [{"topic": topic, "partition": 1, "offset": per_partition}],
    )
    kafka.produce(topic, [{"after": "fuzz"}], partition=1)
    err, message = fuzz.call("consume", None)
    assert err is None and message["after"] == "fuzz"
    # A newcomer is served.
    driver()
    assert tracebacks(caplog) == []


# Messages and filters share a small vocabulary, so that filters match some messages and not others.
WORDS = st.sampled_from(["a", "b", "c", "0", "1", "user", "name"])
PATHS = st.lists(WORDS, min_size=1, max_size=4).map(".".join)
PLAIN = weighted(
    (1, st.none()),
    (1, st.booleans()),
    (3, st.sampled_from([0, 1, 1.0, -1, 2.5, -0.0, 2**63 - 1])),
    (3, st.sampled_from(["x", "y", "ab", "", "é"])),
)
FILTER_VALUES = weighted(
    (4, PLAIN), (2, st.sampled_from(["/x/", "/^a/", "/b$/", "/(/"])), (2, st.lists(PLAIN, max_size=3)), (1, JSON)
)
DOCUMENTS = st.dictionaries(
    WORDS,
    st.recursive(PLAIN, lambda c: st.lists(c, max_size=4) | st.dictionaries(WORDS, c, max_size=4), max_leaves=12),
    max_size=6,
)
FILTERS = weighted((4, st.dictionaries(PATHS | KEYS, FILTER_VALUES, max_size=4)), (1, filter_strategy()))


def consumer_position(sid: str, topic: str) -> int:
    """The next offset the server will judge for ``sid``: records before it went through the filter.

    Connection.positions moves when a record is taken from what Kafka delivered and judged by the
    filter, in one synchronous step of the event loop, so once it moves past a record, the filter
    has judged that record before any later event of the client is handled. (librdkafka's own
    position moves earlier, when a record reaches the connection's buffer.)
    """
    connection = server_service().get(sid)
    return connection.positions.get((topic, 0), 0)


def test_random_filters_judge_random_messages_like_the_validator_does(kafka, make_topic, allow, driver, caplog):
    """On a subscribed connection: fuzzed filter and start payloads, then a fuzzed message either passes or not."""
    caplog.set_level(logging.WARNING)
    topic = make_topic()
    allow(topic)
    fuzz = driver()
    assert fuzz.call("subscribe", {"topic": topic, "partition": 0})[0] is None
    sid = fuzz.client.sio.get_sid()
    outcomes = {"passed": 0, "rejected": 0, "invalid": 0}

    def produce(document: dict[str, Any], timestamp: int) -> dict[str, Any]:
        [(_, offset)] = kafka.produce(topic, [document], partition=0, timestamp=timestamp)
        meta = {"topic": topic, "partition": 0, "offset": offset, "timestamp": timestamp, "key": None}
        return {**as_server_sees(document), "_kafka": meta}

    async def judged(consume_args: tuple[Any, ...], offset: int, timestamp: int) -> tuple[Any, Any]:
        """Consume while the filter is set; once the server has judged the record at ``offset``, clear the
        filter and produce a marker. The consume returns the record if the filter let it through, else the marker."""
        pending = asyncio.ensure_future(fuzz.client.call("consume", *consume_args, timeout=CALL_TIMEOUT))
        await wait_until(lambda: pending.done() or consumer_position(sid, topic) > offset, CALL_TIMEOUT, "filtering")
        assert await fuzz.client.call("filter", None) == (None, None)
        marker = produce({"marker": True}, timestamp)
        err, got = await pending
        assert err is None
        return got, marker

    @settings(FUZZ_SETTINGS, max_examples=120)
    @given(
        start=st.tuples(START) | st.tuples(START, JSON),
        filters=FILTERS,
        document=DOCUMENTS,
        consume_args=st.tuples() | st.tuples(ANY_JSON),
    )
    def filters_judge_messages(start, filters, document, consume_args) -> None:
        if max(encoded_size(args) for args in (start, (filters,), consume_args)) > conf.max_payload_bytes - 100:
            return
        logged = len(caplog.records)
        timestamp = int(time.time() * 1000)

        # start: validated like the validator says; a stream that starts is stopped again at once.
        err, res = fuzz.call("start", *start)
        expected = validator_verdict("start", start)
        check_ack("start", err, res, None if expected == "NotSubscribedError" else expected)
        if err is None:
            assert fuzz.call("stop") == (None, None)

        # filter: the server's answer agrees with the validator, whatever the payload.
        err, res = fuzz.call("filter", filters)
        try:
            normalised, predicate = compile_filters(as_server_sees(filters))
        except KasockiError as exc:
            check_ack("filter", err, res, exc.name)
            outcomes["invalid"] += 1
            # The previous filter (none) stays: the next message passes.
            sent = produce(document, timestamp)
            assert fuzz.call("consume", *consume_args) == (None, sent)
        else:
            check_ack("filter", err, res, None)
            assert res == normalised
            sent = produce(document, timestamp)
            got, marker = fuzz.run(judged(consume_args, sent["_kafka"]["offset"], timestamp), CALL_TIMEOUT * 3)
            passes = predicate is None or predicate(sent)
            if got == sent:
                assert passes, f"the server let through a message the filter rejects: {sent!r}"
                outcomes["passed"] += 1
                assert fuzz.call("consume") == (None, marker)
            else:
                assert got == marker
                assert not passes, f"the server dropped a message the filter accepts: {sent!r}"
                outcomes["rejected"] += 1
        assert tracebacks(caplog, logged) == []

    filters_judge_messages()

    assert all(outcomes.values()), outcomes
    # Every stream that started was stopped before anything was produced.
    assert fuzz.client.pending("message") == fuzz.client.pending("messages") == []
    assert tracebacks(caplog) == []
