"""Deployment domain: endpoints, their variants (A/B arms), running workers and their reports.

Traffic changes and rollouts live in ``release_models`` and are re-exported here.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from config.jobs import JobRow
from deployments.autoscaling.models import ScalingDecision, ScalingPolicy  # noqa: F401 - the app's models
from deployments.backends import BACKEND_NAMES
from deployments.measure_models import Measurement as Measurement
from deployments.measure_models import MeasurementRun as MeasurementRun
from deployments.release_models import ACTIVE_ROLLOUT_STATES as ACTIVE_ROLLOUT_STATES
from deployments.release_models import Rollout as Rollout
from deployments.release_models import TrafficChange as TrafficChange
from deployments.webhooks.models import Webhook as Webhook
from deployments.webhooks.models import WebhookDelivery as WebhookDelivery
from inference_worker.contracts import batching as table
from inference_worker.contracts.options import OptionField
from registry.models import SLUG_MAX_LENGTH, ModelVersion, RegisteredModel, slug_validator


def _column(option: OptionField[Any]) -> dict[str, Any]:
    """A batching column's default and lower bound, from the option table (which checks the rest)."""
    return {"default": option.default, "validators": [MinValueValidator(option.low)]}


class DeploymentStatus(models.TextChoices):
    DEPLOYING = "deploying", "Deploying"
    SERVING = "serving", "Serving"
    DEGRADED = "degraded", "Degraded"
    FAILED = "failed", "Failed"
    STOPPING = "stopping", "Stopping"
    STOPPED = "stopped", "Stopped"
    DELETING = "deleting", "Deleting"


class AliasMovePolicy(models.TextChoices):
    """What a deployment does when the alias of a variant carrying traffic moves."""

    ROLLOUT = "rollout", "Start a guarded rollout"
    IMMEDIATE = "immediate", "Follow at once (recorded as forced)"
    MANUAL = "manual", "Wait for a person"


class Deployment(models.Model):
    """A named endpoint serving one model through the gateway.

    ``desired_running`` is what the user asked for; ``status`` is what the
    reconcile loop last observed. Deleting is desired state too: ``delete_requested_at``
    takes it out of the routing table at once, and the reconcile loop drains and stops its
    workers, then deletes the row (only that loop touches workers).
    """

    name = models.CharField(max_length=SLUG_MAX_LENGTH, unique=True, validators=[slug_validator])
    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="deployments")
    description = models.TextField(blank=True)
    desired_running = models.BooleanField(default=True)
    status = models.CharField(
        max_length=16, choices=DeploymentStatus.choices, default=DeploymentStatus.DEPLOYING
    )
    status_reason = models.TextField(blank=True)
    on_alias_move = models.CharField(
        max_length=16,
        choices=AliasMovePolicy.choices,
        default=AliasMovePolicy.ROLLOUT,
        help_text="when the alias of a variant that carries traffic moves",
    )
    delete_requested_at = models.DateTimeField(null=True, blank=True)
    delete_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)

    def __str__(self) -> str:
        return self.name

    def ensure_changeable(self) -> None:
        """Refuse (409) a change while the deployment is being deleted: the reconcile loop owns it."""
        if self.delete_requested_at is not None:
            from deployments.errors import DeploymentBusyError

            raise DeploymentBusyError(f"deployment {self.name!r} is being deleted")


class VariantRole(models.TextChoices):
    STABLE = "stable", "Stable"
    CANDIDATE = "candidate", "Candidate"


