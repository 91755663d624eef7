"""Query and output serializers of the dashboard's JSON feeds and the serving advice."""

from __future__ import annotations

import math
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from config.api_inputs import Input
from deployments import series
from deployments.api.serializers import BatchingInput
from deployments.measure_models import MeasurementStatus


class LiveNumbersOutput(serializers.Serializer[Any]):
    """What the workers' reports of the last window say (``deployments.series.live_numbers``)."""

    requests = serializers.IntegerField()
    requests_per_s = serializers.FloatField()
    error_rate = serializers.FloatField(allow_null=True)
    latency_p50_ms = serializers.FloatField(allow_null=True)
    latency_p95_ms = serializers.FloatField(allow_null=True)
    latency_p99_ms = serializers.FloatField(allow_null=True)
    mean_batch_size = serializers.FloatField(allow_null=True)
    queue_depth = serializers.IntegerField()
    gpu_utilization = serializers.FloatField(allow_null=True)
    gpu_memory_bytes = serializers.IntegerField(allow_null=True)

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields = super().get_fields()
        # "errors" names a property of every serializer, so it cannot be a class attribute.
        fields["errors"] = serializers.IntegerField(help_text="requests answered with an error")
        return fields


class OverviewVariantOutput(serializers.Serializer[Any]):
    name = serializers.CharField()
    version = serializers.IntegerField()
    weight = serializers.IntegerField()
    shadow = serializers.IntegerField(help_text="percent of live requests copied to it")


class OverviewRowOutput(LiveNumbersOutput):
    name = serializers.CharField()
    model = serializers.CharField()
    status = serializers.CharField()
    replicas_ready = serializers.IntegerField()
    replicas_desired = serializers.IntegerField()
    variants = OverviewVariantOutput(many=True)
    problems = serializers.ListField(child=serializers.CharField())


class OverviewOutput(serializers.Serializer[Any]):
    window_s = serializers.IntegerField()
    deployments = OverviewRowOutput(many=True)


class OverviewQuery(serializers.Serializer[Any]):
    window_s = serializers.FloatField(
        required=False, default=60, min_value=0.001, help_text="seconds; 10 to 3600 (clamped)"
    )


@extend_schema_field({"oneOf": [{"type": "number"}, {"type": "string", "enum": ["+Inf"]}]})
class BoundField(serializers.Field):  # type: ignore[type-arg]
    """An upper bound of a histogram bucket: a number, or "+Inf" for the last, unbounded one."""

    def to_representation(self, value: Any) -> float | str:
        number = float(value)
        return "+Inf" if math.isinf(number) else number


class HistogramOutput(serializers.Serializer[Any]):
    """Upper bounds and one count per bound plus the last, unbounded bucket (empty: no data)."""

    le = serializers.ListField(child=BoundField(), required=False)
    counts = serializers.ListField(child=serializers.IntegerField(), required=False)


def _points(**kwargs: Any) -> serializers.ListField:
    return serializers.ListField(child=serializers.FloatField(allow_null=True), **kwargs)


class VariantSeriesOutput(serializers.Serializer[Any]):
    """One value per bucket of ``t`` (null: no report in it)."""

    requests_per_s = _points()
    latency_p50_ms = _points()
    latency_p95_ms = _points()
    latency_p99_ms = _points()
    queue_depth = _points(help_text="mean queue depth of the reports in the bucket")
    errors_per_s = serializers.DictField(child=_points(), help_text="per error outcome")
    batch_histogram = HistogramOutput()
    replicas = serializers.ListField(child=serializers.IntegerField(), help_text="workers that reported")
    desired_replicas = serializers.ListField(
        child=serializers.IntegerField(), help_text="replicas asked for (the autoscaler's decisions)"
    )


class WorkerSeriesOutput(serializers.Serializer[Any]):
    variant = serializers.CharField()
    state = serializers.CharField()
    node = serializers.CharField(allow_blank=True)
    cpu_percent = _points()
    rss_mb = _points()
    gpu_utilization_percent = _points()
    gpu_memory_mb = _points()


class ShadowNumbersOutput(serializers.Serializer[Any]):
    sent = serializers.IntegerField()
    dropped = serializers.IntegerField()
    compared = serializers.IntegerField()
    argmax_agreement = serializers.FloatField(allow_null=True)
    mean_max_abs_diff = serializers.FloatField(allow_null=True)
    max_abs_diff = serializers.FloatField(allow_null=True)
    shadow_p50_ms = serializers.FloatField(allow_null=True)
    live_p50_ms = serializers.FloatField(allow_null=True)
    shadow_p99_ms = serializers.FloatField(allow_null=True)
    live_p99_ms = serializers.FloatField(allow_null=True)

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields = super().get_fields()
        fields["errors"] = serializers.IntegerField()  # a property of every serializer: not an attribute
        return fields


class GatewayNumbersOutput(serializers.Serializer[Any]):
    requests = serializers.IntegerField()
    responses = serializers.DictField(child=serializers.IntegerField(), help_text="count per status")
    latency_p50_ms = serializers.FloatField(allow_null=True)
    latency_p99_ms = serializers.FloatField(allow_null=True)
    shadow = ShadowNumbersOutput(allow_null=True)


