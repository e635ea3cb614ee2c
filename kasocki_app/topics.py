"""Which topics a client may read: the settings list plus enabled admin entries it has access to, that exist.

Each process caches the whitelist for KASOCKI_WHITELIST_CACHE_SECONDS, so an admin
change reaches every process within that time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from channels.db import database_sync_to_async

from .access import ANONYMOUS, Principal
from .conf import conf
from .kafka import cluster
from .models import WhitelistedTopic


@dataclass(frozen=True)
class Entry:
    """One enabled whitelist entry, as access checks need it."""

    topic: str
    access: str
    group_ids: frozenset[int]
    permission: str

    def allows(self, principal: Principal) -> bool:
        if self.access == WhitelistedTopic.Access.PUBLIC:
            return True
        if not principal.authenticated:
            return False
        if self.access == WhitelistedTopic.Access.AUTHENTICATED or principal.superuser:
            return True
        return bool(self.group_ids & principal.group_ids) or (
            bool(self.permission) and self.permission in principal.permissions
        )


_cache: tuple[float, tuple[Entry, ...]] | None = None


def invalidate() -> None:
    """Forget this process's cached whitelist (on admin saves and setting changes)."""
    global _cache
    _cache = None


@database_sync_to_async
def _enabled_entries() -> tuple[Entry, ...]:
    entries = WhitelistedTopic.objects.filter(enabled=True).prefetch_related("groups")
    return tuple(Entry(e.topic, e.access, frozenset(g.id for g in e.groups.all()), e.permission) for e in entries)


async def entries() -> tuple[Entry, ...]:
    global _cache
    now = time.monotonic()
    if _cache is None or now - _cache[0] > conf.whitelist_cache_seconds:
        _cache = (now, await _enabled_entries())
    return _cache[1]


async def allowed_topics(principal: Principal = ANONYMOUS) -> frozenset[str]:
    """Topic names ``principal`` may read, whether or not they exist. Internal topics never."""
    names = set(conf.allowed_topics)
    names.update(e.topic for e in await entries() if e.allows(principal))
    return frozenset(name for name in names if not name.startswith("__"))


async def available_topics(principal: Principal = ANONYMOUS, fresh: bool = False) -> dict[str, int]:
    """Topics ``principal`` may read that exist in the cluster, with their partition counts."""
    allowed = await allowed_topics(principal)
    existing = await cluster.topics(fresh=fresh)
    return {name: count for name, count in existing.items() if name in allowed}