class Variant(models.Model):
    """One arm of a deployment: a version (pinned, or followed through an alias) and how to run it.

    Each deployment has one ``stable`` variant; the others are candidates. A rollout that succeeds
    gives the stable variant the candidate's version (promotion). ``follow_note`` says why a
    variant does not serve its alias' version yet (empty when it does).
    """

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="variants")
    name = models.CharField(max_length=SLUG_MAX_LENGTH, validators=[slug_validator])
    role = models.CharField(max_length=16, choices=VariantRole.choices, default=VariantRole.CANDIDATE)
    follow_note = models.TextField(blank=True, help_text="why it does not serve its alias' version")
    pinned_version = models.ForeignKey(
        ModelVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    alias = models.CharField(
        max_length=64, blank=True, help_text="follow this alias instead of a pinned version"
    )
    version = models.ForeignKey(
        ModelVersion,
        on_delete=models.PROTECT,
        related_name="variants",
        help_text="the version this variant serves now (the pinned one, or the alias' target)",
    )
    weight = models.PositiveSmallIntegerField(default=100, validators=[MaxValueValidator(100)])
    shadow_percent = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    replicas = models.PositiveSmallIntegerField(default=1, validators=[MaxValueValidator(64)])
    gpu_ids = models.JSONField(default=list, blank=True, help_text="empty for CPU")
    backend = models.CharField(max_length=16, default="process", choices={n: n for n in BACKEND_NAMES})
    max_batch_size = models.PositiveIntegerField(**_column(table.MAX_BATCH_SIZE))
    max_queue_delay_ms = models.FloatField(**_column(table.MAX_QUEUE_DELAY_MS))
    preferred_batch_sizes = models.JSONField(default=list, blank=True)
    max_queue_size = models.PositiveIntegerField(**_column(table.MAX_QUEUE_SIZE))
    request_timeout_ms = models.FloatField(**_column(table.REQUEST_TIMEOUT_MS))
    instances = models.PositiveSmallIntegerField(**_column(table.INSTANCES))
    intra_op_threads = models.PositiveSmallIntegerField(**_column(table.INTRA_OP_THREADS))
    batching_note = models.TextField(blank=True, help_text="why these batching options were proposed")
    image = models.CharField(max_length=255, blank=True, help_text="the worker image (docker, swarm)")
    placement_constraints = models.JSONField(
        default=list, blank=True, help_text="swarm: e.g. node.role==worker"
    )
    placement_spread = models.JSONField(default=list, blank=True, help_text="swarm: e.g. node.labels.zone")
    remove_requested_at = models.DateTimeField(
        null=True, blank=True, help_text="set when removed: its workers drain, then the row goes"
    )
    remove_requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("deployment__name", "name")
        constraints = [
            models.UniqueConstraint(fields=("deployment", "name"), name="unique_variant_per_deployment"),
            models.UniqueConstraint(
                fields=("deployment",),
                condition=models.Q(role="stable"),
                name="one_stable_variant_per_deployment",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.deployment.name}/{self.name}"

    @property
    def is_stable(self) -> bool:
        return self.role == VariantRole.STABLE

    @property
    def device(self) -> str:
        ids = self.gpu_ids or []
        return f"cuda:{ids[0]}" if ids else "cpu"

    @property
    def batching(self) -> table.BatchingConfig:
        """The batching options of the columns, as the worker gets them."""
        return table.parse_batching({name: getattr(self, name) for name in table.BATCHING})

    @property
    def batching_summary(self) -> str:
        """The batching options in words, for pages."""
        return table.BATCHING.describe(self.batching.values())


class WorkerState(models.TextChoices):
    STARTING = "starting", "Starting"
    READY = "ready", "Ready"
    UNHEALTHY = "unhealthy", "Unhealthy"
    DRAINING = "draining", "Draining"
    STOPPED = "stopped", "Stopped"
    FAILED = "failed", "Failed"


LIVE_WORKER_STATES = (WorkerState.STARTING, WorkerState.READY, WorkerState.UNHEALTHY)
BUSY_WORKER_STATES = (*LIVE_WORKER_STATES, WorkerState.DRAINING)
"""A worker still running: live, or draining before it stops."""


class Worker(models.Model):
    """One replica of a variant: a process or a container, as the backend started it.

    The report token is stored as a digest; ``restarts`` counts replacements of this replica
    slot, carried over to the worker that replaces it. On swarm a row mirrors one task of the
    variant's service: ``handle`` is the task id, ``slot`` and ``node`` where it was placed."""

    variant = models.ForeignKey(Variant, on_delete=models.CASCADE, related_name="workers")
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="workers")
    backend = models.CharField(max_length=16)
    handle = models.CharField(max_length=128, blank=True, db_index=True)
    http_url = models.CharField(max_length=255, blank=True)
    grpc_target = models.CharField(max_length=255, blank=True)
    state = models.CharField(
        max_length=16, choices=WorkerState.choices, default=WorkerState.STARTING, db_index=True
    )
    restarts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    token_digest = models.CharField(max_length=64, blank=True)
    spec_hash = models.CharField(max_length=64, blank=True, help_text="the variant configuration it runs")
    log_path = models.CharField(max_length=255, blank=True)
    node = models.CharField(max_length=255, blank=True, help_text="the machine it runs on (swarm)")
    slot = models.PositiveIntegerField(null=True, blank=True, help_text="its replica slot (swarm)")
    started_at = models.DateTimeField(null=True, blank=True)
    ready_at = models.DateTimeField(null=True, blank=True)
    last_heartbeat = models.DateTimeField(null=True, blank=True)
    state_changed_at = models.DateTimeField(null=True, blank=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True, help_text="restart backoff")
    created_at = models.DateTimeField(auto_now_add=True)
    last_report = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ("variant_id", "id")
        indexes = [models.Index(fields=("state", "state_changed_at"), name="worker_state_since_idx")]

    def __str__(self) -> str:
        return f"worker {self.pk} of {self.variant}"

    @property
    def metrics_url(self) -> str:
        return f"{self.http_url}/metrics" if self.http_url else ""


class Report(models.Model):
    """A worker's report (raw), a per-worker rollup (``1m``/``10m``/``1h``) or a variant's rollup
    (``v15s``/``v1m``/``v10m``/``v1h``: all its workers added up, no worker; ``services/rollups.py``).
    Counters and histogram buckets add up; a rollup covers ``[start, end)``, a raw row sits at ``end``."""

    class Resolution(models.TextChoices):
        RAW = "raw", "raw"
        MINUTE = "1m", "per minute"
        TEN_MINUTES = "10m", "per 10 minutes"
        HOUR = "1h", "per hour"
        VARIANT_15S = "v15s", "variant, per 15 seconds"
        VARIANT_MINUTE = "v1m", "variant, per minute"
        VARIANT_TEN_MINUTES = "v10m", "variant, per 10 minutes"
        VARIANT_HOUR = "v1h", "variant, per hour"

    worker = models.ForeignKey(Worker, on_delete=models.SET_NULL, null=True, related_name="reports")
    variant = models.ForeignKey(Variant, on_delete=models.CASCADE, related_name="reports")
    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="reports")
    version_number = models.PositiveIntegerField()
    resolution = models.CharField(max_length=4, choices=Resolution.choices, default=Resolution.RAW)
    start = models.DateTimeField()
    end = models.DateTimeField(db_index=True)
    seconds = models.FloatField()
    requests = models.PositiveIntegerField(default=0)
    errors = models.PositiveIntegerField(default=0)
    outcomes = models.JSONField(default=dict)
    latency_histogram = models.JSONField(default=dict)
    batch_histogram = models.JSONField(default=dict)
    latency_p50_ms = models.FloatField(null=True)
    latency_p95_ms = models.FloatField(null=True)
    latency_p99_ms = models.FloatField(null=True)
    mean_batch_size = models.FloatField(null=True)
    queue_depth = models.FloatField(default=0)
    in_flight = models.FloatField(default=0)
    cpu_percent = models.FloatField(null=True)
    rss_bytes = models.BigIntegerField(null=True)
    gpu_utilization = models.FloatField(null=True)
    gpu_memory_bytes = models.BigIntegerField(null=True)
    samples = models.PositiveIntegerField(default=1, help_text="raw reports folded into this row")
    replicas = models.FloatField(null=True, help_text="a variant's rollup: its workers reporting (mean)")

    class Meta:
        ordering = ("-end",)
        indexes = [
            models.Index(fields=("deployment", "resolution", "end")),
            models.Index(fields=("variant", "resolution", "end")),
            models.Index(fields=("resolution", "end"), name="report_tier_end_idx"),  # rollup marks
        ]

    def __str__(self) -> str:
        return f"report of {self.worker_id} at {self.end:%H:%M:%S}"

    def as_point(self) -> dict[str, Any]:
        return {"end": self.end.isoformat(), "requests": self.requests, "errors": self.errors}


