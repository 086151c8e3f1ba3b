"""Exception types.

Every error evalkit raises for bad input is one sentence that says what is wrong and how to
fix it. The CLI turns :class:`EvalkitError` into a one-line message and a non-zero exit code
(no traceback unless ``--debug``); Python users can catch the specific classes below.
Input errors also derive from :class:`ValueError` so that ``except ValueError`` keeps working.
"""


class EvalkitError(Exception):
    """Base class of every error evalkit raises on purpose."""


class InputError(EvalkitError, ValueError):
    """An argument or input value is invalid (bad k, unknown estimator name, NaN log-weights...)."""


class CheckpointError(InputError):
    """A checkpoint cannot be found, read, recognised or loaded into a model."""


class DataError(InputError):
    """A dataset cannot be found or read, or does not fit the model."""


class ResourceError(EvalkitError):
    """The requested device or memory budget cannot be used (no GPU, budget below one sample...)."""


class OutputError(EvalkitError):
    """An output cannot be written (directory not writable, file exists without overwrite...)."""
