"""Registry services: plain functions that take and return model instances.

Split by concept: ``registration`` (models and uploads), ``aliases`` (promotion),
``conversion`` (the ONNX pipeline's database side), ``removal`` (deleting versions and models).
"""

from registry.services.aliases import delete_alias, set_alias
from registry.services.conversion import (
    PARITY_TOLERANCE_MAX,
    ParityTolerance,
    convert_version,
    fail_version,
    request_conversion,
    sweep_stale_conversions,
)
from registry.services.registration import (
    Registration,
    create_model,
    register_version,
    update_model,
    update_version,
)
from registry.services.removal import delete_model, delete_version

__all__ = (
    "PARITY_TOLERANCE_MAX",
    "ParityTolerance",
    "Registration",
    "convert_version",
    "create_model",
    "delete_alias",
    "delete_model",
    "delete_version",
    "fail_version",
    "register_version",
    "request_conversion",
    "set_alias",
    "sweep_stale_conversions",
    "update_model",
    "update_version",
)
