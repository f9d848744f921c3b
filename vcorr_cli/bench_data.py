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


@click.command(name="prepare")
@click.argument("video_dir", type=click.Path(file_okay=False))
@click.option("--workers", default=2, show_default=True,
              help="Workers of the parallel run (prepare --workers N; N ffmpeg at a time).")
@click.option("--every", default=1, show_default=True, help="Keep every N-th frame.")
@click.option("--short-side", default=128, show_default=True, help="Stored short side (px).")
@click.option("--quality", default=90, show_default=True, help="prepare's JPEG quality.")
@click.option("--qscale", default=3, show_default=True,
              help="ffmpeg's -q:v (its own JPEG scale; bytes per frame are reported).")
@click.option("--repeats", default=2, show_default=True, help="Timed rounds (best kept).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the numbers to this JSON file.")
def prepare_bench(video_dir: str, workers: int, every: int, short_side: int, quality: int,
                  qscale: int, repeats: int, json_path: str | None) -> None:
    """Videos/s and frames/s per core: 'vcorr prepare' vs the ffmpeg command line.

    Every video under VIDEO_DIR is decoded, downsampled (--every), resized to --short-side and
    stored as JPEG, by 'vcorr prepare' (--workers 1 and N) and by one ffmpeg process per video
    with one thread (one and N at a time), in the same run.

    \b
    Examples:
      vcorr bench prepare my_videos/ --workers 2 --json bench_prepare.json
    """
    from rich.console import Console
    from rich.table import Table

    from pipelines.bench.prepare import bench_prepare
    from pipelines.fileio import write_atomic

    r = bench_prepare(video_dir, workers=workers, every=every, short_side=short_side,
                      quality=quality, qscale=qscale, repeats=repeats)
    t = Table(title=f"prepare: {r['videos']} videos, {r['frames_kept']} frames kept, short side "
                    f"{short_side} px, JPEG ({r['cpu_count']} cores on this machine)")
    for col in ("method", "seconds", "videos/s", "frames/s", "frames/s per core"):
        t.add_column(col, justify="left" if col == "method" else "right")
    names = {"prepare_workers_1": "vcorr prepare --workers 1 (command, start-up included)",
             f"prepare_workers_{workers}": f"vcorr prepare --workers {workers}",
             "ffmpeg_parallel_1": "ffmpeg command line, one at a time, 1 thread",
             f"ffmpeg_parallel_{workers}": f"ffmpeg command line, {workers} at a time"}
    for key, name in names.items():
        x = r["rates"][key]
        t.add_row(name, f"{x['seconds']:.2f}", f"{x['videos_per_s']:.2f}",
                  f"{x['frames_per_s']:.0f}", f"{x['frames_per_s_per_core']:.0f}")
    Console().print(t)
    inside = r["prepare_seconds_inside"]
    click.echo("time inside prepare (after start-up): " + ", ".join(
        f"--workers {k.rsplit('_', 1)[1]}: {v:.2f} s" for k, v in inside.items()))
    click.echo("prepare vs ffmpeg (>1: prepare faster): " + ", ".join(
        f"{n} at a time: {v:.2f}x (after start-up {r['prepare_inside_vs_ffmpeg'][n]:.2f}x)"
        for n, v in r["prepare_vs_ffmpeg"].items())
        + f"; --workers {workers} is {r['workers_speedup']:.2f}x --workers 1")
    click.echo("bytes per stored frame: " + ", ".join(
        f"{k} {v:.0f}" for k, v in r["bytes_per_frame"].items()))
    if json_path:
        write_atomic(json_path, json.dumps(r, indent=2) + "\n")


@click.command(name="shards")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--shards", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Shards to write (2 videos of 4 tiny frames each) if FOLDER has no index.")
@click.option("--max-open", default=None, type=click.IntRange(min=1),
              help="Shard handles the reader keeps open [default: the loader's bound].")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the numbers to this JSON file.")
def shards(folder: str, shards: int, max_open: int | None, json_path: str | None) -> None:
    """Open files and resident memory of one loader process walking many shards.

    Writes a dataset of --shards tiny shards into FOLDER (unless it holds one already), reads
    one clip of every video in shard order, and prints open file descriptors and RSS every
    100 shards: with the reader's bound both stay flat; --max-open equal to --shards shows
    the unbounded reader for comparison.

    \b
    Examples:
      vcorr bench shards /tmp/many_shards
      vcorr bench shards /tmp/many_shards --max-open 1000
    """
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from pipelines.bench.shards import make_many_shards, walk_shards
    from pipelines.data.shards import MAX_OPEN_SHARDS
    from pipelines.fileio import write_atomic

    if not (Path(folder) / "index.csv").is_file():
        make_many_shards(folder, shards)
    r = walk_shards(folder, max_open=max_open or MAX_OPEN_SHARDS)
    t = Table(title=f"{r['videos']} videos in {r['shards']} shards, reader keeps "
                    f"{r['max_open']} open")
    for col in ("shards walked", "open fds", "RSS MiB", "open shards", "cached offsets"):
        t.add_column(col, justify="right")
    for walked, fds, rss, n_open, n_off in r["samples"]:
        t.add_row(str(walked), str(fds), f"{rss:.1f}", str(n_open), str(n_off))
    Console().print(t)
    click.echo(f"from {r['samples'][1][0]} to {r['shards']} shards: open fds "
               f"{r['fds_growth']:+d}, RSS {r['rss_growth_mib']:+.1f} MiB")
    if json_path:
        write_atomic(json_path, json.dumps(r, indent=2) + "\n")
