"""Which topics a client may read: the settings list plus enabled admin entries, that exist in Kafka.

Each process caches the whitelist for KASOCKI_WHITELIST_CACHE_SECONDS, so an admin
change reaches new subscriptions in every process within that time.
"""

from __future__ import annotations

import time

from channels.db import database_sync_to_async

from .conf import conf
from .kafka import cluster
from .models import WhitelistedTopic

_cache: tuple[float, frozenset[str]] | None = None


def invalidate() -> None:
    """Forget this process's cached whitelist (on admin saves and setting changes)."""
    global _cache
    _cache = None


@database_sync_to_async
def _enabled_entries() -> list[str]:
    return list(WhitelistedTopic.objects.filter(enabled=True).values_list("topic", flat=True))


async def allowed_topics() -> frozenset[str]:
    """Topic names allowed by settings or the admin, whether or not they exist."""
    global _cache
    now = time.monotonic()
    if _cache is None or now - _cache[0] > conf.whitelist_cache_seconds:
        names = frozenset(conf.allowed_topics) | frozenset(await _enabled_entries())
        _cache = (now, frozenset(name for name in names if not name.startswith("__")))
    return _cache[1]


async def available_topics(fresh: bool = False) -> dict[str, int]:
    """Allowed topics that exist in the cluster, with their partition counts."""
    allowed = await allowed_topics()
    existing = await cluster.topics(fresh=fresh)
    return {name: count for name, count in existing.items() if name in allowed}
