"""Filter semantics as truth tables."""

from __future__ import annotations

import pytest

from kasocki_app.exceptions import InvalidFilterError
from kasocki_app.filters import compile_filters

MESSAGE = {
    "n": 25,
    "f": 2.5,
    "s": "green apple",
    "one": "1",
    "t": True,
    "z": None,
    "user": {"last_name": "Lovelace", "age": 36, "address": {"city": "London"}},
    "tags": ["a", "b", "c"],
    "nums": [1, 2, 3],
    "items": [{"id": 7}, {"id": 8}],
    "nothing": None,
}


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        pytest.param({"n": 25}, True, id="int-equal"),
        pytest.param({"n": 25.0}, True, id="float-equals-int"),
        pytest.param({"n": "25"}, False, id="string-never-equals-number"),
        pytest.param({"one": 1}, False, id="number-never-equals-string"),
        pytest.param({"t": 1}, False, id="number-never-equals-true"),
        pytest.param({"t": True}, True, id="bool-equal"),
        pytest.param({"n": True}, False, id="bool-never-equals-number"),
        pytest.param({"f": 2.5}, True, id="float-equal"),
        pytest.param({"z": None}, True, id="null-equals-null"),
        pytest.param({"missing": None}, False, id="null-never-matches-missing"),
        pytest.param({"s": "green apple"}, True, id="string-equal"),
        pytest.param({"s": "green"}, False, id="string-is-not-substring"),
        pytest.param({"user.last_name": "Lovelace"}, True, id="dotted"),
        pytest.param({"user.address.city": "London"}, True, id="dotted-deep"),
        pytest.param({"user.address.city": "Paris"}, False, id="dotted-deep-other"),
        pytest.param({"user.first_name": "Ada"}, False, id="dotted-missing"),
        pytest.param({"nothing.below": 1}, False, id="null-in-path"),
        pytest.param({"s.below": 1}, False, id="scalar-in-path"),
        pytest.param({"user": "Lovelace"}, False, id="object-field-never-matches"),
        pytest.param({"user": ["Lovelace"]}, False, id="object-field-never-matches-list"),
        pytest.param({"tags.1": "b"}, True, id="list-index"),
        pytest.param({"tags.9": "b"}, False, id="list-index-out-of-range"),
        pytest.param({"items.1.id": 8}, True, id="list-index-then-key"),
        pytest.param({"s": "/^(green|blue).*/"}, True, id="regex-match"),
        pytest.param({"s": "/apple/"}, True, id="regex-searches"),
        pytest.param({"s": "/^apple/"}, False, id="regex-anchored-no-match"),
        pytest.param({"n": "/25/"}, False, id="regex-never-matches-number"),
        pytest.param({"missing": "/.*/"}, False, id="regex-missing-field"),
        pytest.param({"n": [1, 25, 3]}, True, id="list-any-scalar"),
        pytest.param({"n": [1, 2]}, False, id="list-any-scalar-none"),
        pytest.param({"s": ["/^blue/", "/^green/"]}, True, id="list-of-regex"),
        pytest.param({"tags": ["a", "c"]}, True, id="list-field-contains-all"),
        pytest.param({"tags": ["a", "x"]}, False, id="list-field-missing-one"),
        pytest.param({"nums": [1.0, 3]}, True, id="list-field-numbers"),
        pytest.param({"tags": "a"}, False, id="scalar-never-equals-list-field"),
        pytest.param({"n": 25, "s": "green apple"}, True, id="and-all"),
        pytest.param({"n": 25, "s": "red"}, False, id="and-one-fails"),
        pytest.param({}, True, id="empty-matches-all"),
    ],
)
def test_filter_truth_table(filters, expected):
    normalised, predicate = compile_filters(filters)
    assert normalised == filters
    assert predicate(MESSAGE) is expected


@pytest.mark.parametrize(
    "filters",
    [
        pytest.param([1], id="not-an-object"),
        pytest.param("n", id="string"),
        pytest.param(5, id="number"),
        pytest.param({"n": {"a": 1}}, id="object-value"),
        pytest.param({"n": [[1]]}, id="nested-list"),
        pytest.param({"n": [{"a": 1}]}, id="object-in-list"),
        pytest.param({"n": []}, id="empty-list"),
        pytest.param({"": 1}, id="empty-key"),
        pytest.param({"a..b": 1}, id="empty-segment"),
        pytest.param({"s": "/(a)\\1/"}, id="backreference"),
        pytest.param({"s": "/a(?=b)/"}, id="look-ahead"),
        pytest.param({"s": "/(/"}, id="invalid-regex"),
        pytest.param({"s": "/" + "a" * 2000 + "/"}, id="pattern-too-long"),
        pytest.param({f"k{i}": 1 for i in range(100)}, id="too-many-keys"),
        pytest.param({".".join(["a"] * 50): 1}, id="path-too-deep"),
        pytest.param({"n": list(range(1000))}, id="list-too-long"),
    ],
)
def test_invalid_filters_raise_invalid_filter_error(filters):
    with pytest.raises(InvalidFilterError):
        compile_filters(filters)


def test_null_clears_filters():
    assert compile_filters(None) == (None, None)


def test_catastrophic_pattern_runs_in_linear_time():
    # A pattern that backtracking engines take exponential time on.
    _, predicate = compile_filters({"s": "/^(a+)+$/"})
    assert predicate({"s": "a" * 50_000 + "b"}) is False
