"""The project's error types: every failure a user can cause raises one, with a one-line message
that names the file or argument, what was expected and what was found. Each is also the builtin
its kind of failure raises (:class:`ValueError`, :class:`TypeError`, ...), so code that catches
those keeps working.
"""

__all__ = ["CheckpointError", "ConfigError", "ConfigTypeError", "DataError", "DataNotFoundError",
           "DataTypeError", "PyroVAEError", "RunFolderError", "TrainingDivergedError"]


class PyroVAEError(Exception):
    """Base class of the errors this package raises on purpose."""

    def __str__(self) -> str:
        # Pyro re-raises a model's ValueError with the trace's shapes appended: show the original
        cause = self.__cause__
        if type(cause) is type(self):
            return str(cause)
        return super().__str__()


class DataError(PyroVAEError, ValueError):
    """Input data is missing, malformed, or outside what the model accepts."""


class DataTypeError(DataError, TypeError):
    """Input data of the wrong type or dtype (a list for a tensor, integers for grey levels)."""


class DataNotFoundError(DataError):
    """A data set's files are nowhere to be found (not installed, not downloaded)."""


class ConfigError(PyroVAEError, ValueError):
    """An argument or configuration value is invalid (caught before any work starts)."""


class ConfigTypeError(ConfigError, TypeError):
    """An argument of the wrong type (a string for a count, a float for an integer)."""


class CheckpointError(PyroVAEError, ValueError):
    """A file is not a pyro_vae checkpoint, or is one of an incompatible format version."""


class TrainingDivergedError(PyroVAEError, FloatingPointError):
    """The loss or the parameters became NaN or infinite during training."""


class RunFolderError(PyroVAEError, ValueError):
    """A run folder cannot be used: another process holds it, it already holds a run, or it
    cannot be written."""
