"""What /readyz calls ready, through the live server: Kafka answers and the settings' topics exist."""

from __future__ import annotations

import time
import uuid

import pytest

from kasocki_app.cluster import cluster
from kasocki_app.conf import conf
from kasocki_app.models import WhitelistedTopic
from kasocki_app.service import process_service
from tests.e2e import http_json

pytestmark = pytest.mark.django_db(transaction=True)


def unique_name() -> str:
    return f"test-missing-{uuid.uuid4().hex[:12]}"


def test_readyz_is_unavailable_while_an_allowed_topic_is_missing(kafka, make_topic, allow, asgi_server):
    present, missing = make_topic(), unique_name()
    allow(present, missing)
    status, body = http_json(f"{asgi_server.url}/readyz")
    assert status == 503, body
    assert body["status"] == "unavailable" and body["missing"] == [missing]
    assert missing in body["reason"] and present not in body["reason"]


def test_readyz_is_ready_once_the_missing_topic_exists(kafka, allow, asgi_server):
    name = unique_name()
    allow(name)
    assert http_json(f"{asgi_server.url}/readyz")[0] == 503
    kafka.create_topic(name=name)
    try:
        # /readyz reads the process's metadata cache: the new topic shows within its lifetime.
        deadline = time.monotonic() + conf.metadata_cache_seconds + 5
        while (answer := http_json(f"{asgi_server.url}/readyz"))[0] != 200:
            assert time.monotonic() < deadline, answer
            time.sleep(0.1)
        assert answer[1]["status"] == "ok"
    finally:
        kafka.delete_topics([name])


def test_readyz_ignores_missing_topics_of_the_admin_whitelist(kafka, asgi_server):
    WhitelistedTopic.objects.create(topic=unique_name())
    status, body = http_json(f"{asgi_server.url}/readyz")
    assert status == 200 and body["status"] == "ok", body


def test_readyz_ignores_internal_topics_of_the_settings(kafka, allow, asgi_server):
    allow("__never_served")  # internal topics are never served, so never awaited
    assert http_json(f"{asgi_server.url}/readyz")[0] == 200


def test_readyz_costs_at_most_one_metadata_request_per_cache_period(kafka, asgi_server, monkeypatch):
    fetches = 0
    fetch = cluster._fetch_topics

    def counted() -> dict[str, int]:
        nonlocal fetches
        fetches += 1
        return fetch()

    monkeypatch.setattr(cluster, "_fetch_topics", counted)
    began = time.monotonic()
    for _ in range(20):
        assert http_json(f"{asgi_server.url}/readyz")[0] == 200
    periods = (time.monotonic() - began) / conf.metadata_cache_seconds
    assert fetches <= 1 + int(periods) + 1, f"{fetches} metadata requests in {periods:.1f} cache periods"


def test_readyz_stays_ready_when_a_topic_it_waited_for_is_deleted_later(kafka, allow, asgi_server):
    # One topic deleted must not take every process out of the balancer: its clients get
    # TopicNotAvailableError, the others go on.
    name = kafka.create_topic(prefix="test-deleted")
    allow(name)
    assert http_json(f"{asgi_server.url}/readyz")[0] == 200
    kafka.delete_topics([name])
    deadline = time.monotonic() + 30
    while name in cluster._fetch_topics():  # until the cluster's metadata no longer has it
        assert time.monotonic() < deadline, "the topic was never deleted"
        time.sleep(0.2)
    time.sleep(conf.metadata_cache_seconds)  # the process's cached metadata expires too
    status, body = http_json(f"{asgi_server.url}/readyz")
    assert status == 200 and body["status"] == "ok", body


def test_readyz_is_unavailable_while_the_server_stops(kafka, asgi_server):
    service = process_service()
    service.stopping = True
    try:
        status, body = http_json(f"{asgi_server.url}/readyz")
    finally:
        service.stopping = False
    assert status == 503 and body == {"status": "unavailable", "reason": "the server is stopping"}
