"""The autoscaling policy's options: one field each (kind, unit, bounds, default, help).

The typed input (``deployments.inputs.AutoscalingPolicy``), the API's input serializer, the
web form and the CLI read their bounds and defaults here. Delays may be as short as a second
so tests and benchmarks run in seconds; the defaults are for production.
"""

from __future__ import annotations

from typing import Any

from inference_worker.contracts.options import Kind, OptionField, OptionTable

MIN_REPLICAS = OptionField(
    "min_replicas", Kind.INT, 1, "replicas kept without load (0: stop every worker after the idle time)",
    unit="replicas", low=0, high=64,
)  # fmt: skip
MAX_REPLICAS = OptionField(
    "max_replicas", Kind.INT, 4, "replicas the autoscaler never goes beyond",
    unit="replicas", low=1, high=64,
)  # fmt: skip
TARGET_IN_FLIGHT = OptionField(
    "target_in_flight", Kind.FLOAT, 4.0,
    "requests in flight per replica the autoscaler aims for (Knative's concurrency target)",
    unit="requests", low=0.1, high=10_000, label="Target in-flight requests per replica",
)  # fmt: skip
UPSCALE_DELAY_S = OptionField(
    "upscale_delay_s", Kind.FLOAT, 5.0, "short window: the load averaged over it adds replicas",
    unit="s", low=0.5, high=600, label="Upscale delay",
)  # fmt: skip
DOWNSCALE_DELAY_S = OptionField(
    "downscale_delay_s", Kind.FLOAT, 120.0,
    "long window: replicas go only when the load averaged over it, and the time since the last change, allow",
    unit="s", low=1, high=3600, label="Downscale delay",
)  # fmt: skip
IDLE_BEFORE_ZERO_S = OptionField(
    "idle_before_zero_s", Kind.FLOAT, 600.0,
    "with a minimum of 0: time without any request before the last replica stops",
    unit="s", low=1, high=86_400, label="Idle time before zero",
)  # fmt: skip

AUTOSCALING = OptionTable(
    MIN_REPLICAS, MAX_REPLICAS, TARGET_IN_FLIGHT, UPSCALE_DELAY_S, DOWNSCALE_DELAY_S, IDLE_BEFORE_ZERO_S
)
"""The policy's options, in the order pages show them."""


def defaults() -> dict[str, Any]:
    return {name: option.default for name, option in AUTOSCALING.items()}
