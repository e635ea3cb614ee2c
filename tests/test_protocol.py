"""Validation of subscribe and start payloads."""

from __future__ import annotations

import pytest

from kasocki_app.exceptions import InvalidArgumentError, InvalidAssignmentError
from kasocki_app.protocol import AssignmentRequest, StartOptions, parse_start, parse_subscription


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        pytest.param("t", [AssignmentRequest("t")], id="name"),
        pytest.param(["t", "u"], [AssignmentRequest("t"), AssignmentRequest("u")], id="names"),
        pytest.param({"topic": "t"}, [AssignmentRequest("t")], id="object"),
        pytest.param({"topic": "t", "timestamp": 5}, [AssignmentRequest("t", timestamp=5)], id="timestamp"),
        pytest.param(
            {"topic": "t", "partition": 1, "offset": 0}, [AssignmentRequest("t", 1, offset=0)], id="partition-offset"
        ),
        pytest.param(
            {"topic": "t", "partition": 0, "timestamp": 9},
            [AssignmentRequest("t", 0, timestamp=9)],
            id="partition-time",
        ),
        pytest.param({"topic": "t", "partition": 2}, [AssignmentRequest("t", 2)], id="partition-latest"),
        pytest.param(
            ["t", {"topic": "u", "partition": 0, "offset": 3}],
            [AssignmentRequest("t"), AssignmentRequest("u", 0, offset=3)],
            id="mixed",
        ),
    ],
)
def test_parse_subscription_accepts(arg, expected):
    assert parse_subscription(arg) == expected


@pytest.mark.parametrize(
    "arg",
    [
        pytest.param(None, id="null"),
        pytest.param([], id="empty-list"),
        pytest.param(5, id="number"),
        pytest.param("", id="empty-name"),
        pytest.param({"partition": 0}, id="no-topic"),
        pytest.param({"topic": 5}, id="topic-not-string"),
        pytest.param({"topic": "t" * 300}, id="topic-too-long"),
        pytest.param({"topic": "t", "partition": "0"}, id="partition-string"),
        pytest.param({"topic": "t", "partition": -1}, id="partition-negative"),
        pytest.param({"topic": "t", "partition": True}, id="partition-bool"),
        pytest.param({"topic": "t", "partition": 0, "offset": 1.5}, id="offset-float"),
        pytest.param({"topic": "t", "partition": 0, "offset": -2}, id="offset-negative"),
        pytest.param({"topic": "t", "offset": 3}, id="offset-without-partition"),
        pytest.param({"topic": "t", "partition": 0, "offset": 1, "timestamp": 2}, id="offset-and-timestamp"),
        pytest.param({"topic": "t", "timestamp": "yesterday"}, id="timestamp-string"),
        pytest.param({"topic": "t", "colour": "red"}, id="unknown-field"),
        pytest.param(["t", "t"], id="duplicate-topic"),
        pytest.param(["t", {"topic": "t", "partition": 0}], id="topic-and-its-partition"),
        pytest.param([{"topic": "t", "partition": 0}, {"topic": "t", "partition": 0, "offset": 1}], id="dup-partition"),
        pytest.param([[["t"]]], id="nested-list"),
        pytest.param([f"t{i}" for i in range(1000)], id="too-many"),
    ],
)
def test_parse_subscription_rejects(arg):
    with pytest.raises(InvalidAssignmentError):
        parse_subscription(arg)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [(None, StartOptions()), ({}, StartOptions()), ({"batch": 10}, StartOptions(batch=10))],
)
def test_parse_start_accepts(arg, expected):
    assert parse_start(arg) == expected


@pytest.mark.parametrize("arg", [5, "x", {"batch": 0}, {"batch": "5"}, {"batch": 10**9}, {"other": 1}, [1]])
def test_parse_start_rejects(arg):
    with pytest.raises(InvalidArgumentError):
        parse_start(arg)
