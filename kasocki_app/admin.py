"""Admin for the topic whitelist, with live facts from Kafka, and the read-only list of live connections."""

from __future__ import annotations

import contextvars
import json
import logging
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaException
from django.contrib import admin, messages
from django.contrib.auth import get_permission_codename
from django.db.models import Exists, OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse

from . import registry
from .cluster import cluster
from .exceptions import KafkaError
from .models import DisconnectRequest, LiveConnection, LiveProcess, WhitelistedTopic

logger = logging.getLogger(__name__)

# Facts for the topics on the page being rendered: fetched once per page, not once per row.
_facts: contextvars.ContextVar[dict[str, list[tuple[int, int]]] | None] = contextvars.ContextVar(
    "kasocki_topic_facts", default=None
)


# ModelAdmin is generic for type checkers only (django-stubs); at run time it takes no parameters.
if TYPE_CHECKING:
    _ModelAdmin = admin.ModelAdmin[Any]
else:
    _ModelAdmin = admin.ModelAdmin


@admin.register(WhitelistedTopic)
class WhitelistedTopicAdmin(_ModelAdmin):
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
        except (KafkaException, KafkaError) as exc:  # librdkafka's failure, or no answer in time
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


class DisconnectRequestedFilter(admin.SimpleListFilter):
    title = "disconnect requested"
    parameter_name = "disconnect_requested"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin[Any]) -> list[tuple[str, str]]:
        return [("yes", "Yes"), ("no", "No")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() in ("yes", "no"):
            return queryset.filter(disconnect_pending=self.value() == "yes")
        return queryset


@admin.register(LiveConnection)
class LiveConnectionAdmin(_ModelAdmin):
    """The clients connected to every server process, as each last published them; read-only."""

    list_display = (
        "address",
        "transport",
        "username",
        "position_and_lag",
        "filter_object",
        "delivered",
        "connected_since",
        "process_seen",
        "process",
        "sid",
        "disconnect_requested",
    )
    list_filter = ("process", "transport", DisconnectRequestedFilter)
    search_fields = ("address", "username")
    actions = ("disconnect_selected",)
    fields = (
        "process",
        "sid",
        "transport",
        "address",
        "username",
        "subscribed_from",
        "position_and_lag",
        "filter_object",
        "delivered",
        "connected_since",
        "updated",
        "process_seen",
        "disconnect_requested",
    )
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[LiveConnection]:
        requests = DisconnectRequest.objects.filter(process=OuterRef("process"), sid=OuterRef("sid"))
        heartbeat = LiveProcess.objects.filter(process=OuterRef("process")).values("last_seen")[:1]
        rows: QuerySet[LiveConnection] = (
            super()
            .get_queryset(request)
            .annotate(disconnect_pending=Exists(requests), process_last_seen=Subquery(heartbeat))
        )
        return rows

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: LiveConnection | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: LiveConnection | None = None) -> bool:
        return False

    def has_disconnect_permission(self, request: HttpRequest) -> bool:
        """Disconnecting needs the model's change permission; viewing alone does not allow it."""
        return request.user.has_perm(f"{self.opts.app_label}.{get_permission_codename('change', self.opts)}")

    @admin.action(description="Disconnect selected clients", permissions=["disconnect"])
    def disconnect_selected(self, request: HttpRequest, queryset: QuerySet[LiveConnection]) -> None:
        # The process holding each connection polls for requests and disconnects it (registry.py).
        targets = sorted(set(queryset.values_list("process", "sid")))
        DisconnectRequest.objects.bulk_create(
            [DisconnectRequest(process=process, sid=sid) for process, sid in targets], ignore_conflicts=True
        )
        self.message_user(
            request,
            f"Asked to disconnect {len(targets)} client(s); "
            f"their servers do so within about {registry.poll_seconds():g}s.",
            messages.SUCCESS,
        )

    @admin.display(description="subscribed from")
    def subscribed_from(self, row: LiveConnection) -> str:
        if not row.subscriptions:
            return "-"
        return ", ".join(f"{a['topic']}/{a['partition']} from {a['offset']}" for a in row.subscriptions)

    @admin.display(description="position and lag (next offset; latest minus next)")
    def position_and_lag(self, row: LiveConnection) -> str:
        if not row.partitions:
            return "-"
        return "; ".join(
            f"{p['topic']}/{p['partition']} at {p['position']}, lag {'?' if p['lag'] is None else p['lag']}"
            + (f" ({p['reading']})" if p.get("reading") else "")
            for p in row.partitions
        )

    @admin.display(description="filters")
    def filter_object(self, row: LiveConnection) -> str:
        return "-" if row.filters is None else json.dumps(row.filters, ensure_ascii=False, sort_keys=True)

    @admin.display(description="process last seen")
    def process_seen(self, row: LiveConnection) -> Any:
        return getattr(row, "process_last_seen", None) or "-"

    @admin.display(description="disconnect requested", boolean=True)
    def disconnect_requested(self, row: LiveConnection) -> bool:
        return bool(getattr(row, "disconnect_pending", False))
