"""Aliases: movable names on a model. Every move is audited."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import transaction

from registry import hooks
from registry.audit import Actor, record_event
from registry.errors import AliasNotFoundError, InvalidArtifactError, VersionNotFoundError, VersionStateError
from registry.models import Alias, ModelVersion, RegisteredModel, VersionStatus, slug_refusal


def _check_alias_name(name: str) -> None:
    if name.isdigit() or name == "latest":
        raise InvalidArtifactError(
            f"alias: {name!r} is reserved (numbers and 'latest' name versions)", code="invalid"
        )
    refusal = slug_refusal("alias", name)
    if refusal is not None:
        raise InvalidArtifactError(refusal, code="invalid")


@transaction.atomic
def set_alias(*, model: RegisteredModel, name: str, version_number: int, actor: Actor) -> Alias:
    """Point alias ``name`` at ``version_number``, creating it or moving it.

    Only a ready version can be pointed at (409 naming its state otherwise). Deployments that
    follow the alias react after the commit, each by its ``on_alias_move`` policy.
    Concurrent writers of the model's aliases queue on the model's row, so two requests creating
    the same new alias cannot both insert it: the second moves it (last writer wins), never a 500.
    """
    _check_alias_name(name)
    RegisteredModel.objects.select_for_update().filter(pk=model.pk).first()
    version = ModelVersion.objects.filter(model=model, version=version_number).first()
    if version is None:
        raise VersionNotFoundError(f"model {model.name!r} has no version {version_number}")
    if version.status != VersionStatus.READY:
        raise VersionStateError(
            f"version {version_number} of {model.name!r} is {version.status}, not ready; "
            "an alias points only at a ready version",
            code="version_not_ready",
            extra={"version": version_number, "status": version.status},
        )
    alias = Alias.objects.select_for_update().filter(model=model, name=name).first()
    before = None if alias is None else {"version": alias.version.version}
    if alias is None:
        alias = Alias.objects.create(model=model, name=name, version=version, updated_by=_user(actor))
    elif alias.version_id != version.pk:
        alias.version = version
        alias.updated_by = _user(actor)
        alias.save(update_fields=["version", "updated_by", "updated_at"])
    else:
        return alias
    record_event(
        actor=actor,
        action="alias.set" if before is None else "alias.moved",
        subject=f"model/{model.name}@{name}",
        model=model,
        before=before,
        after={"version": version.version},
    )
    _notify_followers(alias)
    return alias


@transaction.atomic
def delete_alias(*, model: RegisteredModel, name: str, actor: Actor) -> None:
    """Remove alias ``name``."""
    RegisteredModel.objects.select_for_update().filter(pk=model.pk).first()  # as set_alias does
    alias = Alias.objects.select_for_update().select_related("version").filter(model=model, name=name).first()
    if alias is None:
        raise AliasNotFoundError(f"model {model.name!r} has no alias {name!r}")
    before = {"version": alias.version.version}
    alias.delete()
    record_event(
        actor=actor, action="alias.deleted", subject=f"model/{model.name}@{name}", model=model, before=before
    )


def _user(actor: Actor) -> User | None:
    return actor if isinstance(actor, User) else None


def _notify_followers(alias: Alias) -> None:
    """Announce the move after the commit (deployments that follow the alias roll forward)."""
    alias_id = alias.pk
    transaction.on_commit(lambda: hooks.alias_moved.call(alias_id=alias_id))
