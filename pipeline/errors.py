"""Errors a step raises for a reason a user can act on (printed without a traceback)."""

from pipeline.redaction import redact


class PipelineError(RuntimeError):
    """Base class: the message names the problem (registered secrets are redacted from it)."""

    def __init__(self, *args: object) -> None:
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class IngestError(PipelineError):
    """Some locations failed after retries; the others were written."""


class ArtifactIntegrityError(PipelineError):
    """A model artifact does not match the sha256 in its metadata: it is never loaded."""


class RegistryError(PipelineError):
    """No champion, unknown version, or nothing to roll back to."""


class MissingInputError(PipelineError):
    """A step's input does not exist yet (run the step before it)."""


class TrainingError(PipelineError):
    """The models cannot be fitted on this data with these settings (the message says why)."""


class CatchingUpError(PipelineError):
    """An ingestion is catching the raw store up: training would read a half-filled store."""


class LocationsMismatch(PipelineError):
    """params.yaml's locations disagree with the stations of the CSV source's files."""
