"""``evalkit sweep``: bias, variance and weight diagnostics over K from one sample pool.

The inputs are shared with ``evalkit report`` (:data:`sweep_inputs`, :func:`run_sweep`): either a
CHECKPOINT (the model is run once at K_max) or ``--log-weights FILE`` with a precomputed
``[N, K]`` matrix from any tool, never both.
"""
from __future__ import annotations

import shlex
import sys
from typing import Any, Dict, Optional

import click
from click.core import ParameterSource

from .common import (ais_settings, cache_kwargs, cache_options, check_outputs_spare_inputs, command_errors,
                     data_options, echo_err, engine_kwargs, engine_options, input_kwargs, method_kwargs,
                     method_options, model_options, parse_ks, run_options)
from .main import main
from .units import units_kwargs, units_options

SWEEP_FORMATS = ("table", "json", "csv", "markdown")

#: Options that only mean something when a model is run (refused with --log-weights).
MODEL_ONLY = ("factory", "prefix", "allow_pickle", "data", "split", "binarize", "rescale_levels", "quantity", "target", "prior", "activation", "method",
              "chains", "steps", "schedule", "leapfrog", "ais_init", "seed", "device", "batch_size",
              "k_chunk", "memory_budget", "dtype", "cache", "cache_shard_size")


def _checkpoint_optional(f):
    # model_options declares CHECKPOINT as required; here --log-weights may replace it.
    for param in getattr(f, "__click_params__", []):
        if isinstance(param, click.Argument) and param.name == "checkpoint":
            param.required = False
    return f


def _ks(ctx, param, value):
    return None if value is None else parse_ks(value, param.opts[0])


def _compose(*decorators):
    def apply(f):
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return apply


sweep_inputs = _compose(
    _checkpoint_optional,  # listed first, so it runs last, after model_options added CHECKPOINT
    model_options,
    click.option("--log-weights", "log_weights", type=click.Path(exists=True, dir_okay=False, path_type=str),
                 default=None, metavar="FILE",
                 help="Sweep a precomputed [N, K] log-weight matrix (.npy, .npz, .pt, .csv) instead of a CHECKPOINT."),
    data_options,
    click.option("--ks", callback=_ks, default=None, metavar="K1,K2,...",
                 help="Sample sizes, strictly increasing, e.g. 1,2,5,10,100,1000,5000; the largest is the pool "
                      "size K_max. Default: 1-2-5 ladder up to 5000 (or up to the width of --log-weights)."),
    click.option("-e", "--estimator", "estimators", multiple=True, metavar="NAME",
                 help="Estimator to sweep (repeat for several); default: iwae jvi1 jvi2. See `evalkit estimators`."),
    click.option("--reference", default=None, metavar="NUMBER|FILE|ais",
                 help="log p(x) to measure bias against when the model has no exact one: a number, a "
                      "file with one value per datapoint (.npy, .pt, .csv, .txt), or 'ais' (annealed importance "
                      "sampling on the same data; --chains, --steps, ... set it). Default: the least biased "
                      "estimator at K_max, labelled as such."),
    click.option("--fit-min-k", type=click.IntRange(min=1), default=10, show_default=True,
                 help="Smallest K used by the a + b/K + c/K^2 extrapolation."),
    method_options,
    engine_options,
    cache_options,
    units_options,
)