class ImageFlavour(models.TextChoices):
    CPU = "cpu", "CPU (onnxruntime)"
    GPU = "gpu", "GPU (onnxruntime-gpu)"


class ImageStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    BUILDING = "building", "Building"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


class WorkerImage(JobRow):
    """A worker container image for one model version: the ONNX file, its config and the worker, baked in.

    ``key`` is content-addressed (the ONNX digest, flavour, worker code hash and base image), so the
    same version with the same worker code is built once and reused; the tag carries the key. A
    build runs as a Celery job that claims the row with its ``attempt``; ``reused`` says the engine
    had the image already (built earlier, maybe by another platform database) and nothing was built.
    """

    key = models.CharField(max_length=64, unique=True)
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="worker_images")
    flavour = models.CharField(max_length=8, choices=ImageFlavour.choices)
    worker_code_hash = models.CharField(max_length=64, help_text="the inference worker's code and pins")
    base_image = models.CharField(max_length=255)
    tag = models.CharField(max_length=255)
    image_id = models.CharField(max_length=128, blank=True)
    status = models.CharField(
        max_length=12, choices=ImageStatus.choices, default=ImageStatus.QUEUED, db_index=True
    )
    progress = models.PositiveSmallIntegerField(default=0, validators=[MaxValueValidator(100)])
    step = models.CharField(max_length=200, blank=True, help_text="what the build does now")
    log = models.TextField(blank=True, help_text="the build log (its end, when long)")
    error = models.TextField(blank=True)
    reused = models.BooleanField(default=False)

    class Meta:
        ordering = ("-created_at", "-id")
        indexes = [models.Index(fields=("version", "flavour", "status"))]

    def __str__(self) -> str:
        return self.tag

    def log_tail(self, lines: int = 40) -> list[str]:
        return self.log.splitlines()[-lines:]

    @property
    def recent_log(self) -> str:
        """The last 200 lines of the build log (what the live page shows)."""
        return "\n".join(self.log_tail(200))

    @property
    def in_progress(self) -> bool:
        return self.status in (ImageStatus.QUEUED, ImageStatus.BUILDING)
