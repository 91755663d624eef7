"""Deleting a version, or a model with all its versions, and the stored files no version needs.

Refused (409, naming every reason) while anything still uses what would go: a version being
converted, an alias pointing at a version (of a version's deletion: a model's aliases go with it),
and whatever the apps above answer to ``hooks.versions_in_use`` (a deployment serving it, a worker
running it, a measurement or image build of it in progress). Otherwise the apps above drop their
history of the versions (``hooks.versions_deleting``), the rows go, the deletion is audited, and
once that commits each stored file (the source, the ONNX model) no remaining version shares is
removed (``storage.remove_unreferenced``). Version numbers are never given again: the model's
counter keeps counting.
"""

from __future__ import annotations

import functools
from typing import Any

from django.db import transaction
from django.db.models import Q

from registry import hooks, storage
from registry.audit import Actor, record_event
from registry.errors import VersionInUseError
from registry.models import Alias, ModelVersion, RegisteredModel


@transaction.atomic
def delete_version(*, version: ModelVersion, actor: Actor) -> None:
    """Delete ``version`` (its row, its measurements and images' rows, then its files)."""
    model = _lock(version.model)
    row = ModelVersion.objects.select_for_update().filter(pk=version.pk).first()
    if row is None:
        return  # deleted meanwhile: the request's outcome holds
    what = f"version {row.version} of {model.name!r}"
    aliases = sorted(Alias.objects.filter(version=row).values_list("name", flat=True))
    uses = [f"alias {name!r} points at it" for name in aliases]
    _refuse_if_used(what, model, [row], uses)
    hooks.versions_deleting.call(version_ids=[row.pk])
    paths = _paths([row])
    record_event(
        actor=actor,
        action="version.deleted",
        subject=f"model/{model.name}/v{row.version}",
        model=model,
        before=_summary(row),
    )
    row.delete()
    transaction.on_commit(lambda: _remove_files(paths))


@transaction.atomic
def delete_model(*, model: RegisteredModel, actor: Actor) -> None:
    """Delete ``model``, its aliases and every version (refused while any of them is used)."""
    model = _lock(model)
    versions = list(ModelVersion.objects.select_for_update().filter(model=model).order_by("version"))
    _refuse_if_used(f"model {model.name!r}", model, versions, [], whole_model=True)
    hooks.versions_deleting.call(version_ids=[v.pk for v in versions])
    paths = _paths(versions)
    aliases = dict(Alias.objects.filter(model=model).values_list("name", "version__version"))
    record_event(
        actor=actor,
        action="model.deleted",
        subject=f"model/{model.name}",
        model=model,
        before={"versions": [v.version for v in versions], "aliases": aliases},
    )
    Alias.objects.filter(model=model).delete()
    ModelVersion.objects.filter(model=model).delete()
    model.delete()
    transaction.on_commit(lambda: _remove_files(paths))


def _lock(model: RegisteredModel) -> RegisteredModel:
    """The model's row, locked: uploads, alias moves and deletions of one model queue here."""
    return RegisteredModel.objects.select_for_update().get(pk=model.pk)


def _refuse_if_used(
    what: str,
    model: RegisteredModel,
    versions: list[ModelVersion],
    uses: list[str],
    *,
    whole_model: bool = False,
) -> None:
    """Raise ``VersionInUseError`` naming every use of ``versions`` (of the model, when it all goes)."""
    uses = [
        *uses,
        *(f"v{v.version} is {v.status}: its conversion has not ended" for v in versions if v.is_busy),
    ]
    ids = [v.pk for v in versions]
    for found in hooks.versions_in_use.call(model_id=model.pk, version_ids=ids, whole_model=whole_model):
        uses += found
    if uses:
        raise VersionInUseError(f"{what} is in use: {'; '.join(uses)}", extra={"uses": uses})


def _summary(version: ModelVersion) -> dict[str, Any]:
    return {
        "version": version.version,
        "status": version.status,
        "source_sha256": version.source_sha256,
        "onnx_sha256": version.onnx_sha256,
    }


def _paths(versions: list[ModelVersion]) -> set[str]:
    return {p for v in versions for p in (v.source_path, v.onnx_path) if p}


def _remove_files(paths: set[str]) -> None:
    for relative in sorted(paths):
        storage.remove_unreferenced(relative, functools.partial(_referenced, relative))


def _referenced(relative: str) -> bool:
    return ModelVersion.objects.filter(Q(source_path=relative) | Q(onnx_path=relative)).exists()
