"""Deployment errors, all ``PlatformError`` subclasses."""

from config.errors import ConflictError, NotFoundError, PlatformError


class InvalidDeploymentError(PlatformError):
    """A field of a deployment or variant is invalid; the message names it."""

    default_code = "invalid"


class DeploymentNotFoundError(NotFoundError):
    """No deployment has this name."""


class VariantNotFoundError(NotFoundError):
    """The deployment has no such variant."""


class RolloutNotFoundError(NotFoundError):
    """The deployment has no such rollout (or traffic change)."""


class NotReadyError(ConflictError):
    """A variant has no ready replica, so it cannot take traffic (or start a rollout) yet."""

    default_code = "not_ready"


class RolloutStateError(ConflictError):
    """The rollout, or the deployment's rollout in progress, does not allow this now."""

    default_code = "wrong_state"


class DuplicateDeploymentError(ConflictError):
    """A deployment (or a variant of one) with this name exists already."""

    default_code = "duplicate"


class DeploymentBusyError(ConflictError):
    """A reconcile pass held the deployment for too long to change it now."""

    default_code = "busy"


class WorkerAuthError(PlatformError):
    """A report came with a missing or wrong worker token."""

    http_status = 401
    default_code = "not_authenticated"


class ImageBuildError(PlatformError):
    """A worker image could not be built; the message says which stage failed, the build log the rest."""

    default_code = "image_build_failed"


class MeasurementError(PlatformError):
    """A serving-advice measurement could not run: the worker did not start, refused the sample request..."""

    default_code = "measurement_failed"


class MeasurementBusyError(ConflictError):
    """The version is being measured already (one run at a time each)."""

    default_code = "measurement_running"
