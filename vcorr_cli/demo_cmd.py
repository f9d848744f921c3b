"""``vcorr demo``: parse options, run the motion benchmark's demo plan
(:func:`vcorr.pipelines.bench.learn.run_learn`) or, with ``--toy``, the poster toy
(:func:`vcorr.pipelines.demo.run_demo`) with this CLI's commands."""
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


def echo_learn_result(r: dict, title: str) -> None:
    """Print a motion benchmark's table, its checks and its artefacts (demo, bench learn)."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for col in ("model", "params (M)", "test top-1", "pairs", "controls", "gain vs C2D",
                "drop reversed", "train time"):
        t.add_column(col, justify="right")
    for row in r["rows"].values():
        t.add_row(row["label"], f"{row['params'] / 1e6:.2f}", f"{100 * row['top1']:.1f}%",
                  f"{100 * (row['pair_mean'] or 0):.1f}%",
                  f"{100 * (row['controls'] or 0):.1f}%",
                  f"{100 * (row['pair_gain_over_c2d'] or 0):+.1f}",
                  f"{100 * row['drop_reversed']:+.1f}", f"{row['train_seconds']:.0f} s")
    Console().print(t)
    for c in r["checks"]:
        click.echo(f"{'ok ' if c['holds'] else 'NO '} {c['check']}: {c['measured']}")
    for name, path in r["artefacts"].items():
        click.echo(f"{name}: {path}")


@click.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("vcorr-demo"),
              show_default=True, help="Output folder (must be new or empty).")
@click.option("--quick", is_flag=True,
              help="Smaller: the motion demo on 320 videos for 3 epochs (a smoke run, too short "
                   "to learn); the toy on 600 videos instead of 2000 (about 2.5 minutes).")
@click.option("--toy", is_flag=True,
              help="The CPNet poster's toy experiment instead (a white square moving on black; "
                   "C2D, C3D, ARTNet, TRN, NL C2D and CPNet; about 7 minutes on 2 cores).")
def demo(out_dir: Path, quick: bool, toy: bool) -> None:
    """Does it learn motion? The motion benchmark's quick plan (`vcorr bench learn --quick`,
    about 10 minutes on 2 CPU cores): generate 1200 videos of time-reversal pairs and
    appearance controls, prepare them, train C2D and the three papers' CPU-size models (CPNet,
    CorrNet, DCF), test them in original and reversed frame order, compare each with C2D.
    Prints each command as it runs it, then the table; writes OUT/report.md and
    OUT/learn.json. With --toy: the CPNet poster's toy (toy -> prepare -> train six models ->
    eval -> compare CPNet vs C2D -> visualize CPNet's correspondences), OUT/report.md and
    OUT/demo.json.

    \b
    Examples:
      vcorr demo
      vcorr demo --toy
      vcorr demo --toy --quick --out /tmp/demo
    """
    if not toy:
        from vcorr.pipelines.bench.learn import DEMO, DEMO_QUICK, run_learn

        plan = DEMO_QUICK if quick else DEMO
        r = run_learn(out_dir, plan, run_vcorr, echo=click.echo)
        echo_learn_result(r, f"Does it learn motion? {plan.videos} videos, {plan.epochs} epochs, "
                             f"test split ({r['seconds']:.0f} s)")
        return
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
