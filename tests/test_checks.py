"""System checks for KASOCKI_* settings."""

from __future__ import annotations

import pytest
from django.test import override_settings

from kasocki_app.checks import check_settings


def ids(errors):
    return sorted({e.id for e in errors})


def test_defaults_pass():
    assert check_settings() == []


@pytest.mark.parametrize(
    ("setting", "value", "error"),
    [
        pytest.param("KASOCKI_KAFKA_CONFIG", {"group.id": "x"}, "kasocki_app.E001", id="no-bootstrap"),
        pytest.param("KASOCKI_KAFKA_CONFIG", "broker:9092", "kasocki_app.E001", id="not-a-dict"),
        pytest.param("KASOCKI_ALLOWED_TOPICS", "a,b", "kasocki_app.E002", id="topics-string"),
        pytest.param("KASOCKI_ALLOWED_TOPICS", ["a", ""], "kasocki_app.E002", id="topics-empty-name"),
        pytest.param("KASOCKI_RESET_POLICY", "smallest", "kasocki_app.E003", id="reset-policy"),
        pytest.param("KASOCKI_MESSAGE_BUILDER", "no.such.builder", "kasocki_app.E004", id="builder"),
        pytest.param("KASOCKI_MAX_BATCH", 0, "kasocki_app.E005", id="limit-zero"),
        pytest.param("KASOCKI_KAFKA_TIMEOUT", "10", "kasocki_app.E005", id="limit-string"),
        pytest.param("KASOCKI_IDLE_TIMEOUT", -1, "kasocki_app.E005", id="idle-timeout-negative"),
        pytest.param("KASOCKI_MAX_CONSUMERS", 2000, "kasocki_app.E009", id="consumers-beyond-librdkafka"),
        pytest.param("KASOCKI_ALLOWED_ORIGINS", "https://a.example", "kasocki_app.E006", id="origins-string"),
    ],
)
def test_bad_settings_are_reported(setting, value, error):
    with override_settings(**{setting: value}):
        errors = check_settings()
    assert ids(errors) == [error]
    assert all(e.hint for e in errors)


def test_zero_idle_timeout_means_never():
    with override_settings(KASOCKI_IDLE_TIMEOUT=0):
        assert check_settings() == []
