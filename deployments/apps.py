from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "deployments"
    verbose_name = "Deployments"

    def ready(self) -> None:
        """Answer the registry's announcements (it cannot import this app)."""
        from deployments import series
        from deployments.services.alias_moves import on_alias_moved
        from deployments.services.measurements import measure_after_conversion
        from deployments.services.version_uses import versions_deleting, versions_in_use
        from deployments.webhooks.events import on_event_recorded
        from registry import hooks

        hooks.alias_moved.register(on_alias_moved)
        hooks.event_recorded.register(on_event_recorded)
        hooks.version_serving.register(series.version_numbers)
        hooks.version_ready.register(measure_after_conversion)
        hooks.versions_in_use.register(versions_in_use)
        hooks.versions_deleting.register(versions_deleting)

        from celery.signals import worker_ready

        from deployments.reconcile.exits import start_exit_watcher

        worker_ready.connect(start_exit_watcher, weak=False)
