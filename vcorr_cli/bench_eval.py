"""``vcorr bench eval``: parse options, call pipelines.bench.eval."""
from __future__ import annotations

import json

import click


@click.command(name="eval")
@click.argument("data", type=click.Path(file_okay=False), required=False)
@click.option("--synthetic", type=click.Path(file_okay=False), default=None,
              help="Generate and prepare Kinetics-like videos in this folder and use them.")
@click.option("--split", default=None, help="Split to read [default: val if present].")
@click.option("--model", default="c2d_r18", show_default=True, help="Registered model name.")
@click.option("--clips", default=25, show_default=True)
@click.option("--crops", default="10", show_default=True, type=click.Choice(["1", "3", "6", "10"]))
@click.option("--frames", default=8, show_default=True)
@click.option("--crop", default=112, show_default=True)
@click.option("--short-side", default=128, show_default=True, help="0 keeps the stored size.")
@click.option("--max-views-per-batch", "max_views", default=50, show_default=True)
@click.option("--workers", default=2, show_default=True, help="DataLoader worker processes.")
@click.option("--videos", default=16, show_default=True, help="Timed videos (after warm-up).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the numbers to this JSON file.")
def eval_bench(data: str | None, synthetic: str | None, split: str | None, model: str,
               clips: int, crops: str, frames: int, crop: int, short_side: int, max_views: int,
               workers: int, videos: int, device: str | None, json_path: str | None) -> None:
    """Multi-view evaluation videos/s and the share of time spent outside the model (waiting
    for data, building views, moving them) -- target <= 15% at 25 clips x 10 crops.

    DATA is a folder written by 'vcorr prepare' (frames at least CROP px on the short side
    after --short-side). The model is randomly initialised: only its speed matters.

    \b
    Examples:
      vcorr bench eval data/k400_12 --model c2d_r18 --json bench_eval.json
      vcorr bench eval --synthetic /tmp/bench_data --clips 10 --crops 3 --videos 8
    """
    from rich.console import Console
    from rich.table import Table

    from pipelines.bench.eval import bench_eval
    from pipelines.bench.loader import make_synthetic_dataset
    from pipelines.errors import UserError
    from pipelines.fileio import write_atomic

    if synthetic:
        data = str(make_synthetic_dataset(synthetic))
    if not data:
        raise UserError("give DATA (a prepared folder) or --synthetic DIR")
    r = bench_eval(data, model, split=split, clips=clips, crops=int(crops), frames=frames,
                   crop=crop, short_side=short_side or None, max_views=max_views,
                   workers=workers, videos=videos, device=device)
    t = Table(title=f"eval {model}: {clips} clips x {crops} crops of {frames}x{crop}x{crop}, "
                    f"{r['videos']} videos, {workers} worker(s), {r['device']}")
    for col in ("videos/s", "views/s", "model s", "views s", "data wait s", "outside model",
                "target"):
        t.add_column(col, justify="right")
    t.add_row(f"{r['videos_per_s']:.2f}", f"{r['views_per_s']:.0f}", f"{r['model_s']:.2f}",
              f"{r['views_s']:.2f}", f"{r['data_wait_s']:.2f}",
              f"{100 * r['overhead_share']:.1f}%",
              "<= 15%" + (" met" if r["target_met"] else " MISSED"))
    Console().print(t)
    if json_path:
        write_atomic(json_path, json.dumps(r, indent=2) + "\n")


eval = eval_bench  # registered in vcorr_cli.bench_cmds as ("vcorr_cli.bench_eval", "eval")
