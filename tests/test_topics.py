"""The whitelist cache: one database query per process per expiry, whatever the number of callers."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from kasocki_app import topics
from kasocki_app.models import WhitelistedTopic

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queries(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the whitelist queries; each takes a while, so that concurrent callers overlap it."""
    made: list[int] = []
    load = topics._enabled_entries

    async def counted() -> Any:
        made.append(1)
        await asyncio.sleep(0.05)
        return await load()

    monkeypatch.setattr(topics, "_enabled_entries", counted)
    topics.invalidate()
    return made


async def test_concurrent_callers_share_one_query(queries, settings):
    settings.KASOCKI_WHITELIST_CACHE_SECONDS = 60
    await WhitelistedTopic.objects.acreate(topic="shared")
    results = await asyncio.gather(*(topics.allowed_topics() for _ in range(300)))
    assert len(queries) == 1
    assert all(result == {"shared"} for result in results)
    await asyncio.gather(*(topics.allowed_topics() for _ in range(300)))
    assert len(queries) == 1  # still fresh: no query at all


async def test_one_query_per_expiry(queries, settings):
    settings.KASOCKI_WHITELIST_CACHE_SECONDS = 0.2
    for _ in range(3):
        await asyncio.gather(*(topics.entries() for _ in range(200)))
        await asyncio.sleep(0.25)  # let the copy expire: time is what is under test here
    assert len(queries) == 3


async def test_a_change_during_a_refresh_is_not_lost(queries, settings):
    settings.KASOCKI_WHITELIST_CACHE_SECONDS = 60
    first = asyncio.ensure_future(topics.allowed_topics())
    await asyncio.sleep(0)  # the refresh has started, its query is running
    await WhitelistedTopic.objects.acreate(topic="added-meanwhile")  # invalidates through the signal
    assert await topics.allowed_topics() == {"added-meanwhile"}
    await first
    assert len(queries) == 2


async def test_a_cancelled_caller_does_not_cancel_the_refresh(queries, settings):
    settings.KASOCKI_WHITELIST_CACHE_SECONDS = 60
    await WhitelistedTopic.objects.acreate(topic="kept")
    leaving = asyncio.ensure_future(topics.allowed_topics())
    staying = asyncio.ensure_future(topics.allowed_topics())
    await asyncio.sleep(0)
    leaving.cancel()
    assert await staying == {"kept"}
    assert len(queries) == 1


async def test_available_topics_are_made_once_per_whitelist_copy_setting_and_metadata(queries, settings, monkeypatch):
    settings.KASOCKI_WHITELIST_CACHE_SECONDS = 60
    settings.KASOCKI_ALLOWED_TOPICS = ["from-settings"]
    metadata = {"from-settings": 1, "from-admin": 2, "not-allowed": 3}

    async def cached_metadata(fresh: bool = False) -> dict[str, int]:
        return metadata  # the same object while cached, as the cluster's cache hands it out

    monkeypatch.setattr(topics.cluster, "topics", cached_metadata)
    made: list[int] = []
    allowed = topics._allowed

    def counted(*args: Any) -> frozenset[str]:
        made.append(1)
        return allowed(*args)

    monkeypatch.setattr(topics, "_allowed", counted)
    first = await topics.available_topics()
    assert first == {"from-settings": 1}
    assert all(a is first for a in await asyncio.gather(*(topics.available_topics() for _ in range(100))))
    assert len(made) == 1
    # Each input changing gives the new answer at once.
    await WhitelistedTopic.objects.acreate(topic="from-admin")
    assert await topics.available_topics() == {"from-settings": 1, "from-admin": 2}
    settings.KASOCKI_ALLOWED_TOPICS = ["not-allowed"]
    assert await topics.available_topics() == {"not-allowed": 3, "from-admin": 2}
    metadata = {"from-admin": 4}
    assert await topics.available_topics() == {"from-admin": 4}
    assert len(made) == 4
