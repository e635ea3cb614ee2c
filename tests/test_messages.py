"""Decoding Kafka values and augmenting them with _kafka metadata."""

from __future__ import annotations

import pytest

from kasocki_app.messages import UndecodableMessage, decode_value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(None, "empty", id="tombstone"),
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"\xff\xfe{}", "not_utf8", id="not-utf8"),
        pytest.param(b"{nope", "not_json", id="not-json"),
        pytest.param(b"[1, 2]", "not_object", id="list"),
        pytest.param(b'"text"', "not_object", id="string"),
        pytest.param(b"42", "not_object", id="number"),
    ],
)
def test_decode_value_rejects(value, reason):
    with pytest.raises(UndecodableMessage) as caught:
        decode_value(value)
    assert caught.value.reason == reason


def test_decode_value_accepts_unicode_object():
    assert decode_value('{"name": "Zoë ✓"}'.encode()) == {"name": "Zoë ✓"}
