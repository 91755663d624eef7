"""Input and output serializers of the deployments API."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from config.api_inputs import Input
from deployments import queries
from deployments.api.variant_list import VariantList
from deployments.autoscaling.models import ScalingDecision
from deployments.autoscaling.table import AUTOSCALING
from deployments.backends import BACKEND_NAMES, uses_images
from deployments.inputs import AutoscalingPolicy, VariantSpec, VersionTarget
from deployments.models import (
    AliasMovePolicy,
    Deployment,
    DeploymentStatus,
    Variant,
    Worker,
    WorkerImage,
    WorkerState,
)
from deployments.queries import cold_start_s, recent_decisions, signature_warnings
from deployments.services.images import latest_image_of
from inference_worker.contracts.batching import BATCHING, encode_batching
from inference_worker.contracts.options import Kind, OptionField, whole
from registry.api.serializers import SlugName


class WorkerOutput(serializers.ModelSerializer[Worker]):
    version = serializers.IntegerField(source="version.version")
    metrics_url = serializers.CharField(read_only=True)

    class Meta:
        model = Worker
        fields = (
            "id",
            "state",
            "version",
            "backend",
            "node",
            "slot",
            "http_url",
            "grpc_target",
            "metrics_url",
            "restarts",
            "last_error",
            "started_at",
            "ready_at",
            "last_heartbeat",
            "state_changed_at",
            "next_attempt_at",
        )


class WorkerImageOutput(serializers.ModelSerializer[WorkerImage]):
    """A worker image build: status, progress, the step it is at, and the end of its log."""

    log_tail = serializers.SerializerMethodField()

    class Meta:
        model = WorkerImage
        fields = (
            "tag",
            "status",
            "progress",
            "step",
            "flavour",
            "base_image",
            "worker_code_hash",
            "image_id",
            "reused",
            "error",
            "tries",
            "created_at",
            "started_at",
            "finished_at",
            "log_tail",
        )

    def get_log_tail(self, obj: WorkerImage) -> list[str]:
        return obj.log_tail(40)


class PlacementInput(Input):
    """Where the swarm may run a variant's replicas, in Swarm's syntax."""

    constraints = serializers.ListField(
        child=serializers.CharField(max_length=300),
        required=False,
        help_text="every one must hold on a node, e.g. node.labels.kiln.gpu==true",
    )
    spread = serializers.ListField(
        child=serializers.CharField(max_length=120),
        required=False,
        help_text="node labels to spread replicas evenly over, e.g. node.labels.zone",
    )


def option_field(option: OptionField[Any]) -> serializers.Field[Any, Any, Any, Any]:
    """The input field of one option (batching, autoscaling): type and bounds from its table, not required."""
    low, high = whole(option.low), whole(option.high)
    if option.kind is Kind.INT:
        return serializers.IntegerField(required=False, help_text=option.help, min_value=low, max_value=high)
    if option.kind is Kind.FLOAT:
        return serializers.FloatField(
            required=False, help_text=option.help, min_value=option.low, max_value=option.high
        )
    child = serializers.IntegerField(min_value=low, max_value=high)  # the preferred sizes
    return serializers.ListField(child=child, required=False, help_text=option.help)


class BatchingInput(Input):
    """Any of the batching options; the fields are made from the option table at validation time."""

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        return {option.name: option_field(option) for option in BATCHING.values()}


class ScalingDecisionOutput(serializers.ModelSerializer[ScalingDecision]):
    """One change of replicas by the autoscaler and what it saw."""

    class Meta:
        model = ScalingDecision
        fields = ("created_at", "from_replicas", "to_replicas", "reason", "short_load", "long_load", "idle_s")


class AutoscalingOutput(serializers.Serializer[Any]):
    """A variant's autoscaling policy, its recent decisions and its version's cold start."""

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields = {option.name: option_field(option) for option in AUTOSCALING.values()}
        return {
            **fields,
            "last_scaled_at": serializers.DateTimeField(allow_null=True),
            "last_active_at": serializers.DateTimeField(allow_null=True),
        }


class VariantImageOutput(serializers.Serializer[Any]):
    """A variant's worker image: the tag its workers run and the build of the image wanted now."""

    in_use = serializers.CharField(allow_null=True, help_text="the tag the variant's workers run")
    tag = serializers.CharField(allow_null=True)
    status = serializers.CharField(help_text="the build's status, or 'not requested'")
    log_tail = serializers.ListField(child=serializers.CharField(allow_blank=True), required=False)

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields = super().get_fields()
        for name, field in WorkerImageOutput().get_fields().items():  # a build's fields, when there is one
            if name not in fields:
                field.required = False
                fields[name] = field
        return fields


