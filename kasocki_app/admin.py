"""Admin for the topic whitelist, with live facts from Kafka when it is reachable."""

from __future__ import annotations

import contextvars
import logging
from typing import Any

from confluent_kafka import KafkaException
from django.contrib import admin
from django.http import HttpRequest, HttpResponse

from .kafka import cluster
from .models import WhitelistedTopic

logger = logging.getLogger(__name__)

# Facts for the topics on the page being rendered: fetched once per page, not once per row.
_facts: contextvars.ContextVar[dict[str, list[tuple[int, int]]] | None] = contextvars.ContextVar(
    "kasocki_topic_facts", default=None
)


@admin.register(WhitelistedTopic)
class WhitelistedTopicAdmin(admin.ModelAdmin):
    list_display = ("topic", "enabled", "access", "description", "partitions", "offsets", "updated")
    list_filter = ("enabled", "access")
    filter_horizontal = ("groups",)
    search_fields = ("topic", "description")
    readonly_fields = ("created", "updated", "partitions", "offsets")

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        names = list(self.get_queryset(request).values_list("topic", flat=True)[:500])
        token = _facts.set(self._describe(names))
        try:
            response = super().changelist_view(request, extra_context)
            if hasattr(response, "render"):
                response.render()  # render while the facts are set
            return response
        finally:
            _facts.reset(token)

    def change_view(self, request: HttpRequest, object_id: str, *args: Any, **kwargs: Any) -> HttpResponse:
        entry = self.get_object(request, object_id)
        token = _facts.set(self._describe([entry.topic]) if entry else {})
        try:
            response = super().change_view(request, object_id, *args, **kwargs)
            if hasattr(response, "render"):
                response.render()
            return response
        finally:
            _facts.reset(token)

    @staticmethod
    def _describe(names: list[str]) -> dict[str, list[tuple[int, int]]] | None:
        try:
            return cluster.describe(names)
        except KafkaException as exc:
            logger.warning("admin: Kafka unreachable: %s", exc)
            return None

    @admin.display(description="partitions")
    def partitions(self, entry: WhitelistedTopic) -> str:
        facts = _facts.get()
        if facts is None:
            return "Kafka unreachable"
        return str(len(facts[entry.topic])) if entry.topic in facts else "topic does not exist"

    @admin.display(description="offsets (earliest-latest per partition)")
    def offsets(self, entry: WhitelistedTopic) -> str:
        facts = _facts.get()
        if not facts or entry.topic not in facts:
            return "-"
        return ", ".join(f"{p}: {low}-{high}" for p, (low, high) in enumerate(facts[entry.topic]))
