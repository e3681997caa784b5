"""The one exception hierarchy. The CLI prints `str(error)` on one line and exits non-zero."""


class SlimlineError(Exception):
    """Base of every error slimline raises on purpose.

    `transient` errors (an unreachable store or server) are worth retrying; the rest (a bad
    recipe, a refused checkpoint) fail the same way every time, so orchestrators fail fast.
    """

    exit_code = 1
    transient = False


class ConfigError(SlimlineError):
    """A recipe, settings value or argument is invalid."""

    exit_code = 2


class StoreError(SlimlineError):
    """The object store is unreachable or a key is missing."""

    exit_code = 3
    transient = True


class CheckpointRefused(SlimlineError):
    """A checkpoint failed verification; nothing from it was executed."""

    exit_code = 4


class DataError(SlimlineError):
    """A dataset is missing, malformed or does not match the recipe."""

    exit_code = 5


class TechniqueError(SlimlineError):
    """A compression technique cannot be applied to its input."""

    exit_code = 6


class RegistryError(SlimlineError):
    """The MLflow tracking server or registry refused an operation."""

    exit_code = 7
    transient = True


class OrchestrationError(SlimlineError):
    """An Airflow command failed."""

    exit_code = 8


class DataValidationError(SlimlineError):
    """A dataset split or a predictions file failed its data-quality expectations.

    Exit code 9. Not a DataError (5, the data cannot be read or does not match the recipe):
    here it was read fine but violates an expectation (a leaked eval row, a class share out
    of bounds, a NaN logit), so it fails the same way on every retry.
    """

    exit_code = 9


class GateFailed(SlimlineError):
    """A model version judged again failed at least one gate (`slimline gate check`): not an
    error of the tool, but a distinct exit status a release pipeline can branch on."""

    exit_code = 10


class IncompleteRun(SlimlineError):
    """Some variants of a checkpoint did not finish (a task failed), so nothing of it is published."""

    exit_code = 11


class RunInProgress(SlimlineError):
    """The same work (a checkpoint with a recipe) is being run by another live process.

    Transient: once that process ends, a rerun resumes or reuses what it left.
    """

    exit_code = 12
    transient = True


class EngineError(SlimlineError):
    """An engine cannot be built or loaded here: its runtime is missing, its folder is malformed,
    or the model cannot be built for the target."""

    exit_code = 13


class EngineCheckFailed(SlimlineError):
    """A built engine does not reproduce the registered model on the canary set; not registered."""

    exit_code = 14


class BundleRefused(SlimlineError):
    """A release bundle failed verification: signature, a digest, its expiry or its release number.
    `reason` is what is wrong without naming the folder, for callers that name the release instead."""

    exit_code = 15

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class RolloutAborted(SlimlineError):
    """A rollout stopped on its abort criteria (or did not finish) and the fleet was rolled back."""

    exit_code = 16


class AuditFailed(SlimlineError):
    """The audit log does not verify: a record was edited, deleted, reordered or forged, a signed
    head is missing its records or was not signed by the trusted key. The message names the first
    such record or head."""

    exit_code = 17


class ReleaseIncompatible(BundleRefused):
    """A genuine release holds no engine this device can run; refused before any engine is downloaded."""
