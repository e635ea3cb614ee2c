"""The whitelist admin shows live facts from Kafka."""

from __future__ import annotations

import pytest
from django.test import override_settings

from kasocki_app.kafka import cluster
from kasocki_app.models import WhitelistedTopic


@pytest.fixture
def whitelisted(kafka, make_topic, db):
    topic = make_topic(2)
    kafka.produce(topic, [{"i": i} for i in range(3)], partition=1)
    WhitelistedTopic.objects.create(topic=topic, description="demo stream")
    WhitelistedTopic.objects.create(topic="not-created-yet")
    return topic


def test_changelist_shows_partitions_and_offsets(admin_client, whitelisted):
    page = admin_client.get("/admin/kasocki_app/whitelistedtopic/").content.decode()
    assert whitelisted in page and "demo stream" in page
    assert "0: 0-0, 1: 0-3" in page
    assert "topic does not exist" in page


def test_changelist_search(admin_client, whitelisted):
    page = admin_client.get("/admin/kasocki_app/whitelistedtopic/", {"q": "demo"}).content.decode()
    assert whitelisted in page and "not-created-yet" not in page


def test_change_page_shows_offsets(admin_client, whitelisted):
    entry = WhitelistedTopic.objects.get(topic=whitelisted)
    page = admin_client.get(f"/admin/kasocki_app/whitelistedtopic/{entry.pk}/change/").content.decode()
    assert "0: 0-0, 1: 0-3" in page


def test_changelist_says_when_kafka_is_unreachable(admin_client, db):
    WhitelistedTopic.objects.create(topic="anything")
    with override_settings(KASOCKI_KAFKA_CONFIG={"bootstrap.servers": "127.0.0.1:1"}):
        page = admin_client.get("/admin/kasocki_app/whitelistedtopic/").content.decode()
    cluster.reset()
    assert "Kafka unreachable" in page


def test_invalid_topic_name_is_refused(admin_client, db):
    response = admin_client.post("/admin/kasocki_app/whitelistedtopic/add/", {"topic": "bad name!", "enabled": "on"})
    assert response.status_code == 200 and "Kafka topic names use only" in response.content.decode()
    assert not WhitelistedTopic.objects.exists()