class SeriesOutput(serializers.Serializer[Any]):
    """Time series of one deployment: per variant, per worker, and what the gateways saw."""

    step_s = serializers.IntegerField()
    refresh_s = serializers.IntegerField(help_text="how often a page showing this range asks again")
    last_report = serializers.DateTimeField(allow_null=True, help_text="the newest report in the range")
    t = serializers.ListField(child=serializers.IntegerField(), help_text="bucket starts, Unix seconds")
    variants = serializers.DictField(child=VariantSeriesOutput())
    workers = serializers.DictField(
        child=WorkerSeriesOutput(), help_text="by worker id: the live workers first, then the newest"
    )
    workers_limit = serializers.IntegerField(
        help_text="most workers with lines of their own (KILN_SERIES_MAX_WORKERS); variants count all"
    )
    gateway = serializers.DictField(child=GatewayNumbersOutput(), help_text="by variant")

    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        fields = super().get_fields()
        fields["range"] = serializers.ChoiceField(choices=list(series.RANGES))  # a builtin's name
        return fields


class SeriesQuery(serializers.Serializer[Any]):
    def get_fields(self) -> dict[str, serializers.Field[Any, Any, Any, Any]]:
        return {"range": serializers.ChoiceField(choices=list(series.RANGES), required=False, default="15m")}


class VersionServingOutput(LiveNumbersOutput):
    deployment = serializers.CharField()
    variant = serializers.CharField()
    weight = serializers.IntegerField()
    replicas_ready = serializers.IntegerField()


class VersionLiveOutput(serializers.Serializer[Any]):
    version = serializers.IntegerField()
    serving = VersionServingOutput(many=True)


class AdviceOptionOutput(serializers.Serializer[Any]):
    protocol = serializers.CharField()
    protocol_label = serializers.CharField()
    batch_size = serializers.IntegerField()
    batch_latency_ms = serializers.FloatField()
    codec_ms = serializers.FloatField()
    queue_delay_ms = serializers.FloatField()
    worst_latency_ms = serializers.FloatField()
    p50_latency_ms = serializers.FloatField()
    throughput_rps = serializers.FloatField()
    meets_latency = serializers.BooleanField()
    meets_throughput = serializers.BooleanField()
    meets = serializers.BooleanField()
    measured = serializers.BooleanField(help_text="a running worker with these options was measured")
    measured_throughput_rps = serializers.FloatField(
        allow_null=True, help_text="the most it served with p99 within the budget (null: not measured)"
    )
    measured_p50_ms = serializers.FloatField(allow_null=True)
    measured_p99_ms = serializers.FloatField(allow_null=True)
    measured_concurrency = serializers.IntegerField(allow_null=True, help_text="clients in that cell")
    measured_at = serializers.DateTimeField(allow_null=True)


class MeasuredCellOutput(serializers.Serializer[Any]):
    batching = BatchingInput(help_text="the worker's batching options")
    batch_size = serializers.IntegerField(source="max_batch_size", help_text="its max batch size")
    instances = serializers.IntegerField()
    protocol = serializers.CharField()
    concurrency = serializers.IntegerField()
    throughput_rps = serializers.FloatField()
    p50_ms = serializers.FloatField(allow_null=True)
    p99_ms = serializers.FloatField(allow_null=True)
    failed_requests = serializers.IntegerField(source="errors", help_text="answers other than 200")
    measured_at = serializers.DateTimeField()
    machine = serializers.CharField()


class MeasurementRunOutput(serializers.Serializer[Any]):
    id = serializers.IntegerField()
    status = serializers.ChoiceField(choices=MeasurementStatus.choices)
    progress = serializers.IntegerField(help_text="percent of the cells measured")
    step = serializers.CharField(allow_blank=True)
    error = serializers.CharField(allow_blank=True)
    latency_budget_ms = serializers.FloatField()
    machine = serializers.CharField(allow_blank=True)
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)


class MeasurementsOutput(serializers.Serializer[Any]):
    run = MeasurementRunOutput(allow_null=True, help_text="the latest measurement run (null: never measured)")
    rows = MeasuredCellOutput(many=True)


class MeasurementInput(Input):
    latency_budget_ms = serializers.FloatField(
        required=False,
        min_value=0.1,
        max_value=600_000,
        help_text="the budget the measured batchings are proposed for (default KILN_LATENCY_BUDGET_MS)",
    )


class AdviceOutput(serializers.Serializer[Any]):
    latency_budget_ms = serializers.FloatField()
    target_rps = serializers.FloatField()
    choice = AdviceOptionOutput(allow_null=True)
    instances = serializers.IntegerField()
    replicas = serializers.IntegerField()
    options = AdviceOptionOutput(many=True)
    shortfall = serializers.CharField(allow_blank=True)
    explanation = serializers.CharField(allow_blank=True)
    throughput_basis = serializers.CharField(help_text="where the throughput figures come from")
    measured = serializers.BooleanField(help_text="the choice's figures come from a measured worker")
    measured_at = serializers.DateTimeField(allow_null=True)
    measurements = MeasuredCellOutput(many=True, help_text="every configuration measured for the version")
    measurement = MeasurementRunOutput(allow_null=True, help_text="the latest measurement run")
    deploy = serializers.DictField(
        child=serializers.CharField(), allow_null=True, help_text="the deploy form's query for this advice"
    )
    batching = BatchingInput(allow_null=True, help_text="the batching options to deploy with (the API's)")
    cold_start_s = serializers.FloatField(
        allow_null=True,
        help_text="measured: median seconds from start to ready of this version's last 20 workers (what the "
        "first caller waits on a variant scaled to zero); null until one was ready",
    )


class AdviceQuery(serializers.Serializer[Any]):
    latency_budget_ms = serializers.FloatField(required=False, default=50.0, min_value=0.001, max_value=1e9)
    target_rps = serializers.FloatField(required=False, default=100.0, min_value=0.001, max_value=1e9)
