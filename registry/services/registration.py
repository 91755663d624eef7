"""Creating models and registering versions from uploaded artifacts."""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from django.conf import settings
from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from config.errors import PayloadTooLargeError
from registry import storage
from registry.artifacts import detect_format
from registry.audit import Actor, record_event
from registry.errors import (
    DuplicateModelError,
    DuplicateUploadError,
    InvalidArtifactError,
    InvalidLabelsError,
    ModelNotFoundError,
    VersionNotFoundError,
)
from registry.models import ModelVersion, RegisteredModel, slug_refusal
from registry.services.conversion import PLATFORM_TOLERANCE, ParityTolerance, start_first_conversion
from registry.services.upload_reading import inspect_upload, resolve_signature
from registry.signature import (
    Signature,
    parse_signature,
    resolve_labels,
)

logger = logging.getLogger(__name__)

MAX_METADATA_BYTES = 16 * 1024
MAX_TAGS = 32


def _clean_tags(tags: Any) -> list[str]:
    if tags is None:
        return []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidArtifactError("tags: must be a list of strings", code="invalid")
    if len(tags) > MAX_TAGS or any(not t.strip() or len(t) > 64 for t in tags):
        raise InvalidArtifactError(f"tags: at most {MAX_TAGS} tags of 1-64 characters", code="invalid")
    return sorted({t.strip() for t in tags})


def create_model(
    *, name: str, owner: User, description: str = "", tags: list[str] | None = None
) -> RegisteredModel:
    """Register a new model name; the name is a slug and unique."""
    refusal = slug_refusal("name", name)
    if refusal is not None:
        raise InvalidArtifactError(refusal, code="invalid")
    clean_tags = _clean_tags(tags)
    try:
        with transaction.atomic():
            model = RegisteredModel.objects.create(
                name=name, owner=owner, description=description[:10_000], tags=clean_tags
            )
            record_event(
                actor=owner,
                action="model.created",
                subject=f"model/{name}",
                model=model,
                after={"name": name, "description": model.description, "tags": clean_tags},
            )
    except IntegrityError:
        raise DuplicateModelError(f"a model named {name!r} exists already") from None
    return model


@transaction.atomic
def update_model(
    *, model: RegisteredModel, actor: Actor, description: str | None = None, tags: list[str] | None = None
) -> RegisteredModel:
    """Change a model's description or tags (a 404 when the model was deleted meanwhile)."""
    locked = RegisteredModel.objects.select_for_update().filter(pk=model.pk).first()
    if locked is None:
        raise ModelNotFoundError(f"model {model.name!r} was deleted")
    before = {"description": locked.description, "tags": locked.tags}
    if description is not None:
        locked.description = description[:10_000]
    if tags is not None:
        locked.tags = _clean_tags(tags)
    after = {"description": locked.description, "tags": locked.tags}
    if after == before:  # a request that changes nothing (a pipeline run again) leaves no record
        return locked
    locked.save(update_fields=["description", "tags", "updated_at"])
    record_event(
        actor=actor,
        action="model.updated",
        subject=f"model/{locked.name}",
        model=locked,
        before=before,
        after=after,
    )
    return locked


@transaction.atomic
def update_version(
    *, version: ModelVersion, actor: Actor, description: str | None = None, class_labels: Any = None
) -> ModelVersion:
    """Change a version's description or class labels (``[]``/``{}`` removes them; the labels are
    checked against the version's outputs). Its workers take new labels as a rolling update."""
    # The model's row first, as uploads and deletions lock it: one order, no deadlock.
    RegisteredModel.objects.select_for_update().filter(pk=version.model_id).first()
    rows = ModelVersion.objects.select_for_update(of=("self",)).select_related("model")
    locked = rows.filter(pk=version.pk).first()
    if locked is None:
        raise VersionNotFoundError(f"version {version.version} of {version.model.name!r} was deleted")
    before = {"description": locked.description, "class_labels": locked.class_labels}
    if description is not None:
        locked.description = description[:10_000]
    if class_labels is not None:
        locked.class_labels = resolve_labels(class_labels, parse_signature(locked.signature))
    after = {"description": locked.description, "class_labels": locked.class_labels}
    if after == before:  # a request that changes nothing (a pipeline run again) leaves no record
        return locked
    locked.save(update_fields=["description", "class_labels", "updated_at"])
    record_event(
        actor=actor,
        action="version.updated",
        subject=f"model/{locked.model.name}/v{locked.version}",
        model=locked.model,
        before=before,
        after=after,
    )
    return locked


