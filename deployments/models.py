"""Deployment domain: endpoints, their variants (A/B arms), running workers and their reports."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from deployments.autoscaling.models import ScalingDecision, ScalingPolicy  # noqa: F401 - the app's models
from deployments.backends import BACKEND_NAMES
from inference_worker.contracts import batching as table
from inference_worker.contracts.options import OptionField
from registry.models import ModelVersion, RegisteredModel, slug_validator


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


class Deployment(models.Model):
    """A named endpoint serving one model through the gateway.

    ``desired_running`` is what the user asked for; ``status`` is what the
    reconcile loop last observed. Deleting is desired state too: ``delete_requested_at``
    takes it out of the routing table at once, and the reconcile loop drains and stops its
    workers, then deletes the row (only that loop touches workers).
    """

    name = models.CharField(max_length=64, unique=True, validators=[slug_validator])
    model = models.ForeignKey(RegisteredModel, on_delete=models.PROTECT, related_name="deployments")
    description = models.TextField(blank=True)
    desired_running = models.BooleanField(default=True)
    status = models.CharField(
        max_length=16, choices=DeploymentStatus.choices, default=DeploymentStatus.DEPLOYING
    )
    status_reason = models.TextField(blank=True)
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


class Variant(models.Model):
    """One arm of a deployment: a version (pinned, or followed through an alias) and how to run it."""

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="variants")
    name = models.CharField(max_length=64, validators=[slug_validator])
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
        ]

    def __str__(self) -> str:
        return f"{self.deployment.name}/{self.name}"

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

    def __str__(self) -> str:
        return f"worker {self.pk} of {self.variant}"

    @property
    def metrics_url(self) -> str:
        return f"{self.http_url}/metrics" if self.http_url else ""


class Report(models.Model):
    """A worker's report (raw) or a per-worker rollup (``1m``/``10m``/``1h``, ``services/rollups.py``):
    counters and histogram buckets add up; a rollup covers ``[start, end)``, a raw row sits at ``end``."""

    class Resolution(models.TextChoices):
        RAW = "raw", "raw"
        MINUTE = "1m", "per minute"
        TEN_MINUTES = "10m", "per 10 minutes"
        HOUR = "1h", "per hour"

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


class TrafficChange(models.Model):
    """One change of a deployment's traffic split: who, when, why, the split before and after.

    ``before``/``after`` map variant names to ``{"weight": w, "shadow_percent": s}``;
    any earlier split can be restored from its row.
    """

    class Kind(models.TextChoices):
        MANUAL = "manual", "Manual"
        PROMOTE = "promote", "Promote"
        RESTORE = "restore", "Restore"
        ROLLOUT = "rollout", "Rollout step"
        ROLLBACK = "rollback", "Automatic rollback"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="traffic_changes")
    kind = models.CharField(max_length=16, choices=Kind.choices, default=Kind.MANUAL)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    actor_label = models.CharField(max_length=150)
    before = models.JSONField()
    after = models.JSONField()
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("-created_at", "-id")

    def __str__(self) -> str:
        return f"{self.deployment.name}: {self.split_label(self.after)}"

    @staticmethod
    def split_label(split: dict[str, Any]) -> str:
        parts = [f"{name} {v.get('weight', 0)}%" for name, v in split.items()]
        shadows = [
            f"{name} shadow {v['shadow_percent']}%" for name, v in split.items() if v.get("shadow_percent")
        ]
        return " / ".join(parts) + (f" ({', '.join(shadows)})" if shadows else "")


class Rollout(models.Model):
    """A guarded rollout: a candidate variant moves through weight steps while it meets its SLO.

    Beat advances it after each hold time and rolls it back (candidate weight 0) as
    soon as a measured figure breaches the objective.
    """

    class State(models.TextChoices):
        RUNNING = "running", "Running"
        PAUSED = "paused", "Paused"
        SUCCEEDED = "succeeded", "Succeeded"
        ROLLED_BACK = "rolled_back", "Rolled back"
        ABORTED = "aborted", "Aborted"

    deployment = models.ForeignKey(Deployment, on_delete=models.CASCADE, related_name="rollouts")
    candidate = models.ForeignKey(Variant, on_delete=models.CASCADE, related_name="rollouts")
    baseline = models.ForeignKey(Variant, on_delete=models.CASCADE, related_name="+")
    steps = models.JSONField(help_text="candidate weights, e.g. [5, 25, 50, 100]")
    hold_s = models.FloatField(validators=[MinValueValidator(1.0)])
    max_error_rate = models.FloatField(validators=[MinValueValidator(0.0), MaxValueValidator(1.0)])
    max_p99_ms = models.FloatField(validators=[MinValueValidator(0.1)])
    min_shadow_agreement = models.FloatField(null=True, blank=True)
    min_requests = models.PositiveIntegerField(default=20, help_text="requests needed before judging a step")
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING, db_index=True)
    step_index = models.PositiveSmallIntegerField(default=0)
    step_started_at = models.DateTimeField(null=True, blank=True)
    last_evaluation = models.JSONField(default=dict, blank=True)
    reason = models.TextField(blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ("-created_at",)
        constraints = [
            models.UniqueConstraint(
                fields=("deployment",),
                condition=models.Q(state__in=("running", "paused")),
                name="one_active_rollout_per_deployment",
            )
        ]

    def __str__(self) -> str:
        return f"rollout of {self.candidate} ({self.state})"

    @property
    def current_weight(self) -> int:
        steps: list[int] = self.steps
        return int(steps[min(self.step_index, len(steps) - 1)])

    @property
    def is_active(self) -> bool:
        return self.state in (self.State.RUNNING, self.State.PAUSED)


class ImageFlavour(models.TextChoices):
    CPU = "cpu", "CPU (onnxruntime)"
    GPU = "gpu", "GPU (onnxruntime-gpu)"


class ImageStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    BUILDING = "building", "Building"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


class WorkerImage(models.Model):
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
    attempt = models.UUIDField(null=True, blank=True)
    tries = models.PositiveSmallIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

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
