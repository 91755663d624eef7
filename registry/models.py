"""Registry domain: models, their versions, movable aliases, and the audit trail."""

from __future__ import annotations

import re
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import models

SLUG_MAX_LENGTH = 64
SLUG_PATTERN = rf"^[a-z0-9](?:[a-z0-9-]{{0,{SLUG_MAX_LENGTH - 2}}}[a-z0-9])?$"
"""What names a model, alias, deployment or variant (the API's schema publishes it)."""
SLUG_RULE = (
    f"use 1-{SLUG_MAX_LENGTH} lowercase letters, digits and hyphens, starting and ending with a letter or "
    "digit"
)
_SLUG = re.compile(SLUG_PATTERN)


def slug_refusal(label: str, value: str) -> str | None:
    """Why ``value`` cannot be the name ``label`` says (``name: '-a' is not valid; use ...``), or None."""
    if _SLUG.fullmatch(value):  # not search: "$" would let a trailing newline through
        return None
    return f"{label}: {value!r} is not valid; {SLUG_RULE}"


def slug_validator(value: str) -> None:
    """The name fields' validator (the admin's forms, ``full_clean``): ``SLUG_RULE``, matched whole."""
    if not _SLUG.fullmatch(str(value)):
        raise ValidationError(SLUG_RULE, code="invalid")


