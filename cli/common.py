"""Option groups and error handling shared by every evalkit command.

The CLI is a shell: each command parses options, calls the public Python API and prints. The
decorators here keep the option names identical across commands; :func:`engine_kwargs` and
:func:`input_kwargs` turn them into keyword arguments of the API.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import sys
import warnings
from typing import Any, Callable, Dict, Optional

import click

from evalkit import _interrupts
from evalkit.errors import EvalkitError

FORMATS = ("table", "json", "csv", "markdown", "latex")


def _compose(*decorators: Callable) -> Callable:
    def apply(f: Callable) -> Callable:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


def _check_factory(ctx, param, value):
    # The shape of MODULE:FUNCTION is usage; whether the module imports is for the library to say.
    if value is None:
        return value
    module, sep, function = value.partition(":")
    names_ok = all(part.isidentifier() for part in module.split(".")) and all(
        part.isidentifier() for part in function.split(".")
    )
    if not sep or ":" in function or not names_ok:
        raise click.BadParameter(
            f"{value!r} is not MODULE:FUNCTION; write it like --model mypackage.models:build_vae"
        )
    return value


def _check_memory_budget(ctx, param, value):
    if value is None:
        return value
    from evalkit.errors import InputError
    from evalkit.sampling.memory import parse_memory_budget

    try:
        parse_memory_budget(value)
    except InputError:
        raise click.BadParameter(f"{value!r} is not a memory size; write it like 512MB or 4GiB") from None
    return value


model_load_options = _compose(
    click.option("--model", "factory", metavar="MODULE:FUNCTION", default=None, callback=_check_factory,
                 help="Build the architecture with this factory; the checkpoint supplies the weights."),
    click.option("--prefix", default=None, metavar="PREFIX",
                 help="Strip this key prefix from the state_dict (e.g. 'model.' for Lightning); auto-detected if omitted."),
    click.option("--allow-pickle", is_flag=True, default=False,
                 help="Allow arbitrary pickles in the checkpoint (only for files you trust)."),
)
"""How a checkpoint is loaded (``--model``, ``--prefix``, ``--allow-pickle``), for commands taking several."""

model_options = _compose(
    click.argument("checkpoint", type=click.Path(dir_okay=True, path_type=str)),
    model_load_options,
)

data_options = _compose(
    click.option("--data", "data", default="digits", show_default=True, metavar="digits|PATH",
                 help="Built-in dataset name or a .npy/.npz/.pt/.csv file, one datapoint per row."),
    click.option("--split", type=click.Choice(["train", "test", "all"]), default=None,
                 help="Split of a built-in dataset (default: test; train for --quantity evidence)."),
    click.option("--binarize", type=click.Choice(["none", "threshold", "bernoulli"]), default="none",
                 show_default=True,
                 help="Binarise the data: threshold at 0.5, or sample Bernoulli once (seeded by --seed)."),
    click.option("--rescale-levels", is_flag=True, default=False,
                 help="Map the built-in digits' 17 grey levels to the model's data_levels "
                      "(v -> floor(v (L-1)/16 + 1/2)); without it a model with other levels refuses the digits."),
    click.option("--quantity", type=click.Choice(["predictive", "evidence"]), default=None,
                 help="For a Bayesian network (weights as the latent variable): the test log predictive "
                      "density log p(y|x) with K weight samples shared by all rows (default), or the evidence "
                      "log p(D) of the split as one row."),
    click.option("--target", default=None, metavar="NAME",
                 help="Key (.npz, .pt) or column (.csv) holding the targets of labelled data (Bayesian networks)."),
    click.option("--prior", default=None, metavar="gaussian:SIGMA|scale_mixture:PI,S1,S2",
                 help="Weight prior of a Bayesian network (the evidence depends on it; default: the library's of "
                      "its layout, see docs/bnn.md), e.g. gaussian:1 or gaussian:0,1 (MEAN,SIGMA)."),
    click.option("--activation", type=click.Choice(["relu", "tanh"]), default=None,
                 help="Activation of a Bayesian network; a state_dict does not record it (default: relu)."),
)

engine_options = _compose(
    click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True,
                 help="Seed of the per-datapoint random streams."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                 help="Where the model runs; auto uses a GPU when one is present."),
    click.option("--batch-size", type=click.IntRange(min=1), default=None,
                 help="Datapoints per step (default: from the memory budget). Does not change the numbers."),
    click.option("--k-chunk", type=click.IntRange(min=1), default=None,
                 help="Samples per datapoint per step (default: from the memory budget). Does not change the numbers."),
    click.option("--memory-budget", default=None, metavar="SIZE", callback=_check_memory_budget,
                 help="Memory the engine may use, e.g. 512MB or 4GiB (default: from free memory)."),
    click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True,
                 help="Model compute precision; reductions are always float64."),
    click.option("--threads", type=click.IntRange(min=1), default=None,
                 help="CPU worker threads, one core each (default: torch's thread count); on a GPU, threads "
                      "drawing noise. Does not change the numbers."),
    click.option("--compile", "compile_model", is_flag=True, default=False,
                 help="Run the model through torch.compile (slow first calls; may change the last bits)."),
    click.option("--tf32", is_flag=True, default=False,
                 help="GPU only: TensorFloat-32 matmuls, faster on Ampere and later, ~1e-3 relative error."),
)

cache_options = _compose(
    click.option("--cache", "cache", type=click.Path(file_okay=False, path_type=str), default=None, metavar="DIR",
                 help="Store the log-weights in DIR as they are computed; re-running the same command after a "
                      "crash or kill resumes where it stopped, with bitwise the same results."),
    click.option("--cache-shard-size", type=click.IntRange(min=1), default=None, metavar="N",
                 help="Datapoints per cache shard (default: at most 16 MiB and 1/8 of the data). "
                      "Does not change the numbers."),
)

method_options = _compose(
    click.option("--method", type=click.Choice(["is", "ais"]), default="is", show_default=True,
                 help="is: importance sampling from q(z|x). ais: annealed importance sampling from q(z|x) to "
                      "p(x, z) with HMC; each of --chains chains per datapoint is a column."),
    click.option("--chains", type=click.IntRange(min=1), default=None,
                 help="AIS chains per datapoint (--method ais, or --reference ais); default 16."),
    click.option("--steps", type=click.IntRange(min=2), default=None,
                 help="AIS annealing steps T (default 1000)."),
    click.option("--schedule", type=click.Choice(["sigmoid", "linear", "geometric"]), default=None,
                 help="AIS schedule of the b_t (default sigmoid)."),
    click.option("--leapfrog", type=click.IntRange(min=1), default=None,
                 help="Leapfrog steps per HMC transition (default 2)."),
    click.option("--init", "ais_init", type=click.Choice(["proposal", "prior"]), default=None,
                 help="Where the AIS chains start: q(z|x) (default) or the prior p(z)."),
)


def ais_settings(params: Dict[str, Any]) -> Dict[str, Any]:
    """The AIS options given on the command line (``chains`` included), without the unset ones."""
    given = {"chains": params.get("chains"), "steps": params.get("steps"), "schedule": params.get("schedule"),
             "leapfrog": params.get("leapfrog"), "init": params.get("ais_init")}
    return {name: value for name, value in given.items() if value is not None}


def method_kwargs(params: Dict[str, Any]) -> Dict[str, Any]:
    """``method`` and ``ais`` for :func:`evalkit.estimate` / ``sweep`` (AIS options need --method ais)."""
    settings = ais_settings(params)
    settings.pop("chains", None)
    if params.get("method", "is") == "ais":
        return {"method": "ais", "ais": settings}
    return {"method": "is"}


run_options = _compose(
    click.option("--quiet", "-q", is_flag=True, default=False, help="No progress bar or messages on stderr."),
    click.option("--debug", is_flag=True, default=False, help="Show the full traceback on errors."),
)


def engine_kwargs(params: Dict[str, Any]) -> Dict[str, Any]:
    """Keyword arguments of :func:`evalkit.log_weights` from parsed engine and run options."""
    import torch

    device = params.get("device", "auto")
    return {
        "batch_size": params.get("batch_size"),
        "k_chunk": params.get("k_chunk"),
        "memory_budget": params.get("memory_budget"),
        "device": None if device in (None, "auto") else device,
        "dtype": torch.float64 if params.get("dtype") == "float64" else torch.float32,
        "threads": params.get("threads"),
        "compile": bool(params.get("compile_model", False)),
        "tf32": bool(params.get("tf32", False)),
        "progress": False if params.get("quiet") else None,
    }


def input_kwargs(params: Dict[str, Any]) -> Dict[str, Any]:
    """Keyword arguments that say how to load the model and the data."""
    return {
        "factory": params.get("factory"),
        "prefix": params.get("prefix"),
        "allow_pickle": params.get("allow_pickle", False),
        "split": params.get("split"),
        "binarize": params.get("binarize", "none"),
        **level_kwargs(params),
        "quantity": params.get("quantity"),
        "target": params.get("target"),
        "prior": params.get("prior"),
        "activation": params.get("activation"),
    }


def level_kwargs(params: Dict[str, Any]) -> Dict[str, Any]:
    """``rescale_levels`` for the API when ``--rescale-levels`` was given (else nothing, so old callers are unchanged)."""
    return {"rescale_levels": True} if params.get("rescale_levels") else {}


def cache_kwargs(params: Dict[str, Any]) -> Dict[str, Any]:
    """Keyword arguments of :func:`evalkit.analysis.estimate` (and ``sweep``) from parsed cache options."""
    return {"cache": params.get("cache"), "cache_shard_size": params.get("cache_shard_size")}


def run_inputs(checkpoint: Optional[str], params: Dict[str, Any], **files: Optional[str]) -> Dict[str, list]:
    """What a run reads, for :func:`evalkit.output.files.check_outputs_are_not_inputs`.

    ``{"inputs": [(name, path), ...], "directories": [(name, path), ...]}``: the CHECKPOINT (with
    the JSON header or safetensors weights beside it), the ``--data`` file (not ``digits``), the
    files given as ``files`` (``log_weights="..."`` is named ``--log-weights``) and the ``--cache``
    directory, each named as the command line spells it.
    """
    import os

    inputs: list = []
    if checkpoint is not None:
        inputs.append(("the checkpoint", checkpoint))
        stem, suffix = os.path.splitext(checkpoint)
        partner = {".safetensors": ".json", ".json": ".safetensors"}.get(suffix.lower())
        if partner is not None:
            inputs.append(("the checkpoint's " + partner[1:] + " file", stem + partner))
    data = params.get("data")
    if checkpoint is not None and data is not None and data != "digits":
        inputs.append(("--data", data))
    inputs += [("--" + name.replace("_", "-"), path) for name, path in files.items() if path is not None]
    cache = params.get("cache")
    return {"inputs": inputs, "directories": [("--cache", cache)] if cache is not None else []}


def check_outputs_spare_inputs(outputs, checkpoint: Optional[str], params: Dict[str, Any], **files: Optional[str]) -> None:
    """Refuse, before the run, an output (``[(option, path), ...]``) that names one of the run's inputs."""
    from evalkit.output.files import check_outputs_are_not_inputs

    check_outputs_are_not_inputs(outputs, **run_inputs(checkpoint, params, **files))


