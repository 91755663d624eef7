"""Registry API views: reads through viewsets, each workflow an explicit view calling one service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.db.models import QuerySet
from django.http import FileResponse
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, JSONParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config import json_input
from config.query import read_query
from inference_worker.contracts.labels import labels_from_text
from registry import queries, services, storage
from registry.api import serializers as s
from registry.errors import (
    ArtifactTooLargeError,
    InvalidArtifactError,
    ModelNotFoundError,
    VersionNotFoundError,
)
from registry.models import AuditEvent, ModelVersion, RegisteredModel
from registry.search import STATES, ModelFilters, VersionFilters
from registry.uploads import HashedTempUploadedFile


def parse_json_field(raw: str | None, field: str) -> Any:
    """Decode a JSON form field; a clear 400 names the field (and the spot) when it is malformed."""
    if raw is None or raw.strip() == "":
        return None
    return json_input.loads(raw, field)


class ModelViewSet(mixins.ListModelMixin, viewsets.GenericViewSet[RegisteredModel]):
    """Registered models: list, create, read, update, delete."""

    lookup_field = "name"
    lookup_value_regex = "[a-z0-9-]+"
    serializer_class = s.ModelOutput

    def get_queryset(self) -> QuerySet[RegisteredModel]:
        filters = ModelFilters.from_params(self.request.query_params)
        return filters.apply(queries.models_with_counts()).order_by("name")

    @extend_schema(
        parameters=[
            OpenApiParameter("search", str, description="substring of name or description"),
            OpenApiParameter("tag", str),
            OpenApiParameter("owner", str, description="owner's username"),
            OpenApiParameter("team", str, description="team's name"),
            OpenApiParameter("state", str, enum=list(STATES), description="state of the latest version"),
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(request=s.ModelCreateInput, responses={201: s.ModelOutput})
    def create(self, request: Request) -> Response:
        data = s.ModelCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        model = services.create_model(owner=request.user, **data.validated_data)  # type: ignore[arg-type]
        return Response(s.ModelOutput(queries.models_with_counts().get(pk=model.pk)).data, status=201)

    def retrieve(self, request: Request, name: str) -> Response:
        model = queries.models_with_counts().filter(name=name).first() or queries.get_model(name)
        return Response(s.ModelOutput(model).data)

    @extend_schema(request=s.ModelUpdateInput, responses=s.ModelOutput)
    def partial_update(self, request: Request, name: str) -> Response:
        model = queries.model_for_change(name, request.user)
        data = s.ModelUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        services.update_model(model=model, actor=request.user, **data.validated_data)
        updated = queries.models_with_counts().filter(pk=model.pk).first()
        if updated is None:  # deleted since
            raise ModelNotFoundError(f"model {name!r} was deleted")
        return Response(s.ModelOutput(updated).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, name: str) -> Response:
        """Delete the model, its aliases and every version; 409 naming what still uses it."""
        services.delete_model(model=queries.model_for_change(name, request.user), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class VersionViewSet(mixins.ListModelMixin, viewsets.GenericViewSet[ModelVersion]):
    """Versions of one model: list, upload, read, download, convert again, delete."""

    serializer_class = s.VersionOutput
    lookup_field = "number"
    lookup_value_regex = "[0-9]+"
    parser_classes = (MultiPartParser, FormParser, JSONParser)

    cursor_ordering = "-version"

    def get_queryset(self) -> QuerySet[ModelVersion]:
        filters = VersionFilters.from_params(self.request.query_params)
        model = queries.get_model(self.kwargs["name"])
        return filters.apply(queries.versions().filter(model=model)).order_by("-version")

    @extend_schema(
        parameters=[
            OpenApiParameter("state", str, enum=list(STATES)),
            OpenApiParameter("status", str, enum=list(STATES), description="the same as state"),
            OpenApiParameter("alias", str, description="versions an alias of this name points at"),
            OpenApiParameter("metadata_key", str, description="versions whose metadata has this key"),
        ]
    )
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)

    @extend_schema(
        request={"multipart/form-data": s.VersionUploadInput},
        responses={201: s.VersionUploadOutput, 200: s.VersionUploadOutput},
    )
    def create(self, request: Request, name: str) -> Response:
        model = queries.model_for_change(name, request.user)
        if getattr(request._request, "upload_too_large", False):
            raise ArtifactTooLargeError(_too_large_message())
        data = s.VersionUploadInput(data=request.data)
        valid = data.is_valid()  # reads the body: the upload handler may stop it past the limit
        if getattr(request._request, "upload_too_large", False):
            raise ArtifactTooLargeError(_too_large_message())
        if not valid:
            data.is_valid(raise_exception=True)
        upload = data.validated_data["file"]
        external = data.validated_data.get("external_data")
        if not isinstance(upload, HashedTempUploadedFile):
            raise InvalidArtifactError("file: send the artifact as a multipart file field", code="invalid")
        if external is not None and not isinstance(external, HashedTempUploadedFile):
            raise InvalidArtifactError("external_data: send it as a multipart file field", code="invalid")
        version, new = services.register_version(
            model=model,
            upload_path=Path(upload.temporary_file_path()),
            actor=request.user,  # type: ignore[arg-type]
            signature=parse_json_field(data.validated_data.get("signature"), "signature"),
            description=data.validated_data.get("description", ""),
            metadata=parse_json_field(data.validated_data.get("metadata"), "metadata"),
            class_labels=labels_from_text(data.validated_data.get("class_labels", "")),
            if_exists=data.validated_data["if_exists"],
            tolerance=services.ParityTolerance.of(data.validated_data),
            external_data=None if external is None else Path(external.temporary_file_path()),
        )
        # if_exists=existing answers the version registered before with a 200.
        found = not new
        context = {"same_bytes_as": version if found else queries.same_bytes_as(version)}
        output = s.VersionUploadOutput(queries.versions().get(pk=version.pk), context=context)
        return Response(output.data, status=200 if found else 201)

    def retrieve(self, request: Request, name: str, number: str) -> Response:
        return Response(s.VersionOutput(queries.get_version(name, int(number))).data)

    @extend_schema(request=s.VersionUpdateInput, responses=s.VersionOutput)
    def partial_update(self, request: Request, name: str, number: str) -> Response:
        """Change the description or the class labels (checked against the version's outputs)."""
        version = queries.version_for_change(name, int(number), request.user)
        data = s.VersionUpdateInput(data=request.data)
        data.is_valid(raise_exception=True)
        labels = data.validated_data.get("class_labels")
        services.update_version(
            version=version,
            actor=request.user,
            description=data.validated_data.get("description"),
            class_labels=labels_from_text(labels) if isinstance(labels, str) else labels,
        )
        return Response(s.VersionOutput(queries.get_version(name, int(number))).data)

    @extend_schema(responses={204: None})
    def destroy(self, request: Request, name: str, number: str) -> Response:
        """Delete the version and, once no version shares them, its stored files; 409 naming what
        still uses it (an alias, a deployment, a worker, a conversion or job in progress)."""
        version = queries.version_for_change(name, int(number), request.user)
        services.delete_version(version=version, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(request=s.VersionConvertInput, responses={202: s.VersionOutput})
    @action(detail=True, methods=["post"])
    def convert(self, request: Request, name: str, number: str) -> Response:
        """Convert the version again (after a failure, or to refresh its report); a parity tolerance
        given is the version's from now on."""
        data = s.VersionConvertInput(data=request.data)
        data.is_valid(raise_exception=True)
        version = queries.version_for_change(name, int(number), request.user)
        version = services.request_conversion(
            version=version, actor=request.user, tolerance=services.ParityTolerance.of(data.validated_data)
        )
        return Response(s.VersionOutput(queries.versions().get(pk=version.pk)).data, status=202)


def _too_large_message() -> str:
    from django.conf import settings

    return f"file: larger than the upload limit of {settings.KILN_MAX_UPLOAD_BYTES} bytes"


class ArtifactDownloadView(APIView):
    """Download a version's source artifact or its ONNX model."""

    @extend_schema(responses={(200, "application/octet-stream"): bytes})
    def get(self, request: Request, name: str, number: str, kind: str) -> FileResponse:
        version = queries.get_version(name, int(number))
        relative = version.source_path if kind == "source" else version.onnx_path
        if not relative:
            raise VersionNotFoundError(f"{version} has no ONNX artifact yet (status: {version.status})")
        extension = {"torchscript": "pt", "torch_export": "pt2", "onnx": "onnx"}[version.source_format]
        filename = f"{name}-v{number}.{extension if kind == 'source' else 'onnx'}"
        digest = version.source_sha256 if kind == "source" else version.onnx_sha256
        response = FileResponse(storage.resolve(relative).open("rb"), as_attachment=True, filename=filename)
        response["X-Content-SHA256"] = digest
        return response


class AliasView(APIView):
    """Read, set or delete one alias: ``PUT {"version": n}``."""

    @extend_schema(responses=s.AliasOutput)
    def get(self, request: Request, name: str, alias: str) -> Response:
        model = queries.get_model(name)
        row = model.aliases.select_related("version", "updated_by").filter(name=alias).first()
        if row is None:
            raise VersionNotFoundError(f"model {name!r} has no alias {alias!r}")
        return Response(s.AliasOutput(row).data)

    @extend_schema(request=s.AliasInput, responses=s.AliasOutput)
    def put(self, request: Request, name: str, alias: str) -> Response:
        model = queries.model_for_change(name, request.user)
        data = s.AliasInput(data=request.data)
        data.is_valid(raise_exception=True)
        row = services.set_alias(
            model=model, name=alias, version_number=data.validated_data["version"], actor=request.user
        )
        return Response(s.AliasOutput(row).data)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, name: str, alias: str) -> Response:
        model = queries.model_for_change(name, request.user)
        services.delete_alias(model=model, name=alias, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AliasListView(APIView):
    """Every alias of a model."""

    @extend_schema(responses=s.AliasOutput(many=True))
    def get(self, request: Request, name: str) -> Response:
        model = queries.get_model(name)
        rows = model.aliases.select_related("version", "updated_by").order_by("name")
        return Response(s.AliasOutput(rows, many=True).data)


class AuditEventViewSet(mixins.ListModelMixin, viewsets.GenericViewSet[AuditEvent]):
    """The audit trail, newest first; filter by model, action, actor or subject prefix."""

    serializer_class = s.AuditEventOutput
    cursor_ordering = "-created_at"

    def get_queryset(self) -> QuerySet[AuditEvent]:
        queryset = queries.audit_events()
        params = read_query(self.request, s.AuditEventQuery)
        if model := params.get("model"):
            queryset = queryset.filter(model__name=model)
        if action_name := params.get("action"):
            queryset = queryset.filter(action=action_name)
        if actor := params.get("actor"):
            queryset = queryset.filter(actor_label=actor)
        if subject := params.get("subject"):
            queryset = queryset.filter(subject__startswith=subject)
        return queryset

    @extend_schema(parameters=[s.AuditEventQuery])
    def list(self, request: Request, *args: Any, **kwargs: Any) -> Response:
        return super().list(request, *args, **kwargs)
