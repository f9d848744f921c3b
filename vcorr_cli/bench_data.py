"""``vcorr bench loader``: parse options, call pipelines.bench.loader."""
from __future__ import annotations

import json
import os

import click


@click.command()
@click.argument("out", type=click.Path(file_okay=False), required=False)
@click.option("--synthetic", type=click.Path(file_okay=False), default=None,
              help="Generate Kinetics-like videos (320x240, 30 fps, 10 s) in this folder, "
                   "prepare them with --every 4 --short-side 128, and benchmark that.")
@click.option("--clips", default=200, show_default=True, help="Clips to time per method.")
@click.option("--frames", default=8, show_default=True, help="Frames per clip.")
@click.option("--interval", default=1, show_default=True, help="Interval between frames.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the numbers to this JSON file.")
def loader(out: str | None, synthetic: str | None, clips: int, frames: int, interval: int,
           json_path: str | None) -> None:
    """Clips/s per core: shard loader vs decord on the fly vs the JPEG-decode floor.

    OUT is a folder written by 'vcorr prepare' whose source videos are still in place.

    \b
    Examples:
      vcorr bench loader data/k400_12 --json bench_loader.json
      vcorr bench loader --synthetic /tmp/bench_data --json bench_loader.json
    """
    from rich.console import Console
    from rich.table import Table

    from pipelines.bench.loader import bench_loader, make_synthetic_dataset
    from pipelines.errors import UserError
    from pipelines.fileio import write_atomic

    if synthetic:
        out = str(make_synthetic_dataset(synthetic))
    if not out:
        raise UserError("give OUT (a prepared folder) or --synthetic DIR")
    r = bench_loader(out, clips=clips, frames=frames, interval=interval)
    t = Table(title=f"loader: {clips} clips of {frames} frames, "
                    f"{r['frame_size'][0]}x{r['frame_size'][1]}, 1 thread ({os.cpu_count()} "
                    "cores on this machine)")
    t.add_column("method")
    t.add_column("clips/s per core", justify="right")
    t.add_column("vs shard loader", justify="right")
    for name, key in (("shard loader (HDF5 read + JPEG decode)", "shard_clips_per_s"),
                      ("shard loader + training augmentation", "shard_augmented_clips_per_s"),
                      ("JPEG decode only (floor)", "jpeg_floor_clips_per_s"),
                      ("decord from source video", "decord_clips_per_s")):
        t.add_row(name, f"{r[key]:.1f}", f"{r[key] / r['shard_clips_per_s']:.2f}x")
    Console().print(t)
    click.echo(f"shard loader is {r['shard_vs_decord']:.1f}x decord (target >= 10x); the floor "
               f"is {r['floor_vs_shard']:.2f}x the shard loader (target <= 1.5x)")
    if json_path:
        write_atomic(json_path, json.dumps(r, indent=2) + "\n")
