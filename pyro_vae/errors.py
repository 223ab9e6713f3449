"""The project's error types.

Every failure that a user can cause (a bad file, a bad argument, a run that diverges) raises
one of these, with a message that names the file or argument, what was expected and what was
found. The command line turns them into a one-line message and a non-zero exit status.
"""

__all__ = [
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DataNotFoundError",
    "PyroVAEError",
    "RunFolderError",
    "TrainingDivergedError",
]


class PyroVAEError(Exception):
    """Base class of the errors this package raises on purpose."""


class DataError(PyroVAEError, ValueError):
    """Input data is missing, malformed, or outside what the model accepts."""


class DataNotFoundError(DataError):
    """A data set's files are nowhere to be found (not installed, not downloaded)."""


class ConfigError(PyroVAEError, ValueError):
    """An argument or configuration value is invalid (caught before any work starts)."""


class CheckpointError(PyroVAEError, ValueError):
    """A file is not a pyro_vae checkpoint, or is one of an incompatible format version."""


class TrainingDivergedError(PyroVAEError, FloatingPointError):
    """The loss or the parameters became NaN or infinite during training."""


class RunFolderError(PyroVAEError, ValueError):
    """A run folder cannot be used: another process holds it, it already holds a run, or it
    cannot be written."""
