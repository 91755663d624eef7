"""Input and output serializers of the registry API. Workflows never hide in ``create()``."""

from __future__ import annotations

from typing import Any

from django.urls import reverse
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from config.api_inputs import Input
from inference_worker.contracts.labels import MAX_LABEL_CHARS, MAX_LABELS_BYTES
from registry.models import (
    SLUG_MAX_LENGTH,
    SLUG_PATTERN,
    SLUG_RULE,
    Alias,
    AuditEvent,
    ModelVersion,
    RegisteredModel,
    VersionStatus,
)
from registry.services import PARITY_TOLERANCE_MAX


@extend_schema_field(
    {"type": "string", "pattern": SLUG_PATTERN, "minLength": 1, "maxLength": SLUG_MAX_LENGTH}
)
class SlugName(serializers.CharField):
    """A name of a model, alias, deployment or variant: the schema publishes its pattern, so a generated
    client can check it; the service refuses another with a message naming the value (``slug_refusal``)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("help_text", SLUG_RULE)
        super().__init__(max_length=SLUG_MAX_LENGTH, **kwargs)


class AliasOutput(serializers.ModelSerializer[Alias]):
    version = serializers.IntegerField(source="version.version")
    updated_by: serializers.StringRelatedField[Any] = serializers.StringRelatedField(
        allow_null=True, help_text="null when the platform moved it (a rollout)"
    )

    class Meta:
        model = Alias
        fields = ("name", "version", "updated_by", "updated_at")


class ModelOutput(serializers.ModelSerializer[RegisteredModel]):
    owner: serializers.StringRelatedField[Any] = serializers.StringRelatedField()
    team: serializers.StringRelatedField[Any] = serializers.StringRelatedField(allow_null=True)
    aliases = AliasOutput(many=True, read_only=True)
    version_count = serializers.IntegerField(read_only=True, required=False)
    latest_version = serializers.SerializerMethodField(help_text="the newest version's number (0: none)")
    url = serializers.SerializerMethodField()

    class Meta:
        model = RegisteredModel
        fields = (
            "name",
            "description",
            "owner",
            "team",
            "tags",
            "latest_version",
            "version_count",
            "aliases",
            "created_at",
            "updated_at",
            "url",
        )

    def get_latest_version(self, obj: RegisteredModel) -> int:
        # Lists annotate the newest version that exists; numbers of deleted versions are never reused.
        return int(getattr(obj, "newest_version", obj.latest_version))

    def get_url(self, obj: RegisteredModel) -> str:
        return reverse("api:model-detail", kwargs={"name": obj.name})


class ModelCreateInput(Input):
    name = SlugName()
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=10_000)
    tags = serializers.ListField(child=serializers.CharField(max_length=64), required=False, default=list)


class ModelUpdateInput(Input):
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    tags = serializers.ListField(child=serializers.CharField(max_length=64), required=False)


class ArtifactsOutput(serializers.Serializer[Any]):
    """Download paths of a version's artifacts."""

    onnx = serializers.CharField(allow_null=True, help_text="null until the conversion finished")

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields = super().get_fields()
        fields["source"] = serializers.CharField()  # "source" names an attribute of every field
        return fields


class VersionOutput(serializers.ModelSerializer[ModelVersion]):
    model = serializers.CharField(source="model.name")
    created_by: serializers.StringRelatedField[Any] = serializers.StringRelatedField()
    aliases = serializers.SerializerMethodField()
    artifacts = serializers.SerializerMethodField()
    class_labels = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        read_only=True,
        help_text="each labelled output's class names, in class order",
    )

    class Meta:
        model = ModelVersion
        fields = (
            "model",
            "version",
            "status",
            "status_reason",
            "progress",
            "description",
            "metadata",
            "source_format",
            "source_sha256",
            "source_size",
            "signature",
            "class_labels",
            "onnx_sha256",
            "onnx_size",
            "report",
            "parity_atol",
            "parity_rtol",
            "aliases",
            "artifacts",
            "created_by",
            "created_at",
            "updated_at",
            "conversion_started_at",
            "conversion_finished_at",
        )

    def get_aliases(self, obj: ModelVersion) -> list[str]:
        return sorted(alias.name for alias in obj.aliases.all())

    @extend_schema_field(ArtifactsOutput())
    def get_artifacts(self, obj: ModelVersion) -> dict[str, str | None]:
        kwargs = {"name": obj.model.name, "number": obj.version}
        onnx = reverse("api:version-artifact", kwargs={**kwargs, "kind": "onnx"}) if obj.onnx_path else None
        return {"source": reverse("api:version-artifact", kwargs={**kwargs, "kind": "source"}), "onnx": onnx}


