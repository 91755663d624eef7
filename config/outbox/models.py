"""The outbox's one table."""

from __future__ import annotations

from django.db import models


class OutboxMessage(models.Model):
    """A Celery task message not yet handed to the broker; the row is deleted once it is.

    Written in the transaction of the change that asks for the task, so the two commit
    together or not at all.
    """

    task = models.CharField(max_length=200)
    args = models.JSONField(default=list)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    """Sends that failed (the broker was unreachable)."""
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ("id",)

    def __str__(self) -> str:
        return f"{self.task}{tuple(self.args)}"
