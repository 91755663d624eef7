"""Reads used in more than one place, with their joins set once."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, IntegerField, OuterRef, Prefetch, QuerySet, Subquery, Value
from django.db.models.functions import Coalesce

from registry.errors import ModelNotFoundError, VersionNotFoundError
from registry.models import Alias, AuditEvent, ModelVersion, RegisteredModel
from registry.permissions import ensure_can_change


def models_with_counts() -> QuerySet[RegisteredModel]:
    """Models with owner, version count, latest version's status and aliases, for lists.

    The count and the status are correlated subqueries, not a join with GROUP BY, so a
    page costs the rows it shows: each runs for the page's rows only, on the
    ``(model, version)`` unique index.
    """
    # The newest version that exists (``latest_version`` counts the numbers handed out, deleted ones too).
    newest = ModelVersion.objects.filter(model=OuterRef("pk")).order_by("-version")
    count = (
        ModelVersion.objects.filter(model=OuterRef("pk"))
        .order_by()
        .values("model")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return (
        RegisteredModel.objects.select_related("owner", "team")
        .annotate(
            version_count=Coalesce(Subquery(count, output_field=IntegerField()), Value(0)),
            newest_version=Coalesce(Subquery(newest.values("version")[:1]), Value(0)),
            latest_status=Subquery(newest.values("status")[:1]),
        )
        .prefetch_related(
            Prefetch(
                "aliases", queryset=Alias.objects.select_related("version", "updated_by").order_by("name")
            )
        )
    )


def versions() -> QuerySet[ModelVersion]:
    """Versions with their model, uploader and aliases."""
    return ModelVersion.objects.select_related("model", "created_by").prefetch_related("aliases")


def get_model(name: str) -> RegisteredModel:
    """The model named ``name`` or ``ModelNotFoundError``."""
    model = RegisteredModel.objects.select_related("owner").filter(name=name).first()
    if model is None:
        raise ModelNotFoundError(f"no model named {name!r}")
    return model


def get_version(model_name: str, number: int) -> ModelVersion:
    """Version ``number`` of ``model_name`` or a not-found error naming which part is missing."""
    version = versions().filter(model__name=model_name, version=number).first()
    if version is None:
        get_model(model_name)
        raise VersionNotFoundError(f"model {model_name!r} has no version {number}")
    return version


def model_for_change(name: str, user: Any) -> RegisteredModel:
    """The model ``name`` for a change by ``user``: 404 when there is none, 403 when not theirs."""
    model = get_model(name)
    ensure_can_change(user, model)
    return model


def version_for_change(model_name: str, number: int, user: Any) -> ModelVersion:
    """Version ``number`` of ``model_name`` for a change by ``user`` (404, then 403)."""
    version = get_version(model_name, number)
    ensure_can_change(user, version.model)
    return version


def resolve_reference(model_name: str, reference: str) -> ModelVersion:
    """A version by number (``3``), alias (``production``) or ``latest``."""
    if reference.isdigit():
        return get_version(model_name, int(reference))
    model = get_model(model_name)
    if reference == "latest":
        version = versions().filter(model=model).order_by("-version").first()
        if version is None:
            raise VersionNotFoundError(f"model {model_name!r} has no versions yet")
        return version
    alias = Alias.objects.select_related("version__model").filter(model=model, name=reference).first()
    if alias is None:
        raise VersionNotFoundError(f"model {model_name!r} has no version or alias {reference!r}")
    return alias.version


def audit_events() -> QuerySet[AuditEvent]:
    return AuditEvent.objects.select_related("model")


def same_bytes_as(version: ModelVersion) -> ModelVersion | None:
    """The first other version of the same model uploaded with the same bytes, if any."""
    return (
        ModelVersion.objects.filter(model_id=version.model_id, source_sha256=version.source_sha256)
        .exclude(pk=version.pk)
        .order_by("version")
        .first()
    )
