"""Routes the app adds to a project: HTTP streams, health checks, metrics and the viewer page."""

from __future__ import annotations

from django.urls import path

from . import sse_view, views

app_name = "kasocki"

urlpatterns = [
    path("v2/stream/<str:topics>", sse_view.stream, name="stream"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics_view, name="metrics"),
    path("", views.viewer, name="viewer"),
]
