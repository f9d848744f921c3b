"""``vcorr runs``: training runs compared in one table; parse options, call
:mod:`vcorr.pipelines.runs`."""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.command()
@click.argument("run_dirs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list (one object per run) on stdout instead of the table.")
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="Also write a PNG of the runs' validation curves overlaid (val top-1 and "
                   "val loss against epochs).")
@click.option("--overwrite", is_flag=True,
              help="Replace an existing --plot file (the old one is moved aside to "
                   "NAME.old-N).")
def runs(run_dirs: tuple[Path, ...], as_json: bool, plot: Path | None,
         overwrite: bool) -> None:
    """Compare training runs (folders written by `vcorr train --out`): model, parameters
    (M2 = 2^20), GMACs of one evaluation clip, data, clip length x crop, best and last
    validation top-1/top-5, epochs done, training wall time and clips/s.

    Best is the validation with the highest top-1 (what best.pt holds). A folder that is not
    a run is an error (exit code 2). With --json the objects also hold the full data path,
    model.args, the peak memory (MiB) and the exact figures; redirect it to save a file.

    \b
    Examples:
      vcorr runs runs/toy_c2d runs/toy_cpnet
      vcorr runs runs/* --plot val_curves.png
      vcorr runs runs/a runs/b --json > runs.json
    """
    from rich.console import Console

    from vcorr.pipelines.runs import compare_runs, render_runs

    rows = compare_runs(run_dirs, plot, overwrite=overwrite)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        render_runs(rows, Console())
    if plot is not None:
        click.echo(f"wrote {plot}", err=as_json)  # stdout stays one JSON document