def run_sweep(ctx: click.Context, checkpoint: Optional[str], log_weights: Optional[str], ks, estimators,
              reference: Optional[str], fit_min_k: int, params: Dict[str, Any]):
    """Check the input choice, then call :func:`evalkit.analysis.sweep`; shared by ``sweep`` and ``report``."""
    from evalkit.analysis.sweep import DEFAULT_ESTIMATORS, load_log_weights, sweep

    if checkpoint is None and log_weights is None:
        raise click.UsageError("give a CHECKPOINT to evaluate, or --log-weights FILE with precomputed log-weights")
    if checkpoint is not None and log_weights is not None:
        raise click.UsageError("give a CHECKPOINT or --log-weights FILE, not both")
    from evalkit.sampling import distributed

    if params.get("quiet"):  # --quiet hides the weight warning here as in `estimate` (the report keeps it)
        import warnings

        from evalkit.errors import WeightWarning

        warnings.filterwarnings("ignore", category=WeightWarning)
    common = dict(ks=ks, estimators=estimators or DEFAULT_ESTIMATORS, reference=_reference(reference),
                  fit_min_k=fit_min_k, **units_kwargs(params))
    if log_weights is not None:
        given = [name for name in MODEL_ONLY
                 if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise click.UsageError(f"{flag} applies to a CHECKPOINT only; drop it when sweeping --log-weights")
        if distributed.launched_by_torchrun():
            raise click.UsageError("--log-weights needs no model pass to share; run it as one process, not under torchrun")
        return sweep(load_log_weights(log_weights), threads=params.get("threads"),
                     progress=False if params.get("quiet") else None, **common)
    common.update(_annealing(common, params))
    try:
        return sweep(checkpoint, seed=params["seed"], data=params["data"], **common, **input_kwargs(params),
                     **cache_kwargs(params), **engine_kwargs(params))
    finally:
        distributed.finish()


def command_line() -> str:
    """The command as typed (``evalkit ...``), for reports."""
    return shlex.join(["evalkit", *sys.argv[1:]])


def _annealing(common: Dict[str, Any], params: Dict[str, Any]) -> Dict[str, Any]:
    """``method``/``ais`` (and the pool's ks) for --method ais, ``reference_ais`` for --reference ais."""
    from evalkit.analysis.diagnostics import ladder

    settings = ais_settings(params)
    if common["reference"] == "ais":
        if params.get("method") == "ais":
            raise click.UsageError("--reference ais compares importance sampling with AIS; drop --method ais")
        return {"reference_ais": settings}
    if params.get("method") != "ais":
        if settings:
            raise click.UsageError("--chains, --steps, --schedule, --leapfrog and --init apply to --method ais "
                                   "or --reference ais")
        return {}
    chains = settings.get("chains", 16)
    ks = common["ks"] or ladder(chains)
    if ks[-1] != chains and "chains" in settings:
        raise click.UsageError(f"with --method ais the pool is the {chains} chains; the largest of --ks must be {chains}")
    return {"ks": ks, **method_kwargs(params)}


def reference_file(text: Optional[str]) -> Optional[str]:
    """The file ``--reference`` names, if it names one (not a number, not ``ais``)."""
    reference = _reference(text)
    return reference if isinstance(reference, str) and reference != "ais" else None


def _reference(text: Optional[str]):
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text  # "ais" or a file path; evalkit.analysis.sweep reads and checks it


@main.command("sweep")
@sweep_inputs
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default=None, metavar="DIR",
              help="Write the table (CSV, JSON, Markdown), theory, fits, per-datapoint weights and figures here.")
@click.option("--figures", "figure_formats", default="png,svg,pdf", show_default=True, metavar="FORMATS",
              help="Figure formats written to --out (any of png, svg, pdf).")
@click.option("--per-datapoint", is_flag=True, default=False,
              help="Also write per_datapoint.csv (group mean and variance per datapoint, estimator and K).")
@click.option("--format", "fmt", type=click.Choice(SWEEP_FORMATS), default="table", show_default=True,
              help="How to print the table on stdout.")
@click.option("--overwrite", is_flag=True, default=False, help="Replace existing files in --out.")
@run_options
@command_errors
def sweep_command(checkpoint, log_weights, ks, estimators, reference, fit_min_k, out, figure_formats,
                  per_datapoint, fmt, overwrite, **params):
    """Bias, variance and RMSE of estimators over K, from ONE pool of K_max samples.

    Draws K_max = max(--ks) samples per datapoint once and evaluates every estimator at every K
    on floor(K_max / K) disjoint groups, against the exact log p(x) when the model has one,
    else --reference, else the best estimate at K_max (labelled so). Adds IWAE theory curves,
    an a + b/K + c/K^2 extrapolation and PSIS k-hat per datapoint.

    Example:

        evalkit sweep examples/digits_iwae.pt --binarize bernoulli --ks 1,10,100,1000 --out runs/sweep

        evalkit sweep --log-weights log_w.npy --reference -85.2 --out runs/sweep
    """
    from evalkit.output.plots import check_formats
    from evalkit.output.report import check_output_dir, sweep_paths

    from evalkit.sampling import distributed

    ctx = click.get_current_context()
    formats = check_formats(figure_formats)
    if out is not None and distributed.rank() == 0:  # fail now, not after the sweep; only rank 0 writes
        paths = sweep_paths(out, formats=formats, per_datapoint=per_datapoint)
        check_output_dir(paths, overwrite=overwrite)
        check_outputs_spare_inputs([("--out", path) for path in paths.values()], checkpoint, params,
                                   log_weights=log_weights, reference=reference_file(reference))
    if checkpoint is not None:  # under torchrun every process learns the outcome before any computes
        distributed.agree(params.get("device"))
    result = run_sweep(ctx, checkpoint, log_weights, ks, estimators, reference, fit_min_k, params)
    if result is None:  # a torchrun process other than rank 0: its rows went to rank 0
        return
    text = result.format(fmt)
    click.echo(text, nl=not text.endswith("\n"))
    if out is not None:
        result.save(out, formats=formats, per_datapoint=per_datapoint, overwrite=overwrite)
        echo_err(f"wrote {out}", quiet=params["quiet"])