def parse_ks(text: str, option: str = "--ks") -> list:
    """Parse ``"1,2,5,10"`` into ``[1, 2, 5, 10]``; must be positive and strictly increasing.

    ``option`` is the option as the command line spells it (``--ks``, ``--steps``), for the messages.
    """
    try:
        ks = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers, e.g. 1,10,100") from None
    if not ks:
        raise click.BadParameter(f"give at least one value for {option}, e.g. 1,10,100")
    if any(k <= 0 for k in ks):
        raise click.BadParameter(f"every value of {option} must be a positive integer, got {text}")
    if any(b <= a for a, b in zip(ks, ks[1:])):
        raise click.BadParameter(f"the values of {option} must be strictly increasing, got {text}")
    return ks


def echo_err(message: str, *, quiet: bool = False) -> None:
    """A message for the user on stderr (data goes to stdout)."""
    if not quiet:
        click.echo(message, err=True)


@contextlib.contextmanager
def errors_as_messages(debug: bool, device=None):
    """Turn evalkit's errors into one-line CLI errors (exit 1); re-raise them with ``--debug``.

    Under torchrun a failing process first tells the others (:func:`evalkit.sampling.distributed.share_failure`),
    so that none waits in a collective; they exit with its code (:class:`OtherRankError`).
    """
    try:
        yield
    except EvalkitError as exc:
        share_failure(str(exc), getattr(exc, "exit_code", 1), device)
        if debug:
            raise
        raise _message(exc) from None
    except (click.exceptions.Exit, click.exceptions.Abort):
        raise
    except click.ClickException as exc:
        share_failure(exc.format_message(), exc.exit_code, device)
        raise
    except Exception as exc:  # noqa: BLE001 -- a model's own exception, or a bug: still one line
        from evalkit.sampling.distributed import describe

        share_failure(describe(exc), 1, device)
        if debug:
            raise
        raise click.ClickException(describe(exc)) from None
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (evalkit._interrupts.Terminated)
        if debug:
            raise
        from evalkit.sampling import distributed

        if distributed.rank() == 0:  # under torchrun every process is signalled; rank 0 speaks for all
            click.echo(interrupted_message(), err=True)
        sys.exit(_interrupts.exit_code(exc))


