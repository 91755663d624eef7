"""Registry errors, all subclasses of ``config.errors.PlatformError``."""

from config.errors import ConflictError, NotFoundError, PayloadTooLargeError, PlatformError


class InvalidArtifactError(PlatformError):
    """The uploaded file is not an accepted model format, or cannot be opened safely."""

    default_code = "invalid_artifact"


class InvalidSignatureError(PlatformError):
    """The input/output signature is malformed or disagrees with the artifact."""

    default_code = "invalid_signature"


class InvalidLabelsError(PlatformError):
    """Class labels that are malformed or do not fit the version's outputs."""

    default_code = "invalid_labels"


class ArtifactTooLargeError(PayloadTooLargeError):
    """The upload is over ``KILN_MAX_UPLOAD_BYTES``."""

    default_code = "artifact_too_large"


class ModelNotFoundError(NotFoundError):
    """No registered model has this name."""


class VersionNotFoundError(NotFoundError):
    """The model has no such version."""


class AliasNotFoundError(NotFoundError):
    """The model has no such alias."""


class VersionStateError(ConflictError):
    """The version is not in a state that allows this (e.g. converting an already converting one)."""

    default_code = "wrong_state"


class DuplicateModelError(ConflictError):
    """A model with this name exists already."""

    default_code = "duplicate"


class DuplicateUploadError(ConflictError):
    """The model has a version with the same bytes, and the caller asked not to register them again."""

    default_code = "duplicate_upload"


class VersionInUseError(ConflictError):
    """A version (or model) to delete is still used: by an alias, a deployment, a worker, a job."""

    default_code = "in_use"