class RegisteredModel(models.Model):
    """A named model; its versions carry the artifacts.

    ``latest_version`` is the counter from which version numbers are drawn under
    a row lock, so concurrent uploads never share a number.
    """

    name = models.CharField(max_length=SLUG_MAX_LENGTH, unique=True, validators=[slug_validator])
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="registered_models"
    )
    team = models.ForeignKey(
        "auth.Group",
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="registered_models",
        help_text="members may upload versions and move aliases",
    )
    tags = models.JSONField(default=list, blank=True)
    latest_version = models.PositiveIntegerField(default=0, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("name",)
        # On PostgreSQL, 0002 adds trigram indexes for the name/description search and a GIN
        # index on ``tags``; owner and team are foreign keys, indexed already.

    def __str__(self) -> str:
        return self.name

    def can_change(self, user: Any) -> bool:
        """Owner, staff and members of the model's team may change it; everyone signed in reads."""
        if not getattr(user, "is_authenticated", False) or not user.is_active:
            return False
        if user.is_staff or user.pk == self.owner_id:
            return True
        return self.team_id is not None and user.groups.filter(pk=self.team_id).exists()


class ArtifactFormat(models.TextChoices):
    TORCHSCRIPT = "torchscript", "TorchScript (torch.jit.save)"
    TORCH_EXPORT = "torch_export", "torch.export program (.pt2)"
    ONNX = "onnx", "ONNX"


class VersionStatus(models.TextChoices):
    REGISTERED = "registered", "Registered"
    CONVERTING = "converting", "Converting"
    READY = "ready", "Ready"
    FAILED = "failed", "Failed"


class ModelVersion(models.Model):
    """One immutable artifact of a model, its signature, and its conversion outcome.

    Artifacts live under content-addressed paths relative to ``KILN_ARTIFACT_ROOT``;
    ``conversion_attempt`` lets a redelivered conversion resume while a duplicate
    message does nothing.
    """

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="versions")
    version = models.PositiveIntegerField()
    description = models.TextField(blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    source_format = models.CharField(max_length=16, choices=ArtifactFormat.choices)
    source_sha256 = models.CharField(max_length=64)
    source_size = models.BigIntegerField()
    source_path = models.CharField(max_length=255)
    signature = models.JSONField(default=dict, blank=True)
    class_labels = models.JSONField(default=dict, blank=True)
    """Labels of the outputs' classes, by output name (``inference_worker.contracts.labels``)."""
    status = models.CharField(
        max_length=16, choices=VersionStatus.choices, default=VersionStatus.REGISTERED, db_index=True
    )
    status_reason = models.TextField(blank=True)
    progress = models.CharField(max_length=200, blank=True)
    onnx_sha256 = models.CharField(max_length=64, blank=True)
    onnx_size = models.BigIntegerField(null=True, blank=True)
    onnx_path = models.CharField(max_length=255, blank=True)
    report = models.JSONField(default=dict, blank=True)
    parity_atol = models.FloatField(
        null=True, blank=True, help_text="the parity check's atol for this version; null: the platform's"
    )
    parity_rtol = models.FloatField(
        null=True, blank=True, help_text="the parity check's rtol for this version; null: the platform's"
    )
    conversion_attempt = models.UUIDField(null=True, blank=True)
    conversion_started_at = models.DateTimeField(null=True, blank=True)
    conversion_heartbeat_at = models.DateTimeField(null=True, blank=True)
    conversion_tries = models.PositiveSmallIntegerField(default=0)
    conversion_finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="uploaded_versions"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("model__name", "-version")
        constraints = [
            models.UniqueConstraint(fields=("model", "version"), name="unique_version_per_model"),
        ]
        # A model's versions by state, newest first. (On PostgreSQL, 0002 also adds a GIN
        # index on ``metadata`` for the metadata-key filter.)
        indexes = [
            models.Index(fields=("model", "status", "-version"), name="version_model_state_idx"),
            # Whether a stored file is still needed when a version is deleted (``services.removal``).
            models.Index(fields=("source_path",), name="version_source_path_idx"),
            models.Index(fields=("onnx_path",), name="version_onnx_path_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.model.name} v{self.version}"

    @property
    def is_ready(self) -> bool:
        return self.status == VersionStatus.READY

    @property
    def is_busy(self) -> bool:
        return self.status in (VersionStatus.REGISTERED, VersionStatus.CONVERTING)

    @property
    def parity_max_abs_error(self) -> float | None:
        """The largest parity error over all outputs, for lists."""
        outputs = (self.report.get("parity") or {}).get("outputs") or {}
        values = [
            float(o["max_abs_error"])
            for o in outputs.values()
            if isinstance(o, dict) and isinstance(o.get("max_abs_error"), int | float)
        ]
        return max(values) if values else None


class Alias(models.Model):
    """A movable name (``production``, ``staging``…) on a model, pointing at one version."""

    model = models.ForeignKey(RegisteredModel, on_delete=models.CASCADE, related_name="aliases")
    name = models.CharField(max_length=SLUG_MAX_LENGTH, validators=[slug_validator])
    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="aliases")
    updated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ("model__name", "name")
        constraints = [models.UniqueConstraint(fields=("model", "name"), name="unique_alias_per_model")]
        verbose_name_plural = "aliases"

    def __str__(self) -> str:
        return f"{self.model.name}@{self.name} -> v{self.version.version}"


class AuditEvent(models.Model):
    """An append-only record of who changed what, with the state before and after.

    ``subject`` is a readable path (``model/resnet``, ``model/resnet/v3``,
    ``deployment/search``) so events outlive the rows they describe.
    """

    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    actor_label = models.CharField(max_length=150)
    action = models.CharField(max_length=64, db_index=True)
    subject = models.CharField(max_length=255, db_index=True)
    model = models.ForeignKey(
        RegisteredModel, on_delete=models.SET_NULL, null=True, blank=True, related_name="audit_events"
    )
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ("-created_at", "-id")
        # Every filter of the audit lists, newest first (keyset pages on ``created_at``).
        indexes = [
            models.Index(fields=("model", "-created_at"), name="audit_model_time_idx"),
            models.Index(fields=("action", "-created_at"), name="audit_action_time_idx"),
            models.Index(fields=("actor_label", "-created_at"), name="audit_actor_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.actor_label} {self.action} {self.subject}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            msg = "audit events are append-only"
            raise ValueError(msg)
        super().save(*args, **kwargs)
