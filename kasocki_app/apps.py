"""Django app configuration: registers system checks and cache invalidation, nothing else."""

from __future__ import annotations

from django.apps import AppConfig


class KasockiConfig(AppConfig):
    name = "kasocki_app"
    verbose_name = "Kasocki"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Never connect to Kafka or start tasks here: daphne sends no lifespan
        # events and ready() also runs for every management command.
        from . import checks, signals  # noqa: F401