class EndpointOutput(serializers.Serializer[Any]):
    """The gateway's URLs of a deployment."""

    infer = serializers.CharField(help_text="Open Inference Protocol (v2)")
    predict = serializers.CharField(help_text="KServe v1")
    ready = serializers.CharField()
    grpc = serializers.CharField(
        help_text="the gateway's gRPC target (host:port): each request names the deployment as its model"
    )


class VariantOutput(serializers.ModelSerializer[Variant]):
    version = serializers.IntegerField(source="version.version")
    pinned_version = serializers.IntegerField(source="pinned_version.version", default=None, allow_null=True)
    device = serializers.CharField(read_only=True)
    batching = serializers.SerializerMethodField()
    workers = serializers.SerializerMethodField()
    ready_replicas = serializers.SerializerMethodField()
    image = serializers.SerializerMethodField()
    placement = serializers.SerializerMethodField()
    autoscaling = serializers.SerializerMethodField()
    scaling_decisions = serializers.SerializerMethodField()
    cold_start_s = serializers.SerializerMethodField(
        help_text="median start-to-ready of its version's workers"
    )

    class Meta:
        model = Variant
        fields = (
            "name",
            "role",
            "version",
            "pinned_version",
            "alias",
            "follow_note",
            "weight",
            "shadow_percent",
            "replicas",
            "ready_replicas",
            "device",
            "gpu_ids",
            "backend",
            "placement",
            "image",
            "batching",
            "batching_note",
            "workers",
            "autoscaling",
            "scaling_decisions",
            "cold_start_s",
            "remove_requested_at",
        )

    @extend_schema_field(AutoscalingOutput(allow_null=True))
    def get_autoscaling(self, obj: Variant) -> dict[str, Any] | None:
        policy = getattr(obj, "autoscaling", None)
        return None if policy is None else dict(AutoscalingOutput(policy).data)

    @extend_schema_field(ScalingDecisionOutput(many=True))
    def get_scaling_decisions(self, obj: Variant) -> list[dict[str, Any]]:
        return list(ScalingDecisionOutput(recent_decisions(obj), many=True).data)

    def get_cold_start_s(self, obj: Variant) -> float | None:
        return cold_start_s(obj.version_id)

    @extend_schema_field(BatchingInput())
    def get_batching(self, obj: Variant) -> dict[str, Any]:
        return encode_batching(obj.batching)

    @extend_schema_field(PlacementInput())
    def get_placement(self, obj: Variant) -> dict[str, list[str]]:
        return {"constraints": list(obj.placement_constraints), "spread": list(obj.placement_spread)}

    @extend_schema_field(VariantImageOutput(allow_null=True))
    def get_image(self, obj: Variant) -> dict[str, Any] | None:
        """The worker image: the tag workers run (``in_use``) and the build of the one wanted now."""
        if not uses_images(obj.backend):
            return None
        latest = latest_image_of(obj)
        build = dict(WorkerImageOutput(latest).data) if latest is not None else None
        return {"in_use": obj.image or None, **(build or {"tag": None, "status": "not requested"})}

    def _workers(self, obj: Variant) -> list[Worker]:
        workers = getattr(obj, "visible_workers", None)
        return list(workers) if workers is not None else list(obj.workers.exclude(state="stopped"))

    @extend_schema_field(WorkerOutput(many=True))
    def get_workers(self, obj: Variant) -> list[dict[str, Any]]:
        return list(WorkerOutput(self._workers(obj), many=True).data)

    def get_ready_replicas(self, obj: Variant) -> int:
        return queries.ready_replicas(obj)


class DeploymentOutput(serializers.ModelSerializer[Deployment]):
    model = serializers.CharField(source="model.name")
    created_by: serializers.StringRelatedField[Any] = serializers.StringRelatedField()
    variants = VariantOutput(many=True, read_only=True)
    endpoint = serializers.SerializerMethodField()
    warnings = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = (
            "name",
            "model",
            "description",
            "status",
            "status_reason",
            "warnings",
            "on_alias_move",
            "delete_requested_at",
            "desired_running",
            "endpoint",
            "variants",
            "created_by",
            "created_at",
            "updated_at",
        )

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_warnings(self, obj: Deployment) -> list[str]:
        """Variants whose versions take different requests (another input, dtype or shape)."""
        return signature_warnings(obj)

    @extend_schema_field(EndpointOutput())
    def get_endpoint(self, obj: Deployment) -> dict[str, str]:
        base = settings.KILN_GATEWAY_URL
        return {
            "infer": f"{base}/v2/models/{obj.name}/infer",
            "predict": f"{base}/v1/models/{obj.name}:predict",
            "ready": f"{base}/v2/models/{obj.name}/ready",
            "grpc": settings.KILN_GATEWAY_GRPC_TARGET,
        }


