"""Serving-advice measurements: a run of the real worker against a load generator, and its rows.

A ``MeasurementRun`` is a row job (``config.jobs``): queued, running, done or failed, claimed by
its attempt. Each ``Measurement`` is one cell it measured: one batching configuration, protocol and
concurrency. A version keeps one row per cell (a new run replaces the cells it measures again and
keeps the others), so the advice reads every measured configuration of the version.
"""

from __future__ import annotations

from django.conf import settings
from django.core.validators import MaxValueValidator
from django.db import models
from django.db.models import Q

from config.jobs import JobRow
from registry.models import ModelVersion


class MeasurementStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    DONE = "done", "Done"
    FAILED = "failed", "Failed"


ACTIVE_MEASUREMENT_STATES = (MeasurementStatus.QUEUED, MeasurementStatus.RUNNING)


class MeasurementRun(JobRow):
    """One measurement of a version on the platform's machine (at most one queued or running each).

    ``worker_handle`` names the process-backend worker the run has started (empty between
    configurations): the orphan clean-up leaves it alone while the run is active, and stops it once
    the run ended without doing so itself (its Celery worker was killed).
    """

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="measurement_runs")
    latency_budget_ms = models.FloatField(help_text="the budget the configurations were proposed for")
    status = models.CharField(
        max_length=12, choices=MeasurementStatus.choices, default=MeasurementStatus.QUEUED, db_index=True
    )
    progress = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    step = models.CharField(max_length=200, blank=True, help_text="what the run does now")
    error = models.TextField(blank=True)
    machine = models.CharField(max_length=200, blank=True, help_text="where it ran: host, CPU, cores")
    worker_handle = models.CharField(max_length=100, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [models.Index(fields=("version", "-created_at"))]
        constraints = [
            models.UniqueConstraint(
                fields=("version",),
                condition=Q(status__in=ACTIVE_MEASUREMENT_STATES),
                name="one_active_measurement_per_version",
            )
        ]

    def __str__(self) -> str:
        return f"measurement {self.pk} of {self.version}"

    @property
    def in_progress(self) -> bool:
        return self.status in ACTIVE_MEASUREMENT_STATES


class Measurement(models.Model):
    """One measured cell: a worker with ``batching`` under ``concurrency`` closed-loop clients.

    ``requests`` is what the load generator got answered (status 200) inside the window of
    ``seconds``; ``worker_requests`` is how much the worker's own request counter
    (``kiln_worker_requests_total``) grew over the same cell, warm-up included, so it is never less.
    """

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="measurements")
    run = models.ForeignKey(MeasurementRun, on_delete=models.CASCADE, related_name="measurements")
    config_key = models.CharField(max_length=64, help_text="the batching options, canonical (sha256)")
    batching = models.JSONField(help_text="the worker's batching options (contracts.batching)")
    max_batch_size = models.PositiveIntegerField()
    instances = models.PositiveSmallIntegerField()
    protocol = models.CharField(max_length=16)
    concurrency = models.PositiveIntegerField()
    seconds = models.FloatField()
    requests = models.PositiveBigIntegerField()
    errors = models.PositiveBigIntegerField()
    worker_requests = models.PositiveBigIntegerField()
    throughput_rps = models.FloatField()
    p50_ms = models.FloatField(null=True)
    p99_ms = models.FloatField(null=True)
    measured_at = models.DateTimeField()

    class Meta:
        ordering = ("max_batch_size", "instances", "protocol", "concurrency")
        constraints = [
            models.UniqueConstraint(
                fields=("version", "config_key", "protocol", "concurrency"), name="one_row_per_measured_cell"
            )
        ]

    def __str__(self) -> str:
        return f"{self.version} batch {self.max_batch_size} {self.protocol} c={self.concurrency}"