def share_failure(message: str, exit_code: int, device=None) -> None:
    """Under torchrun, tell the other processes (perhaps waiting in a collective) that this one
    fails with ``message`` and ``exit_code``; from then on SIGTERM exits with that code."""
    from evalkit.sampling import distributed

    if distributed.launched_by_torchrun():
        _exit_on_sigterm(exit_code)
        distributed.share_failure(message, exit_code, None if device in (None, "auto") else device)


def _exit_on_sigterm(exit_code: int) -> None:
    # The processes now know the failure; torchrun signals those still running when the first
    # exits. Exit with the shared code then, not -15 (main thread only: signals go there).
    import os
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(exit_code))


def _message(exc: EvalkitError) -> click.ClickException:
    """evalkit's sentence as a CLI error; another torchrun process's failure keeps its exit code
    and says which rank it was (rank 0 prints it for all of them)."""
    failed_rank = getattr(exc, "failed_rank", 0)
    error = click.ClickException(f"torchrun rank {failed_rank}: {exc}" if failed_rank else str(exc))
    error.exit_code = getattr(exc, "exit_code", 1)
    return error


def interrupted_message() -> str:
    """The one line printed on Ctrl-C / SIGTERM: how far the run got and how to go on."""
    from evalkit.sampling import progress

    done, total, cache = progress.current()
    if total == 0:
        return "interrupted"
    if cache is not None:
        return (f"interrupted; {done} of {total} datapoints done and kept in the cache {cache!r}; "
                "re-run the same command to continue")
    return (f"interrupted; {done} of {total} datapoints done; "
            "re-run the same command with --cache DIR to continue")


