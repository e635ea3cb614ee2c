"""Admin for the topic whitelist."""

from __future__ import annotations

from django.contrib import admin

from .models import WhitelistedTopic


@admin.register(WhitelistedTopic)
class WhitelistedTopicAdmin(admin.ModelAdmin):
    list_display = ("topic", "enabled", "description", "updated")
    list_filter = ("enabled",)
    search_fields = ("topic", "description")
    readonly_fields = ("created", "updated")
