"""Errors a step raises for a reason a user can act on (printed without a traceback)."""


class PipelineError(RuntimeError):
    """Base class: the message names the problem."""


class IngestError(PipelineError):
    """Some locations failed after retries; the others were written."""


class ArtifactIntegrityError(PipelineError):
    """A model artifact does not match the sha256 in its metadata: it is never loaded."""


class RegistryError(PipelineError):
    """No champion, unknown version, or nothing to roll back to."""


class MissingInputError(PipelineError):
    """A step's input does not exist yet (run the step before it)."""
