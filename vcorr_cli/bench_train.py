"""``vcorr bench train``: parse options, call pipelines.bench.train."""
from __future__ import annotations

import json

import click


@click.command()
@click.argument("data", type=click.Path(file_okay=False), required=False)
@click.option("--synthetic", type=click.Path(file_okay=False), default=None,
              help="Generate and prepare Kinetics-like videos in this folder and use them.")
@click.option("--model", default="c2d_r18", show_default=True, help="Registered model name.")
@click.option("--frames", default=8, show_default=True)
@click.option("--crop", default=112, show_default=True)
@click.option("--batch", default=8, show_default=True, help="Clips per step.")
@click.option("--workers", default=1, show_default=True, help="DataLoader worker processes.")
@click.option("--steps", default=12, show_default=True, help="Timed steps (after 2 warm-up).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the numbers to this JSON file.")
def train(data: str | None, synthetic: str | None, model: str, frames: int, crop: int,
          batch: int, workers: int, steps: int, json_path: str | None) -> None:
    """Training clips/s and the share of step time spent waiting for data.

    DATA is a folder written by 'vcorr prepare' (frames at least CROP px on the short side).

    \b
    Examples:
      vcorr bench train data/k400_12 --model c2d_r18 --json bench_train.json
      vcorr bench train --synthetic /tmp/bench_data --model cpnet_r18 --workers 1
    """
    from rich.console import Console
    from rich.table import Table

    from pipelines.bench.loader import make_synthetic_dataset
    from pipelines.bench.train import bench_train
    from pipelines.errors import UserError
    from pipelines.fileio import write_atomic

    if synthetic:
        data = str(make_synthetic_dataset(synthetic))
    if not data:
        raise UserError("give DATA (a prepared folder) or --synthetic DIR")
    r = bench_train(data, model, frames=frames, crop=crop, batch=batch, workers=workers,
                    steps=steps)
    t = Table(title=f"train {model}: {batch} x {frames}x{crop}x{crop} clips, {workers} "
                    f"worker(s), {r['torch_threads']} torch threads, {r['device']}")
    for col in ("clips/s", "step s (median)", "data wait share", "target"):
        t.add_column(col, justify="right")
    t.add_row(f"{r['clips_per_s']:.2f}", f"{r['step_s_median']:.3f}",
              f"{100 * r['data_wait_share']:.1f}%", "< 10%" + (" met" if r["target_met"] else " MISSED"))
    Console().print(t)
    if json_path:
        write_atomic(json_path, json.dumps(r, indent=2) + "\n")
