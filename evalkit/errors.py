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


class WeightWarning(UserWarning):
    """Importance weights that cannot be trusted at some datapoints (PSIS k-hat above 0.5 or 0.7).

    :func:`evalkit.estimate` and :func:`evalkit.sweep` issue it once per call, naming the
    datapoints and what to do; the command line prints it on stderr (``--quiet`` hides it).
    Filter it like any warning: ``warnings.simplefilter("ignore", evalkit.errors.WeightWarning)``.
    """


class ReferenceWarning(UserWarning):
    """A sweep's reference (AIS or user-supplied) lies significantly below the IWAE estimate at
    K_max. IWAE is a stochastic lower bound on log p(x), so such a reference cannot be log p(x):
    an AIS reference has not converged (raise its steps), a user reference is not log p(x).
    The measured "bias" is then the reference's error, not IWAE's."""


class DataWarning(UserWarning):
    """Data that a model can evaluate but probably not as meant: image values far below the top of the
    model's ``data_levels`` (17-level data scored as 8-bit images, say).

    :func:`evalkit.estimate` and :func:`evalkit.sweep` issue it once per call, naming the data's
    largest value and the model's levels; the command line prints it on stderr (``--quiet`` hides it).
    """


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes :func:`warnings.warn` name the first caller outside evalkit.

    Call it from the function that issues the warning: the count starts at that function's caller
    (stacklevel 2) and skips every frame inside the ``evalkit`` package, so that a warning raised
    deep inside ``evalkit.sweep`` points at the user's line that called ``evalkit.sweep``.
    """
    import os
    import sys

    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    level, frame = 2, sys._getframe(2)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        level, frame = level + 1, frame.f_back
    return level


def describe_exception(exc: BaseException) -> str:
    """The one sentence that reports an exception: evalkit's own message as it is; any other
    (the model's, a library's, a bug) as ``Type: message (where it was raised)``, so that the
    user learns what failed: a line of their own code (the model, a ``--model`` factory), a
    syntax error in a file, or which stage of evalkit (reading the data, loading the checkpoint,
    computing the log-weights, writing the outputs)."""
    if isinstance(exc, EvalkitError):
        return str(exc)
    text = exc.msg if isinstance(exc, SyntaxError) and exc.msg else exc
    return f"{type(exc).__name__}: {text} ({_where_raised(exc)}); re-run with --debug for the traceback"


_STAGES = (("data" + "/", "while reading the data"), ("models/checkpoint", "while loading the checkpoint"),
           ("models/", "in one of evalkit's models"), ("sampling/", "while computing the log-weights"),
           ("sources/", "while computing the log-weights"), ("output/", "while writing the outputs"),
           ("atomic.py", "while writing the outputs"))


def _where_raised(exc: BaseException) -> str:
    import os
    import sys
    import sysconfig
    import traceback

    if isinstance(exc, SyntaxError) and exc.filename:
        return f"a syntax error in {exc.filename}, line {exc.lineno}"
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    beside = os.path.dirname(package.rstrip(os.sep))  # the command line: evalkit_cli, or a checkout's cli/
    ours = (package, *(os.path.join(beside, name) + os.sep for name in ("evalkit_cli", "cli")))
    libraries = tuple({sysconfig.get_paths()[key] for key in ("stdlib", "purelib", "platlib")} | {sys.base_prefix})
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if not os.path.abspath(f.filename).startswith(ours + libraries)
            and not f.filename.startswith("<")]
    if user:
        last = user[-1]
        return f"raised in {os.path.basename(last.filename)}, line {last.lineno}, in {last.name}"
    inside = [os.path.abspath(f.filename)[len(package):] for f in frames if os.path.abspath(f.filename).startswith(package)]
    for where in reversed(inside):
        for part, stage in _STAGES:
            if where.startswith(part) or part in where:
                return f"raised {stage}"
    return "raised inside the run"
