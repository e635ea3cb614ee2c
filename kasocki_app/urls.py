"""Routes the app adds to a project: health checks (and the viewer page)."""

from __future__ import annotations

from django.urls import path

from . import views

app_name = "kasocki"

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("metrics", views.metrics_view, name="metrics"),
    path("", views.viewer, name="viewer"),
]
