"""Keep process-local caches in step with the admin and with setting changes."""

from __future__ import annotations

from typing import Any

from django.core.signals import setting_changed
from django.db.models.signals import m2m_changed, post_delete, post_save
from django.dispatch import receiver

from . import server, topics
from .cluster import cluster
from .conf import conf
from .models import WhitelistedTopic


@receiver([post_save, post_delete], sender=WhitelistedTopic)
@receiver(m2m_changed, sender=WhitelistedTopic.groups.through)
def whitelist_changed(**kwargs: Any) -> None:
    topics.invalidate()


@receiver(setting_changed)
def kasocki_setting_changed(setting: str, **kwargs: Any) -> None:
    if setting.startswith("KASOCKI_") or setting == "KAFKA_BOOTSTRAP_SERVERS":
        conf.reload()
        topics.invalidate()
        cluster.reset()
        server.apply_settings()