def clean_metadata(metadata: Any) -> dict[str, Any]:
    """Bound and validate free-form version metadata (git commit, CI run URL...)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidArtifactError("metadata: must be a JSON object", code="invalid")
    encoded = json.dumps(metadata)
    if len(encoded) > MAX_METADATA_BYTES:
        raise PayloadTooLargeError(
            f"metadata: {len(encoded)} bytes of JSON, above the limit of {MAX_METADATA_BYTES} bytes",
            extra={"limit": MAX_METADATA_BYTES},
        )
    if _depth(metadata) > 5:
        raise InvalidArtifactError("metadata: nested deeper than 5 levels", code="invalid")
    for key in ("git_commit", "ci_run_url", "source"):
        if key in metadata and not isinstance(metadata[key], str):
            raise InvalidArtifactError(f"metadata.{key}: must be a string", code="invalid")
    return metadata


def _depth(value: Any, level: int = 1) -> int:
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


IF_EXISTS = ("new", "existing", "refuse")
"""What an upload of bytes a version of the model already has does (``register_version``)."""


class Registration(NamedTuple):
    version: ModelVersion
    created: bool
    """False when ``if_exists=existing`` found the version registered before."""


def register_version(
    *,
    model: RegisteredModel,
    upload_path: Path,
    actor: User,
    signature: Any = None,
    description: str = "",
    metadata: Any = None,
    class_labels: Any = None,
    enqueue_conversion: bool = True,
    if_exists: str = "new",
    tolerance: ParityTolerance = PLATFORM_TOLERANCE,
    external_data: Path | None = None,
) -> Registration:
    """Check an uploaded file, store it content-addressed and create the next version.

    ``upload_path`` is a fully written temp file in the storage filesystem; the caller
    deletes it afterwards (and ``external_data``, an ONNX model's data file, which is folded into
    the model: the one file that results is what is stored). Nothing is stored, and no row is
    created, unless every check passes. Conversion is enqueued after the transaction commits.

    When a version of this model has the same bytes, ``if_exists`` decides:
    ``new`` registers them again, ``existing`` returns that version, ``refuse`` raises
    ``DuplicateUploadError``. ``class_labels`` (a list for the first numeric output, or lists by output
    name) name the classes a classification answer reports; ``tolerance`` is the version's own
    parity tolerance (None fields: the platform's).
    """
    if if_exists not in IF_EXISTS:
        raise InvalidArtifactError(f"if_exists: one of {', '.join(IF_EXISTS)}", code="invalid")
    clean_meta = clean_metadata(metadata)
    kind = detect_format(upload_path, max_unpacked_bytes=settings.KILN_MAX_UNPACKED_BYTES)
    with _inspected(kind.format, upload_path, external_data) as (stored_path, inspected):
        sig = resolve_signature(kind.format, signature, inspected)
        labels = resolve_labels(class_labels, sig)
        if not labels and inspected.get("class_labels"):  # an ONNX classifier's ZipMap names its classes
            with contextlib.suppress(InvalidLabelsError):  # if they do not fit, the version has none
                labels = resolve_labels(inspected["class_labels"], sig)
        relative, digest, size, created = storage.store_path(stored_path)
        try:
            version, new = _create_version_row(
                model=model,
                actor=actor,
                fmt=kind.format,
                relative=relative,
                digest=digest,
                size=size,
                signature=sig,
                class_labels=labels,
                description=description,
                metadata=clean_meta,
                enqueue_conversion=enqueue_conversion,
                if_exists=if_exists,
                tolerance=tolerance,
            )
        except BaseException:
            if created:
                referenced = ModelVersion.objects.filter(source_path=relative).exists()
                storage.remove_if_unreferenced(relative, referenced=referenced)
            raise
        if not new:
            return Registration(version, created=False)
        # A deletion of the last other version with these bytes may have removed the file meanwhile.
        transaction.on_commit(lambda: storage.ensure_stored(relative, stored_path, digest))
        logger.info("registered %s (%s, %d bytes, sha256 %s)", version, kind.format, size, digest)
        return Registration(version, created=True)


@contextlib.contextmanager
def _inspected(
    fmt: str, upload_path: Path, external_data: Path | None
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The file to store and what the sandbox read from it: the upload itself, or, with an ONNX
    model's ``external_data``, the two folded into one file that lives as long as the block."""
    if external_data is None:
        yield upload_path, inspect_upload(fmt, upload_path)
        return
    if fmt != "onnx":
        raise InvalidArtifactError(
            f"external_data: only an ONNX model keeps its data in another file; this is {fmt}", code="invalid"
        )
    with tempfile.TemporaryDirectory(dir=storage.temp_dir()) as folder:
        folded = Path(folder) / "model.onnx"
        yield folded, inspect_upload(fmt, upload_path, external_data, folded)


def _same_bytes(
    model: RegisteredModel, digest: str, labels: dict[str, list[str]], if_exists: str
) -> ModelVersion | None:
    """With the model's row locked: the earlier version ``if_exists=existing`` answers, or None to
    register; raises for ``refuse`` or other labels. Checked under the lock, so concurrent uploads of
    the same bytes (a CI job retried) register them once."""
    if if_exists == "new":
        return None
    earlier = model.versions.filter(source_sha256=digest).order_by("version").first()
    if earlier is None:
        return None
    if if_exists == "existing" and labels and labels != earlier.class_labels:
        raise DuplicateUploadError(
            f"class_labels: v{earlier.version} has the same bytes and other labels; change its labels "
            f"(PATCH the version) or send if_exists=new to register the bytes again with these",
            code="labels_differ",
            extra={"version": earlier.version},
        )
    if if_exists == "existing":
        return earlier
    raise DuplicateUploadError(
        f"file: the same bytes as v{earlier.version} (sha256 {digest[:12]}…); "
        f"send if_exists=new to register them again, or if_exists=existing to get v{earlier.version}",
        extra={"version": earlier.version},
    )


@transaction.atomic
def _create_version_row(
    *,
    model: RegisteredModel,
    actor: User,
    fmt: str,
    relative: str,
    digest: str,
    size: int,
    signature: Signature,
    class_labels: dict[str, list[str]],
    description: str,
    metadata: dict[str, Any],
    enqueue_conversion: bool,
    if_exists: str,
    tolerance: ParityTolerance,
) -> tuple[ModelVersion, bool]:
    # The row lock serialises number assignment per model: concurrent uploads queue here.
    locked = RegisteredModel.objects.select_for_update().filter(pk=model.pk).first()
    if locked is None:
        raise ModelNotFoundError(f"model {model.name!r} was deleted")
    earlier = _same_bytes(locked, digest, class_labels, if_exists)
    if earlier is not None:
        return earlier, False
    locked.latest_version += 1
    locked.save(update_fields=["latest_version", "updated_at"])
    version = ModelVersion.objects.create(
        model=locked,
        version=locked.latest_version,
        description=description[:10_000],
        metadata=metadata,
        source_format=fmt,
        source_sha256=digest,
        source_size=size,
        source_path=relative,
        signature=signature.as_dict(),
        class_labels=class_labels,
        parity_atol=tolerance.atol,
        parity_rtol=tolerance.rtol,
        created_by=actor,
    )
    record_event(
        actor=actor,
        action="version.registered",
        subject=f"model/{locked.name}/v{version.version}",
        model=locked,
        after={
            "version": version.version,
            "format": fmt,
            "sha256": digest,
            "size": size,
            "status": version.status,
            "metadata": metadata,
            **({"class_labels": {name: len(v) for name, v in class_labels.items()}} if class_labels else {}),
        },
    )
    if enqueue_conversion:
        start_first_conversion(version)
    return version, True
