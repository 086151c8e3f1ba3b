"""``evalkit report``: a self-contained Markdown + HTML report of a sweep over K."""
from __future__ import annotations

import click

from .common import check_outputs_spare_inputs, command_errors, echo_err, run_options
from .main import main
from .sweep import command_line, reference_file, run_sweep, sweep_inputs


@main.command("report")
@sweep_inputs
@click.option("--out", type=click.Path(file_okay=False, path_type=str), required=True, metavar="DIR",
              help="Report directory, e.g. reports/my-model (created if missing).")
@click.option("--title", default=None, help="Report title (default: from the checkpoint name).")
@click.option("--overwrite", is_flag=True, default=False, help="Replace an existing report in --out.")
@run_options
@command_errors
def report_command(checkpoint, log_weights, ks, estimators, reference, fit_min_k, out, title, overwrite, **params):
    """Write report.md and report.html: tables, figures, the command and versions used.

    Runs the same sweep as `evalkit sweep` (same options). report.md links the figures in
    DIR/figures/; report.html embeds them, so the one file is enough to share.

    Example:

        evalkit report examples/digits_iwae.pt --binarize bernoulli --ks 1,2,5,10,20,50,100,200,500,1000 --out reports/digits-example
    """
    from evalkit.sampling import distributed
    from evalkit.output.report import check_output_dir, report_paths

    ctx = click.get_current_context()
    if distributed.rank() == 0:  # fail now, not after the sweep; under torchrun only rank 0 writes
        check_output_dir(report_paths(out), overwrite=overwrite)
        check_outputs_spare_inputs([("--out", path) for path in report_paths(out).values()], checkpoint, params,
                                   log_weights=log_weights, reference=reference_file(reference))
    if checkpoint is not None:  # every process learns the outcome before any computes
        distributed.agree(params.get("device"))
    result = run_sweep(ctx, checkpoint, log_weights, ks, estimators, reference, fit_min_k, params)
    if result is None:  # a torchrun process other than rank 0: its rows went to rank 0
        return
    paths = result.report(out, title=title, command=command_line(), overwrite=overwrite)
    echo_err(f"wrote {paths['report_md']} and {paths['report_html']}", quiet=params["quiet"])