def _tolerance(what: str) -> serializers.FloatField:
    return serializers.FloatField(
        required=False,
        min_value=0.0,
        max_value=PARITY_TOLERANCE_MAX,
        help_text=f"the parity check's {what} for this version (|onnx - reference| <= atol + rtol * "
        "|reference| per element); left out: the platform's (KILN_PARITY_ATOL, KILN_PARITY_RTOL)",
    )


class VersionUploadInput(Input):
    file = serializers.FileField()
    external_data = serializers.FileField(
        required=False,
        help_text="an ONNX model's external data file (torch.onnx.export writes model.onnx.data beside "
        "model.onnx by default): folded into the model, which is stored as one file",
    )
    if_exists = serializers.ChoiceField(
        choices=["new", "existing", "refuse"],
        default="new",
        help_text="when a version has the same bytes: register them again (new), answer that version "
        "(existing, 200) or refuse (409)",
    )
    signature = serializers.CharField(required=False, allow_blank=True, max_length=64 * 1024)
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=10_000)
    metadata = serializers.CharField(required=False, allow_blank=True, max_length=32 * 1024)
    class_labels = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=4 * MAX_LABELS_BYTES,
        help_text="the class names of the first numeric output in class order, one per line or as JSON "
        '(["cat", "dog"]), or JSON lists by output name ({"logits": [...]}); top-k answers '
        f"(classification) carry them; at most {MAX_LABELS_BYTES} bytes of JSON, {MAX_LABEL_CHARS} "
        "characters a label",
    )
    parity_atol = _tolerance("atol")
    parity_rtol = _tolerance("rtol")


class VersionConvertInput(Input):
    parity_atol = _tolerance("atol")
    parity_rtol = _tolerance("rtol")


class VersionUpdateInput(Input):
    description = serializers.CharField(required=False, allow_blank=True, max_length=10_000)
    class_labels = serializers.JSONField(
        required=False,
        help_text="the class names of the first numeric output in class order (a list, or a text of one per "
        'line), or lists by output name ({"logits": [...]}); [] removes them. The version\'s workers '
        "take new labels as a rolling update",
    )


class AliasInput(Input):
    version = serializers.IntegerField(min_value=1)


class AuditEventOutput(serializers.ModelSerializer[AuditEvent]):
    actor = serializers.CharField(source="actor_label")
    model = serializers.CharField(source="model.name", default=None, allow_null=True)

    class Meta:
        model = AuditEvent
        fields = ("id", "created_at", "actor", "action", "subject", "model", "before", "after", "reason")


class VersionUploadOutput(VersionOutput):
    """The version an upload registered (or found), and the earlier version with the same bytes."""

    same_bytes_as = serializers.SerializerMethodField()

    class Meta(VersionOutput.Meta):
        fields: tuple[str, ...] = (*VersionOutput.Meta.fields, "same_bytes_as")  # type: ignore[assignment]

    def get_same_bytes_as(self, obj: ModelVersion) -> int | None:
        """The number of the first other version uploaded with these bytes; null when none."""
        earlier: ModelVersion | None = self.context.get("same_bytes_as")
        return earlier.version if earlier is not None else None


# Query parameters: read by ``config.query.read_query`` and listed in the schema from the same class.
class ModelQuery(serializers.Serializer[Any]):
    search = serializers.CharField(required=False, help_text="substring of name or description")
    tag = serializers.CharField(required=False)
    owner = serializers.CharField(required=False, help_text="owner's username")


class VersionQuery(serializers.Serializer[Any]):
    status = serializers.ChoiceField(choices=VersionStatus.choices, required=False)


class AuditEventQuery(serializers.Serializer[Any]):
    model = serializers.CharField(required=False)
    action = serializers.CharField(required=False)
    actor = serializers.CharField(required=False)
    subject = serializers.CharField(required=False, help_text="prefix, e.g. model/resnet")