@contextlib.contextmanager
def messages_to_stderr(*, quiet: bool = False, debug: bool = False, silent: bool = False):
    """Show evalkit's warnings as ``warning: <message>`` lines, any other (numpy, torch,
    matplotlib, the user's model) as ``warning: <library>: <first line of the message>``, and
    evalkit's log (resuming from a cache...) as plain lines on stderr; ``--quiet`` hides the log,
    ``--debug`` keeps Python's usual warning format (with file and line); ``silent`` (a torchrun
    process other than rank 0) hides the warnings too."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log = logging.getLogger("evalkit")
    old_level, old_propagate = log.level, log.propagate
    if not quiet:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    try:
        with warnings.catch_warnings():
            if not debug:
                warnings.showwarning = _show_warning
            if quiet or silent:  # --quiet, or a torchrun process other than rank 0
                hide_warnings()
            yield
    finally:
        if not quiet:
            log.removeHandler(handler)
            log.setLevel(old_level)
            log.propagate = old_propagate


def hide_warnings() -> None:
    """``--quiet`` means quiet: no warning line at all, evalkit's (k-hat, data levels, an unconverged
    reference, torch.compile's notes) or a library's; errors and the results still print, and
    a report keeps its warnings in its notes."""
    warnings.simplefilter("ignore")


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    # evalkit's own warnings say what to do and are shown as they are; any other is one short line
    # naming the library, without Python's source line and file path (--debug shows those).
    text = next((part.strip() for part in str(message).splitlines() if part.strip()), category.__name__)
    if category.__module__.split(".")[0] == "evalkit":
        click.echo(f"warning: {text}", err=True)
    else:
        click.echo(f"warning: {warning_library(category, filename, text)}: {text}", err=True)


def warning_library(category: type, filename: str, text: str = "") -> str:
    """The library a warning comes from: its category's package (``matplotlib``...); numpy for a
    floating-point RuntimeWarning ("divide by zero encountered in log"), wherever numpy was
    called from; else the package of the file it names. A builtin category raised from evalkit's
    own lines came from compiled code they called: numpy's RuntimeWarnings, torch's C++ warnings."""
    package = category.__module__.split(".")[0]
    if package not in ("builtins", "warnings", "__main__"):
        return package
    if issubclass(category, RuntimeWarning) and " encountered in " in text:
        return "numpy"
    package = _package_of(filename)
    if package in ("evalkit", "evalkit_cli", "cli", None):  # cli: a checkout's folder
        return "numpy" if issubclass(category, RuntimeWarning) else "torch"
    return package


def _package_of(filename: str):
    """The top-level package or module of a source file on ``sys.path`` (None if on none)."""
    import os

    path = os.path.abspath(filename or "")
    roots = sorted((os.path.abspath(p or ".") for p in sys.path), key=len, reverse=True)
    for root in roots:
        if path.startswith(root.rstrip(os.sep) + os.sep):
            first = path[len(root.rstrip(os.sep)) + 1:].split(os.sep)[0]
            return first[:-3] if first.endswith(".py") else first
    return None


def command_errors(f: Callable) -> Callable:
    """Decorator: run the command body under :func:`errors_as_messages` using its ``debug`` flag,
    with warnings and log messages shown as in :func:`messages_to_stderr`."""

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        from evalkit.sampling import distributed, progress

        debug = kwargs.get("debug", False)
        # Under torchrun rank 0 shows the warnings and messages, once; the other ranks are quiet.
        silent = distributed.rank() != 0
        progress.reset()
        with errors_as_messages(debug, kwargs.get("device")), _interrupts.command(), \
                messages_to_stderr(quiet=kwargs.get("quiet", False) or silent, debug=debug, silent=silent):
            return f(*args, **kwargs)

    return wrapper
