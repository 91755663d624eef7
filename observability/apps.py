"""Registers the platform collector once per process and connects the Celery task signals."""

from __future__ import annotations

from django.apps import AppConfig


class ObservabilityConfig(AppConfig):
    name = "observability"
    label = "observability"
    verbose_name = "Observability"

    def ready(self) -> None:
        from config.metrics.events import connect_celery_signals
        from observability import views

        views.register_platform_collector()
        connect_celery_signals()
