"""Deployment services, split by concept: deployments, variants, batching, workers and reports, routing."""

from deployments.services.alias_moves import on_alias_moved
from deployments.services.autoscaling import policy_of, remove_autoscaling, set_autoscaling
from deployments.services.batching import propose_batching, validate_batching
from deployments.services.deployments import (
    add_variant,
    create_deployment,
    delete_deployment,
    remove_variant,
    set_alias_move_policy,
    set_deployment_running,
)
from deployments.services.rollups import downsample_reports
from deployments.services.routing import build_routing_table, publish_routing_table
from deployments.services.variants import (
    scale_variant,
    set_variant_version,
    update_batching,
)
from deployments.services.workers import (
    authenticate_task,
    authenticate_worker,
    ingest_report,
)

__all__ = (
    "add_variant",
    "authenticate_task",
    "authenticate_worker",
    "build_routing_table",
    "create_deployment",
    "delete_deployment",
    "downsample_reports",
    "ingest_report",
    "on_alias_moved",
    "policy_of",
    "propose_batching",
    "publish_routing_table",
    "remove_autoscaling",
    "remove_variant",
    "scale_variant",
    "set_alias_move_policy",
    "set_autoscaling",
    "set_deployment_running",
    "set_variant_version",
    "update_batching",
    "validate_batching",
)