class VariantInput(Input):
    """One variant; builds a ``VariantSpec`` (what is left out is chosen when it is deployed)."""

    class Meta:
        list_serializer_class = VariantList

    name = SlugName(required=False)
    version = serializers.IntegerField(required=False, allow_null=True)
    alias = serializers.CharField(required=False, allow_blank=True, max_length=64)
    replicas = serializers.IntegerField(required=False)
    weight = serializers.IntegerField(required=False)
    device = serializers.JSONField(required=False, help_text="'cpu', 'cuda:0' or a list of GPU ids")
    backend = serializers.CharField(
        required=False,
        max_length=16,
        help_text=f"one of {', '.join(BACKEND_NAMES)} (default: the platform's)",
    )
    batching = BatchingInput(required=False)
    placement = PlacementInput(required=False)

    def spec(self, prefix: str = "") -> VariantSpec:
        return VariantSpec.parse(_given(self.validated_data), prefix=prefix)


def _given(data: Any) -> dict[str, Any]:
    return {k: v for k, v in dict(data).items() if v is not None}


class DeploymentCreateInput(Input):
    name = SlugName()
    model = serializers.CharField(max_length=64)
    description = serializers.CharField(required=False, allow_blank=True, default="", max_length=5000)
    latency_budget_ms = serializers.FloatField(required=False, min_value=0.1, max_value=60_000)
    on_alias_move = serializers.ChoiceField(
        choices=AliasMovePolicy.choices,
        default="rollout",
        help_text="when the alias of a variant carrying traffic moves: rollout, immediate (forced) or manual",
    )
    variants = VariantInput(many=True)

    def specs(self) -> list[VariantSpec]:
        return [
            VariantSpec.parse(_given(raw), prefix=f"variants[{i}].")
            for i, raw in enumerate(self.validated_data["variants"])
        ]


class AliasMovePolicyInput(Input):
    on_alias_move = serializers.ChoiceField(choices=AliasMovePolicy.choices)


class ScaleInput(Input):
    replicas = serializers.IntegerField()


class AutoscalingInput(serializers.Serializer[Any]):
    """Any of the autoscaling options; those left out keep the current policy's value (or the default)."""

    unknown_fields_refused = True  # by AutoscalingPolicy.parse, naming the option

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        return {option.name: option_field(option) for option in AUTOSCALING.values()}

    def policy(self, base: AutoscalingPolicy | None) -> AutoscalingPolicy:
        """The policy asked for; an option the table does not know is refused, not ignored."""
        given = self.initial_data if isinstance(self.initial_data, dict) else {}
        unknown = {name: None for name in given if name not in AUTOSCALING}
        return AutoscalingPolicy.parse({**unknown, **self.validated_data}, base=base)


class VersionInput(Input):
    version = serializers.IntegerField(required=False, allow_null=True)
    alias = serializers.CharField(required=False, allow_blank=True, max_length=64)

    def target(self) -> VersionTarget:
        return VersionTarget.parse(self.validated_data)


class DeploymentQuery(serializers.Serializer[Any]):
    model = serializers.CharField(required=False, help_text="the model's name")
    status = serializers.ChoiceField(choices=DeploymentStatus.choices, required=False)


class WorkerLogsQuery(serializers.Serializer[Any]):
    tail = serializers.IntegerField(required=False, default=200, min_value=1, max_value=2000)


class WorkerLogsOutput(serializers.Serializer[Any]):
    """The last lines a worker printed (empty before it started)."""

    worker = serializers.IntegerField()
    state = serializers.ChoiceField(choices=WorkerState.choices)
    lines = serializers.ListField(child=serializers.CharField(allow_blank=True))


class ReportAcceptedOutput(serializers.Serializer[Any]):
    accepted = serializers.BooleanField()
    report = serializers.IntegerField(help_text="the stored report's id")
