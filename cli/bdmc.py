"""``evalkit bdmc``: bidirectional Monte Carlo bounds on data simulated from the model, with IWAE/JVI beside them."""
from __future__ import annotations

import click

from .common import check_outputs_spare_inputs, command_errors, echo_err, model_options, parse_ks, run_options
from .main import main


def _ints(ctx, param, value):
    return None if value is None else parse_ks(value, param.opts[0])


@main.command("bdmc")
@model_options
@click.option("--n", "n", type=click.IntRange(min=1), default=100, show_default=True,
              help="Datapoints simulated from the model: z ~ p(z), x ~ p(x|z).")
@click.option("--steps", callback=_ints, default="100,1000", show_default=True, metavar="T1,T2,...",
              help="AIS step counts; the gap between the bounds should shrink as T grows.")
@click.option("--chains", type=click.IntRange(min=1), default=16, show_default=True, help="AIS chains per datapoint.")
@click.option("--ks", callback=_ints, default="1,10,100,1000", show_default=True, metavar="K1,K2,...",
              help="Importance samples for IWAE/JVI on the same simulated data.")
@click.option("-e", "--estimator", "estimators", multiple=True, metavar="NAME",
              help="Estimators from q(z|x) to compare (repeat); default: iwae jvi1.")
@click.option("--seed", type=click.IntRange(0, 2**64 - 1), default=0, show_default=True,
              help="Seed of the simulation and of every chain's random streams.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="CPU worker threads, one core each (default: torch's thread count). Does not change the numbers.")
@click.option("--out", type=click.Path(file_okay=False, path_type=str), default=None, metavar="DIR",
              help="Write bdmc.csv, bdmc_per_datapoint.csv, importance.csv and bdmc.png/.svg here.")
@click.option("--overwrite", is_flag=True, default=False, help="Replace existing files in --out.")
@run_options
@command_errors
def bdmc_command(checkpoint, factory, prefix, allow_pickle, n, steps, chains, ks, estimators, seed, device, threads,
                 out, overwrite, quiet, debug):
    """Sandwich log p(x) between AIS lower and upper bounds, and see how far IWAE-K is from it.

    On N datapoints simulated from the model, forward AIS from q(z|x) gives a stochastic lower
    bound on log p(x) and reverse AIS from the generating z an upper bound (Grosse et al. 2015);
    the gap bounds the error of both. IWAE and JVI at each K on the same data show how far
    importance sampling from q(z|x) is from the truth for this model.

    Example:

        evalkit bdmc examples/digits_iwae.pt --n 32 --steps 10,100,1000 --out runs/bdmc
    """
    import evalkit
    from evalkit.output.files import write_bdmc

    if out is not None:
        from evalkit.output.report import check_output_dir

        check_output_dir(_paths(out), overwrite=overwrite)
        check_outputs_spare_inputs([("--out", path) for path in _paths(out).values()], checkpoint, {})
    model = evalkit.load_model(checkpoint, factory=factory, prefix=prefix, allow_pickle=allow_pickle)
    report = evalkit.bdmc(model, n=n, steps=steps, chains=chains, ks=ks, estimators=estimators or ("iwae", "jvi1"),
                          seed=seed, device=None if device == "auto" else device, progress=False if quiet else None,
                          threads=threads)
    click.echo(report.to_table(), nl=False)
    if out is not None:
        write_bdmc(report, out, overwrite=overwrite)
        echo_err(f"wrote {out}", quiet=quiet)


def _paths(out: str) -> dict:
    from pathlib import Path

    return {name: Path(out) / name for name in ("bdmc.csv", "bdmc_per_datapoint.csv", "importance.csv",
                                                "bdmc.png", "bdmc.svg")}
