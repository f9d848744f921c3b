"""``vcorr demo``: parse options, run :func:`vcorr.pipelines.demo.run_demo` with this CLI's commands."""
from __future__ import annotations

from pathlib import Path

import click


def run_vcorr(args: list[str]) -> None:
    """Run ``vcorr *args`` in this process (what the demo and ``bench learn`` stages call).

    Raises:
        UserError: the command exited with a non-zero code (it printed its one-line error).
    """
    from vcorr.cli.main import cli
    from vcorr.pipelines.errors import UserError

    code = cli.main(args, prog_name="vcorr", standalone_mode=False)
    if code not in (None, 0):
        raise UserError(f"stopped: `vcorr {args[0]}` exited with code {code}")


@click.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("vcorr-demo"),
              show_default=True, help="Output folder (must be new or empty).")
@click.option("--quick", is_flag=True,
              help="600 videos instead of 2000, the same stages (about 2.5 minutes on 2 cores).")
def demo(out_dir: Path, quick: bool) -> None:
    """Run the whole toolkit on the toy dataset: toy -> prepare -> train C2D, C3D, ARTNet, TRN,
    NL and CPNet -> eval (2 clips x 3 crops) -> compare CPNet vs C2D -> visualize CPNet's
    correspondences. Prints each command as it runs it, then the CPNet paper's toy table
    measured here; writes OUT/report.md (table and figures) and OUT/demo.json.

    \b
    Examples:
      vcorr demo
      vcorr demo --quick --out /tmp/demo
    """
    from rich.console import Console
    from rich.table import Table

    from vcorr.pipelines.demo import FULL, QUICK, run_demo

    r = run_demo(out_dir, QUICK if quick else FULL, run_vcorr, echo=click.echo)
    p = r["plan"]
    t = Table(title=f"CPNet toy experiment: {p['videos']} videos, {p['epochs']} epochs "
                    f"({r['seconds']:.0f} s)")
    for col in ("model", "train top-1", f"val top-1 ({p['clips']}x{p['crops']} views)",
                "paper (poster)", "train time"):
        t.add_column(col, justify="right")
    for row in r["rows"]:
        t.add_row(row["label"], f"{100 * row['train_top1']:.1f}%", f"{100 * row['val_top1']:.1f}%",
                  row["paper"], f"{row['train_seconds']:.0f} s")
    console = Console()
    console.print(t)
    for name, path in r["artefacts"].items():
        click.echo(f"{name}: {path}")
