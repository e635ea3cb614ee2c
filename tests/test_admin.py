"""The whitelist admin shows live facts from Kafka; the live connections show where each client is."""

from __future__ import annotations

import html
from datetime import timedelta

import pytest
from django.contrib.admin import helpers
from django.contrib.auth.models import Permission, User
from django.test import override_settings
from django.utils import timezone

from kasocki_app.cluster import cluster
from kasocki_app.exceptions import KafkaError
from kasocki_app.models import DisconnectRequest, LiveConnection, LiveProcess, WhitelistedTopic


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


def test_changelist_says_when_kafka_does_not_answer_in_time(admin_client, db, monkeypatch):
    WhitelistedTopic.objects.create(topic="anything")

    def no_answer(names: list[str]) -> None:
        raise KafkaError("Kafka did not answer within 10s", code="_TIMED_OUT")

    monkeypatch.setattr(cluster, "describe", no_answer)
    page = admin_client.get("/admin/kasocki_app/whitelistedtopic/").content.decode()
    assert "Kafka unreachable" in page


def test_invalid_topic_name_is_refused(admin_client, db):
    response = admin_client.post("/admin/kasocki_app/whitelistedtopic/add/", {"topic": "bad name!", "enabled": "on"})
    assert response.status_code == 200 and "Kafka topic names use only" in response.content.decode()
    assert not WhitelistedTopic.objects.exists()


LIVE = "/admin/kasocki_app/liveconnection/"


@pytest.fixture
def live_rows(db):
    now = timezone.now()
    for process in ("web-1:42", "web-2:43"):
        LiveProcess.objects.create(
            process=process, started=now, last_seen=now, interval=2.0, expires=now + timedelta(minutes=1)
        )
    partitions = [
        {"topic": "edits", "partition": 0, "position": 1234, "lag": 5},
        {"topic": "edits", "partition": 1, "position": 7, "lag": None},  # latest offset not known yet
    ]
    subscriptions = [{"topic": "edits", "partition": 0, "offset": 1}, {"topic": "edits", "partition": 1, "offset": 0}]
    common = {"connected_since": now, "updated": now}
    LiveConnection.objects.create(
        process="web-1:42", sid="a", address="10.1.1.1", subscriptions=subscriptions, partitions=partitions, **common
    )
    LiveConnection.objects.create(process="web-2:43", sid="b", address="10.2.2.2", **common)
    DisconnectRequest.objects.create(process="web-2:43", sid="b")


def test_live_connections_show_position_and_lag_per_partition(admin_client, live_rows):
    page = html.unescape(admin_client.get(LIVE).content.decode())
    assert "edits/0 at 1234, lag 5; edits/1 at 7, lag ?" in page
    assert "from 1" not in page  # the starting offsets are on the detail page only
    row = LiveConnection.objects.get(sid="a")
    detail = html.unescape(admin_client.get(f"{LIVE}{row.pk}/change/").content.decode())
    assert "edits/0 from 1, edits/1 from 0" in detail
    assert "edits/0 at 1234, lag 5" in detail


def test_live_connections_filter_by_disconnect_requested(admin_client, live_rows):
    page = admin_client.get(LIVE, {"disconnect_requested": "yes"}).content.decode()
    assert "10.2.2.2" in page and "10.1.1.1" not in page
    page = admin_client.get(LIVE, {"disconnect_requested": "no"}).content.decode()
    assert "10.1.1.1" in page and "10.2.2.2" not in page


def test_disconnect_action_asks_each_selected_clients_process(admin_client, live_rows):
    pks = list(LiveConnection.objects.values_list("pk", flat=True))
    data = {"action": "disconnect_selected", helpers.ACTION_CHECKBOX_NAME: pks, "index": 0}
    page = admin_client.post(LIVE, data, follow=True).content.decode()
    assert "Asked to disconnect 2 client(s)" in page
    # Asking again for a client already asked for is no error and adds no second request.
    assert sorted(DisconnectRequest.objects.values_list("process", "sid")) == [("web-1:42", "a"), ("web-2:43", "b")]


def test_disconnect_action_needs_the_change_permission(client, live_rows):
    viewer = User.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_liveconnection"))
    client.force_login(viewer)
    page = client.get(LIVE).content.decode()
    assert "10.1.1.1" in page and "Disconnect selected clients" not in page
