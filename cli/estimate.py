"""``evalkit estimate``: log p(x) estimates with standard errors for one checkpoint."""
from __future__ import annotations

import warnings

import click

from evalkit.errors import WeightWarning

from .common import (FORMATS, ais_settings, cache_kwargs, cache_options, check_outputs_spare_inputs, command_errors,
                     data_options, echo_err,
                     engine_kwargs, engine_options, input_kwargs, method_kwargs, method_options, model_options,
                     run_options)
from .main import main
from .units import units_kwargs, units_options


def _positive_k(ctx, param, value):
    if value is not None and value <= 0:
        raise click.BadParameter(f"{value} is not a positive number of samples per datapoint; use e.g. -k 5000")
    return value


def _log_weights_suffix(ctx, param, value):
    if value is not None and not value.endswith((".npy", ".pt")):
        raise click.BadParameter(f"{value!r} must end in .npy or .pt (the format is chosen by the suffix)")
    return value


@main.command("estimate")
@model_options
@data_options
@click.option("-k", "k", type=int, default=5000, show_default=True, callback=_positive_k,
              help="Importance samples per datapoint (with --method ais: --chains instead).")
@click.option("-e", "--estimator", "estimators", multiple=True, metavar="NAME",
              help="Estimator to report (repeat for several); default: elbo iwae jvi1 jvi2 dvi. "
                   "See `evalkit estimators`.")
@method_options
@engine_options
@cache_options
@units_options
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="How to write the summary (default: from the extension of --output: .json .csv .md .tex "
                   ".txt; else table). Must agree with that extension.")
@click.option("--output", "-o", type=click.Path(path_type=str), default=None,
              help="Write the summary to this file instead of stdout ('-' is stdout); its extension picks the format.")
@click.option("--per-example", type=click.Path(path_type=str), default=None,
              help="Also write one row per datapoint: JSON if the name ends in .json, else CSV.")
@click.option("--save-log-weights", type=click.Path(path_type=str), default=None,
              callback=_log_weights_suffix,
              help="Also save the [N, K] float64 log-weights (.npy or .pt).")
@click.option("--overwrite", is_flag=True, default=False, help="Replace existing output files.")
@run_options
@command_errors
def estimate_command(checkpoint, k, estimators, fmt, output, per_example, save_log_weights, overwrite, **params):
    """Estimate mean log p(x) of a checkpoint's model on a dataset.

    Draws K importance samples per datapoint and reports each estimator's mean over the
    data with its standard error over datapoints and its Monte Carlo standard error,
    followed by importance-weight diagnostics (ESS, PSIS k-hat).

    Example:

        evalkit estimate examples/digits_iwae.pt --data digits --binarize bernoulli -k 1000

    Image models: --units bpd prints bits per dimension (JSON always has both units).

    With --cache DIR a long run can be killed and re-run: it continues where it stopped.

    Several processes or GPUs: `torchrun --nproc_per_node N -m evalkit estimate ...` splits
    the datapoints between them; rank 0 prints and writes the same result as one process.
    """
    from evalkit.sampling import distributed
    from evalkit.output.files import check_outputs, write_estimate_outputs

    _check_distinct({"--output": output, "--per-example": per_example, "--save-log-weights": save_log_weights})
    output = None if output == "-" else output  # `-o -` is stdout, where the summary goes anyway
    outputs = {"output": output, "per_example": per_example, "log_weights": save_log_weights}
    fmt = _formats(fmt, output, per_example)
    # Fail before the (possibly long) run if an output cannot be written. Under torchrun only
    # rank 0 writes and checks; every process learns the outcome before any computes.
    if distributed.rank() == 0:
        check_outputs(outputs, overwrite=overwrite)
        check_outputs_spare_inputs([("--output", output), ("--per-example", per_example),
                                    ("--save-log-weights", save_log_weights)], checkpoint, params)
    distributed.agree(params.get("device"))
    # The weight warning is shown after the results (and hidden by --quiet); other warnings as they come.
    with warnings.catch_warnings(record=True) as weight_warnings:
        warnings.simplefilter("always", WeightWarning)
        try:
            result = _estimate(checkpoint, k, estimators, save_log_weights, params)
        finally:
            others = [r for r in weight_warnings if not issubclass(r.category, WeightWarning)]
    for record in others:
        warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)
    if result is None:  # a torchrun process other than rank 0: its rows went to rank 0
        return
    text = result.format(fmt)
    write_estimate_outputs(result, outputs, text=text, overwrite=overwrite)
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        echo_err(f"wrote {output}", quiet=params["quiet"])
    # stdout holds the results only; the weight warning goes to stderr after them (--quiet hides it).
    for record in weight_warnings:
        if issubclass(record.category, WeightWarning):
            echo_err(f"warning: {record.message}", quiet=params["quiet"])


def _estimate(checkpoint, k, estimators, save_log_weights, params):
    from evalkit.analysis.estimate import DEFAULT_ESTIMATORS, estimate
    from evalkit.sampling import distributed

    k = _samples(k, params)
    try:
        return estimate(
            checkpoint,
            params["data"],
            k=k,
            estimators=estimators or DEFAULT_ESTIMATORS,
            seed=params["seed"],
            keep_log_weights=save_log_weights is not None,
            **input_kwargs(params),
            **engine_kwargs(params),
            **cache_kwargs(params),
            **method_kwargs(params),
            **units_kwargs(params),
        )
    finally:
        distributed.finish()


def _samples(k: int, params) -> int:
    """Columns per datapoint: -k for importance sampling, --chains (default 16) for AIS."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    if params.get("method") == "ais":
        if ctx.get_parameter_source("k") == ParameterSource.COMMANDLINE:
            raise click.UsageError("with --method ais the columns are the chains: give --chains C instead of -k")
        return ais_settings(params).get("chains", 16)
    if ais_settings(params):
        raise click.UsageError("--chains, --steps, --schedule, --leapfrog and --init apply to --method ais")
    return k


def _formats(fmt, output, per_example) -> str:
    # A conflicting --format and file extension is usage (exit 2), seen before anything runs.
    from evalkit.errors import InputError
    from evalkit.output.formats import format_for_path

    try:
        chosen = format_for_path(output, fmt, what="--output")
        if per_example is not None:
            format_for_path(per_example, None, default="csv", allowed=("csv", "json"), what="--per-example")
    except InputError as exc:
        raise click.UsageError(str(exc)) from None
    return chosen


def _check_distinct(named) -> None:
    # Two options naming one file, or two writing to stdout, is usage (exit 2); whether a file
    # can be written is checked next. Without -o the summary itself goes to stdout.
    from evalkit.atomic import output_key

    seen = {} if named["--output"] is not None else {"<stdout>": "the summary (stdout without -o)"}
    for flag, path in named.items():
        if path is None:
            continue
        key = output_key(path)
        if key == "<stdout>" and key in seen:
            raise click.UsageError(f"{seen[key]} and {flag} {path!r} both write to stdout; "
                                   "give one of them a file name")
        if key in seen:
            raise click.UsageError(f"{seen[key]} and {flag} name the same file {path!r}; give each its own name")
        seen[key] = f"{flag} {path!r}" if key == "<stdout>" else flag
