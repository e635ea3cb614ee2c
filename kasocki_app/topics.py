"""Which topics a client may read: the settings list plus enabled admin entries it has access to, that exist.

Each process caches the whitelist for KASOCKI_WHITELIST_CACHE_SECONDS, so an admin
change reaches every process within that time; the process that saved it forgets its copy at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from channels.db import database_sync_to_async

from .access import ANONYMOUS, Principal
from .cluster import cluster
from .conf import conf
from .models import WhitelistedTopic
from .tasks import process_task


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


class WhitelistCache:
    """This process's copy of the enabled whitelist entries, refreshed by one query per expiry.

    However many connections look at the whitelist when the copy expires, they share one
    refresh (single flight): hundreds of streams checking at once cost the database one query.
    """

    def __init__(self) -> None:
        self._entries: tuple[Entry, ...] = ()
        self._loaded_at = float("-inf")
        # Bumped by invalidate(): a copy loaded (or a refresh started) before a change is not fresh.
        self._generation = 0
        self._entries_generation = -1
        self._refresh: asyncio.Task[tuple[Entry, ...]] | None = None
        self._refresh_generation = -1

    def invalidate(self) -> None:
        """Forget the copy (may be called from any thread: admin saves run in Django's sync thread)."""
        self._generation += 1

    async def entries(self) -> tuple[Entry, ...]:
        if (
            self._entries_generation == self._generation
            and time.monotonic() - self._loaded_at <= conf.whitelist_cache_seconds
        ):
            return self._entries
        loop = asyncio.get_running_loop()
        refresh = self._refresh
        if (
            refresh is None
            or refresh.done()
            or refresh.get_loop() is not loop
            or self._refresh_generation != self._generation
        ):
            # The refresh serves every connection, not the one whose call started it.
            refresh = process_task(self._load(self._generation))
            self._refresh = refresh
            self._refresh_generation = self._generation
            refresh.add_done_callback(_seen)
        # shield: one caller giving up (a disconnect) must not cancel the refresh the others wait for.
        return await asyncio.shield(refresh)

    async def _load(self, generation: int) -> tuple[Entry, ...]:
        started = time.monotonic()
        entries = await _enabled_entries()
        self._entries, self._loaded_at, self._entries_generation = entries, started, generation
        return entries


def _seen(task: asyncio.Task[tuple[Entry, ...]]) -> None:
    # Every waiter may have been cancelled: retrieve a failure so asyncio does not log it as lost.
    if not task.cancelled():
        task.exception()


@database_sync_to_async
def _enabled_entries() -> tuple[Entry, ...]:
    entries = WhitelistedTopic.objects.filter(enabled=True).prefetch_related("groups")
    return tuple(Entry(e.topic, e.access, frozenset(g.id for g in e.groups.all()), e.permission) for e in entries)


whitelist = WhitelistCache()


def invalidate() -> None:
    """Forget this process's cached whitelist (on admin saves and setting changes)."""
    whitelist.invalidate()


async def entries() -> tuple[Entry, ...]:
    return await whitelist.entries()


async def allowed_topics(principal: Principal = ANONYMOUS) -> frozenset[str]:
    """Topic names ``principal`` may read, whether or not they exist. Internal topics never."""
    return _allowed(principal, await entries(), tuple(conf.allowed_topics))


def _allowed(principal: Principal, found: tuple[Entry, ...], setting: tuple[str, ...]) -> frozenset[str]:
    names = set(setting)
    names.update(e.topic for e in found if e.allows(principal))
    return frozenset(name for name in names if not name.startswith("__"))


@dataclass(frozen=True)
class _Answer:
    """An answer of available_topics and what it was made of (held, so compared by identity)."""

    entries: tuple[Entry, ...]
    existing: dict[str, int]
    setting: tuple[str, ...]
    available: dict[str, int]


# The last answer per principal. When the cluster watch is starved (an overloaded loop), every
# connection looks by the clock: 10,000 streams made the same answer 10,000 times a second
# (12 % of the server's time). Made again as soon as the whitelist copy, the setting or the
# cluster's metadata is another one.
_answers: dict[Principal, _Answer] = {}
MAX_ANSWERS = 1024  # principals remembered; then all are forgotten at once


async def available_topics(principal: Principal = ANONYMOUS, fresh: bool = False) -> dict[str, int]:
    """Topics ``principal`` may read that exist in the cluster, with their partition counts.

    The dict may be shared with other callers: read it, never change it.
    """
    found = await entries()
    existing = await cluster.topics(fresh=fresh)
    setting = tuple(conf.allowed_topics)
    known = _answers.get(principal)
    if known is not None and known.entries is found and known.existing is existing and known.setting == setting:
        return known.available
    allowed = _allowed(principal, found, setting)
    available = {name: count for name, count in existing.items() if name in allowed}
    if len(_answers) >= MAX_ANSWERS:
        _answers.clear()
    _answers[principal] = _Answer(found, existing, setting, available)
    return available
