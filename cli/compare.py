"""``evalkit compare``: is model A better than model B on the same data, beyond the noise?"""
from __future__ import annotations

import shlex
import sys
import warnings

import click

from evalkit.errors import WeightWarning

from .common import (FORMATS, cache_kwargs, cache_options, command_errors, data_options, echo_err, engine_kwargs,
                     check_outputs_spare_inputs, engine_options, input_kwargs, method_kwargs, method_options, model_load_options,
                     run_options)
from .estimate import _positive_k, _samples
from .main import main

_FORMAT_ALIASES = {"md": "markdown", "tex": "latex"}


@main.command("compare")
@click.argument("checkpoints", nargs=-1, required=True, type=click.Path(dir_okay=True, path_type=str))
@model_load_options
@data_options
@click.option("-k", "k", type=int, default=5000, show_default=True, callback=_positive_k,
              help="Importance samples per datapoint, the same for every model (with --method ais: --chains).")
@click.option("-e", "--estimator", "estimators", multiple=True, metavar="NAME",
              help="Estimator to compare (repeat for several); default: iwae. See `evalkit estimators`.")
@click.option("--name", "names", multiple=True, metavar="NAME",
              help="Name of each model in the tables, in the order of the checkpoints (default: file stems).")
@method_options
@engine_options
@cache_options
@click.option("--units", type=click.Choice(["nats", "bpd"]), default="nats", show_default=True,
              help="Tables in nats per datapoint or bits per dimension; JSON and CSV are nats.")
@click.option("--format", "fmt", type=click.Choice(FORMATS + tuple(_FORMAT_ALIASES)), default=None,
              help="How to write the comparison (default: from the extension of --output, else table). "
                   "csv is the pairs table.")
@click.option("--output", "-o", type=click.Path(path_type=str), default=None,
              help="Write the comparison to this file instead of stdout; its extension picks the format.")
@click.option("--per-example", type=click.Path(path_type=str), default=None,
              help="Also write every model's per-datapoint values and the differences (CSV, or JSON for .json).")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=str), default=None,
              metavar="DIR", help="Also write a Markdown + HTML report with the figure and the findings into DIR.")
@click.option("--overwrite", is_flag=True, default=False, help="Replace existing output files.")
@run_options
@command_errors
def compare_command(checkpoints, k, estimators, names, fmt, output, per_example, report_dir, overwrite, **params):
    """Compare two or more checkpoints on the same data, with paired standard errors.

    Every model is evaluated as `evalkit estimate` evaluates it, on the same datapoints with the
    same seed (common random numbers where the noise shapes agree). For each pair A, B the
    difference of the means A - B comes with its paired SE (sd of the per-datapoint differences
    over sqrt(N)), its Monte Carlo SE, z and a two-sided p-value; the findings say which model
    is better, or that there is no significant difference.

    Example:

    \b
        evalkit compare examples/digits_iwae.pt examples/digits_iwae_small.pt \\
            --binarize bernoulli -k 1000 --name IWAE-100 --name IWAE-50
    """
    from evalkit.analysis.compare import compare
    from evalkit.output.compare_report import compare_report_paths
    from evalkit.output.files import check_outputs
    from evalkit.output.report import check_output_dir
    from evalkit.sampling import distributed

    if len(checkpoints) < 2:
        raise click.UsageError("give at least two checkpoints to compare, e.g. evalkit compare A.pt B.pt")
    fmt = _format(fmt, output)
    output = None if output == "-" else output
    if distributed.rank() == 0:
        check_outputs({"output": output, "per_example": per_example}, overwrite=overwrite)
        if report_dir is not None:
            check_output_dir(compare_report_paths(report_dir), overwrite=overwrite)
        outputs = [("--output", output), ("--per-example", per_example)] + (
            [("--report", path) for path in compare_report_paths(report_dir).values()] if report_dir is not None else [])
        for checkpoint in checkpoints:  # no output may replace any compared model, the data or the cache
            check_outputs_spare_inputs(outputs, checkpoint, params)
    distributed.agree(params.get("device"))  # every process learns the outcome before any computes
    # As in `evalkit estimate`: the weight warnings come after the results, and --quiet hides them.
    with warnings.catch_warnings(record=True) as weight_warnings:
        warnings.simplefilter("always", WeightWarning)
        try:
            result = compare(list(checkpoints), params["data"], k=_samples(k, params),
                             estimators=estimators or ("iwae",), seed=params["seed"], names=list(names) or None,
                             units=params["units"], **input_kwargs(params), **engine_kwargs(params),
                             **cache_kwargs(params), **method_kwargs(params))
        finally:
            distributed.finish()
            others = [r for r in weight_warnings if not issubclass(r.category, WeightWarning)]
    for record in others:
        warnings.warn_explicit(record.message, record.category, record.filename, record.lineno)
    if result is None:  # a torchrun process other than rank 0
        return
    _write(result, fmt, output, per_example, report_dir, overwrite, params["quiet"])
    for record in weight_warnings:
        if issubclass(record.category, WeightWarning):
            echo_err(f"warning: {record.message}", quiet=params["quiet"])


def _write(result, fmt, output, per_example, report_dir, overwrite, quiet) -> None:
    from evalkit.atomic import atomic_write_text, output_group

    text = result.format(fmt)
    with output_group() as group:  # the run's outputs appear together or not at all
        if output is not None:
            atomic_write_text(output, text if text.endswith("\n") else text + "\n", overwrite=overwrite, group=group)
        if per_example is not None:
            body = (result.per_example.to_json(orient="records", indent=1, double_precision=15)
                    if per_example.endswith(".json") else result.to_csv(which="per_example"))
            atomic_write_text(per_example, body, overwrite=overwrite, group=group)
        if report_dir is not None:
            result.report(report_dir, command=" ".join(shlex.quote(a) for a in ["evalkit"] + sys.argv[1:]),
                          overwrite=overwrite, group=group)
    if report_dir is not None:
        echo_err(f"wrote the report to {report_dir}", quiet=quiet)
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
    else:
        echo_err(f"wrote {output}", quiet=quiet)


def _format(fmt, output) -> str:
    from evalkit.errors import InputError
    from evalkit.output.formats import format_for_path

    try:
        return format_for_path(None if output == "-" else output, _FORMAT_ALIASES.get(fmt, fmt), what="--output")
    except InputError as exc:
        raise click.UsageError(str(exc)) from None
