"""A registry of many models made in bulk: the small sets of the list tests and the large ones of bench/.

Rows go in through the ORM with ``bulk_create`` (no services, no conversions), each
version with a real-looking conversion report, so a list page reads what it would
read in a registry a year old.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth.models import Group, User

from registry.models import Alias, AuditEvent, ModelVersion, RegisteredModel, VersionStatus
from tests.support.versions import PROFILE

TAGS = ("vision", "nlp", "tabular", "audio", "ranking")
STATES = (VersionStatus.READY, VersionStatus.READY, VersionStatus.FAILED, VersionStatus.CONVERTING)
REPORT = {
    **PROFILE,
    "opset": 17,
    "parity": {"outputs": {"y": {"max_abs_error": 2.4e-7, "mean_abs_error": 3.1e-8}}, "samples": 8},
    "warnings": [],
}


@dataclass(frozen=True)
class Catalog:
    models: int
    versions: int
    aliases: int
    events: int


def seed_catalog(
    *,
    owner: User,
    models: int,
    versions_per_model: int = 4,
    events_per_model: int = 4,
    team: Group | None = None,
    prefix: str = "model",
    batch: int = 2000,
) -> Catalog:
    """``models`` models named ``{prefix}-00000``…, each with versions, a production alias and events.

    The latest version's state cycles through ready, ready, failed, converting; tags
    cycle through ``TAGS``; every second model belongs to ``team`` when one is given.
    """
    made = RegisteredModel.objects.bulk_create(
        [
            RegisteredModel(
                name=f"{prefix}-{i:05d}",
                description=f"model number {i} of the {TAGS[i % len(TAGS)]} team",
                owner=owner,
                team=team if team is not None and i % 2 == 0 else None,
                tags=[TAGS[i % len(TAGS)], f"batch-{i // 100}"],
                latest_version=versions_per_model,
            )
            for i in range(models)
        ],
        batch_size=batch,
    )
    versions: list[ModelVersion] = []
    for i, model in enumerate(made):
        for number in range(1, versions_per_model + 1):
            digest = f"{model.pk:032x}{number:032x}"
            latest = number == versions_per_model
            versions.append(
                ModelVersion(
                    model=model,
                    version=number,
                    metadata={"git_commit": digest[:12], **({"dataset": "v2"} if latest else {})},
                    source_format="onnx",
                    source_sha256=digest,
                    source_size=1_000_000 + number,
                    source_path=f"sha256/{digest[:2]}/{digest}",
                    onnx_path=f"sha256/{digest[:2]}/{digest}",
                    onnx_sha256=digest,
                    onnx_size=1_000_000 + number,
                    status=STATES[i % len(STATES)] if latest else VersionStatus.READY,
                    report=REPORT,
                    created_by=owner,
                )
            )
    ModelVersion.objects.bulk_create(versions, batch_size=batch)
    newest = ModelVersion.objects.filter(model__in=made, version=versions_per_model)
    aliases = Alias.objects.bulk_create(
        [Alias(model_id=v.model_id, name="production", version=v, updated_by=owner) for v in newest],
        batch_size=batch,
    )
    events = AuditEvent.objects.bulk_create(
        [
            AuditEvent(
                actor=owner,
                actor_label=owner.username,
                action="version.registered",
                subject=f"model/{model.name}/v{n}",
                model=model,
                after={"version": n},
            )
            for model in made
            for n in range(1, events_per_model + 1)
        ],
        batch_size=batch,
    )
    return Catalog(models=len(made), versions=len(versions), aliases=len(aliases), events=len(events))
