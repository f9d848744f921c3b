"""``vcorr bench``: every speed and memory benchmark of vcorr, in one place.

Each subcommand parses its options, calls the benchmark in :mod:`vcorr.pipelines.bench`, prints a
table and, with ``--json FILE``, saves the numbers (written atomically).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from vcorr.pipelines.errors import UserError

json_option = click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
                           help="Write the numbers to this JSON file.")
device_option = click.option(
    "--device", default="cpu", show_default=True,
    help="cpu or cuda (cuda:N): where the benchmark runs; CUDA timings wait for the kernels "
         "(torch.cuda.synchronize) and peak memory is torch.cuda.max_memory_allocated.")
synthetic_option = click.option(
    "--synthetic", type=click.Path(file_okay=False), default=None,
    help="Generate and prepare Kinetics-like videos in this folder and use them.")


def _save_json(result: dict[str, Any], json_path: str | None) -> None:
    """Write a benchmark's numbers to JSON_PATH (atomically), if one was given."""
    if json_path:
        from vcorr.pipelines.fileio import write_atomic

        write_atomic(json_path, json.dumps(result, indent=2) + "\n")


def _data_folder(data: str | None, synthetic: str | None, name: str = "DATA") -> str:
    """The prepared folder to benchmark: DATA, or a synthetic one made in SYNTHETIC.

    Raises:
        UserError: neither was given.
    """
    if synthetic:
        from vcorr.pipelines.bench.loader import make_synthetic_dataset

        return str(make_synthetic_dataset(synthetic))
    if not data:
        raise UserError(f"give {name} (a prepared folder) or --synthetic DIR")
    return data


class _BenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Measure speed and memory of vcorr's components.

    \b
    Examples:
      vcorr bench prepare my_videos/ --workers 2 --json bench_prepare.json
      vcorr bench loader data/toy_h5 --json bench_loader.json
      vcorr bench shards /tmp/many_shards
      vcorr bench index /tmp/index_650k --videos 650000
      vcorr bench signals small_toy.toml /tmp/signals --runs 50
      vcorr bench knn --json bench_knn.json
      vcorr bench models --json bench_models.json
      vcorr bench correlation --json bench_correlation.json
      vcorr bench train data/k400_12 --model c2d_r18
      vcorr bench eval data/k400_12 --model c2d_r18 --clips 25 --crops 10
      vcorr bench predict /tmp/bench_videos --json bench_predict.json
      vcorr bench gpu --out results/bench_gpu
      vcorr bench learn --quick
    """


@bench.command()
@click.argument("out", type=click.Path(file_okay=False), required=False)
@click.option("--synthetic", type=click.Path(file_okay=False), default=None,
              help="Generate Kinetics-like videos (320x240, 30 fps, 10 s) in this folder, "
                   "prepare them with --every 4 --short-side 128, and benchmark that.")
@click.option("--clips", default=200, show_default=True, help="Clips to time per method.")
@click.option("--frames", default=8, show_default=True, help="Frames per clip.")
@click.option("--interval", default=1, show_default=True, help="Interval between frames.")
@json_option
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

    from vcorr.pipelines.bench.loader import bench_loader

    out = _data_folder(out, synthetic, "OUT")
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
    _save_json(r, json_path)


@bench.command(name="prepare")
@click.argument("video_dir", type=click.Path(file_okay=False))
@click.option("--workers", default=2, show_default=True,
              help="Workers of the parallel run (prepare --workers N; N ffmpeg at a time).")
@click.option("--every", default=1, show_default=True, help="Keep every N-th frame.")
@click.option("--short-side", default=128, show_default=True, help="Stored short side (px).")
@click.option("--quality", default=90, show_default=True, help="prepare's JPEG quality.")
@click.option("--qscale", default=3, show_default=True,
              help="ffmpeg's -q:v (its own JPEG scale; bytes per frame are reported).")
@click.option("--repeats", default=2, show_default=True, help="Timed rounds (best kept).")
@json_option
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

    from vcorr.pipelines.bench.prepare import bench_prepare

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
    _save_json(r, json_path)


@bench.command(name="shards")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--shards", default=1000, show_default=True, type=click.IntRange(min=1),
              help="Shards to write (2 videos of 4 tiny frames each) if FOLDER has no index.")
@click.option("--max-open", default=None, type=click.IntRange(min=1),
              help="Shard handles the reader keeps open [default: the loader's bound].")
@json_option
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

    from vcorr.pipelines.bench.shards import make_many_shards, walk_shards
    from vcorr.pipelines.data.shards import MAX_OPEN_SHARDS

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
    _save_json(r, json_path)

@bench.command(name="signals")
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--runs", default=50, show_default=True, type=click.IntRange(min=1),
              help="Interrupted runs (0 and 2 loader workers alternately).")
@click.option("--seed", default=0, show_default=True, help="Seeds the moments and signals.")
@json_option
def signals(config: str, out: str, runs: int, seed: int, json_path: str | None) -> None:
    """Stop signals at random moments: every run must exit within 30 s and resume exactly.

    CONFIG is a small training config with its data.root (a few epochs of a toy model). One
    uninterrupted reference run is made in OUT, then --runs runs of `vcorr train`, each sent
    SIGINT or SIGTERM, to the main process or its whole process group, at a random moment
    (start-up, data loading, steps, validation, checkpoints); each must exit within 30 s with
    the "interrupted" line and no process left, and `--resume` must end at the reference's
    weights, optimiser state and metrics, bit for bit.

    \b
    Examples:
      vcorr bench signals small_toy.toml /tmp/signals --runs 50 --json signals.json
    """
    from vcorr.pipelines.bench.signals import render, run_stress

    r = run_stress(config, out, runs=runs, seed=seed)
    for line in render(r):
        click.echo(line)
    _save_json(r, json_path)


@bench.command(name="index")
@click.argument("folder", type=click.Path(file_okay=False))
@click.option("--videos", default=650_000, show_default=True, type=click.IntRange(min=1),
              help="Rows of the Kinetics-like index to write if FOLDER has no index.csv.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=1),
              help="DataLoader workers (forked) reading rows.")
@click.option("--batch", default=64, show_default=True, type=click.IntRange(min=1),
              help="Videos per batch.")
@click.option("--steps", default=None, type=click.IntRange(min=1),
              help="Batches to read [default: one epoch of the train split].")
@click.option("--rows", "kinds", default="vcorr,dicts", show_default=True,
              help="What to measure, comma-separated: vcorr (the index as vcorr holds it) and "
                   "dicts (the former list of per-video dicts, for reference).")
@click.option("--model", default="c2d_r50", show_default=True,
              help="Model whose construction is timed for scale (\"\" for none).")
@click.option("--workers-per-gpu", default=16, show_default=True, type=click.IntRange(min=1),
              help="Loader workers per training process, for the per-GPU figure.")
@click.option("--gpus-per-node", default=8, show_default=True, type=click.IntRange(min=1),
              help="Training processes per node, for the per-node figure.")
@json_option
def index(folder: str, videos: int, workers: int, batch: int, steps: int | None, kinds: str,
          model: str, workers_per_gpu: int, gpus_per_node: int, json_path: str | None) -> None:
    """Memory and time of the dataset index at scale, per process and per node.

    Writes a Kinetics-like index.csv of --videos rows into FOLDER (unless it holds one; no
    shards: the index is measured, not the reader), then, in a fresh interpreter per --rows
    kind, does what a training process does with it (loads it, builds the train and val
    datasets, reads every row of an epoch through a DataLoader with --workers forked
    workers) and samples each process's RSS, PSS and USS (/proc/<pid>/smaps_rollup, Linux).
    First it times `vcorr inspect FOLDER` without the index cache (it is removed and written
    again) and with it.

    \b
    Examples:
      vcorr bench index /tmp/index_650k --videos 650000
      vcorr bench index /tmp/index_650k --rows vcorr --steps 600 --json bench_index.json
    """
    from rich.console import Console
    from rich.table import Table

    from vcorr.pipelines.bench.index import ROW_KINDS, bench_index, make_index_folder

    rows = tuple(k.strip() for k in kinds.split(",") if k.strip())
    bad = [k for k in rows if k not in ROW_KINDS]
    if bad or not rows:
        raise UserError(f"--rows: {', '.join(bad) or '(none)'}: give some of "
                        f"{', '.join(ROW_KINDS)}")
    if not (Path(folder) / "index.csv").is_file():
        click.echo(f"writing an index of {videos} videos into {folder} ...")
        make_index_folder(folder, videos)
    r = bench_index(folder, rows, workers=workers, batch=batch, steps=steps, model=model,
                    workers_per_gpu=workers_per_gpu, gpus_per_node=gpus_per_node)
    console = Console()
    t = Table(title=f"{r['videos']} videos ({folder}), {workers} forked workers, batch {batch}")
    t.add_column("", style="bold")
    for kind in r["runs"]:
        t.add_column(kind, justify="right")

    def row(label: str, fmt: Any) -> None:
        t.add_row(label, *(fmt(run) for run in r["runs"].values()))

    row("load index / + datasets (s)", lambda x: f"{x['load_s']:.2f}"
        f"{' (cache)' if x['cached'] else ''} / {x['datasets_s']:.2f}")
    row("parse index.csv alone (s)",
        lambda x: "-" if x["parse_s"] is None else f"{x['parse_s']:.2f}")
    row("first batch (s)", lambda x: f"{x['first_batch_s']:.2f}")
    row(f"{model or 'model'} construction (s)",
        lambda x: "-" if x["model_s"] is None else f"{x['model_s']:.2f}")
    row("steps read (s)", lambda x: f"{x['steps']} ({x['epoch_s']:.1f})")
    row("main RSS before -> loaded (MiB)", lambda x: f"{x['main_before']['rss']:.0f} -> "
        f"{x['main_loaded']['rss']:.0f}")
    row("index in main (RSS added, MiB)", lambda x: f"{x['scale']['main']:.0f}")
    row("worker RSS at the end (MiB)", lambda x: f"{x['scale']['worker_rss']:.0f}")
    row("worker PSS first -> last (MiB)", lambda x: f"{x['scale']['worker_pss_first']:.0f} -> "
        f"{x['scale']['worker_pss_last']:.0f}")
    row("worker copied (USS growth, MiB)", lambda x: f"{x['scale']['worker_copied']:.0f}")
    row(f"per GPU: main + {workers_per_gpu} workers (MiB)",
        lambda x: f"{x['scale']['per_gpu']:.0f}")
    row(f"per node: {gpus_per_node} GPUs (GiB)", lambda x: f"{x['scale']['per_node'] / 1024:.1f}")
    console.print(t)
    for kind, run in r["runs"].items():
        trace = ", ".join(f"{step}: {sum(w['pss'] for w in ws) / max(len(ws), 1):.0f}"
                          for step, ws in run["samples"])
        click.echo(f"{kind}: worker PSS (MiB) by step: {trace}")
    for how, m in (r["inspect"] or {}).items():
        click.echo(f"vcorr inspect ({'parsing index.csv' if how == 'parse' else 'index cache'}):"
                   f" {m['seconds']:.1f} s, peak RSS {m['peak_rss_mib']:.0f} MiB")
    _save_json(r, json_path)


_THREADS_HELP = ("torch intra-op threads during the run (0: torch's default). 1 gives per-core "
                 "numbers, the least disturbed on a shared machine.")


@bench.command()
@click.option("--batch", default=8, show_default=True, help="Clips B.")
@click.option("--channels", default=128, show_default=True, help="Feature channels C.")
@click.option("--frames", default=8, show_default=True, help="Frames T.")
@click.option("--size", default=28, show_default=True, help="Height and width H = W of the maps.")
@click.option("-k", "--k", "k", default=8, show_default=True, help="Neighbours per position.")
@click.option("--repeats", default=3, show_default=True,
              help="Timed rounds of the floor and the chunked k-NN (interleaved).")
@click.option("--naive-repeats", default=1, show_default=True,
              help="Timed runs of the naive (B, N, N) k-NN.")
@click.option("--threads", default=1, show_default=True, help=_THREADS_HELP)
@device_option
@json_option
def knn(batch: int, channels: int, frames: int, size: int, k: int, repeats: int,
        naive_repeats: int, threads: int, device: str, json_path: str | None) -> None:
    """CP module k-NN: chunked vs the naive B*N^2 distance matrix vs the bare matmul floor
    (time, peak memory, same neighbours). Defaults: B=8, C=128, 8x28x28 positions, k=8.

    The floor is torch.bmm of (B,N,C)x(B,C,N) into a preallocated output. Needs memory for
    about four B*N^2 float32 matrices (5 GB at the defaults) for the naive run.

    \b
    Examples:
      vcorr bench knn
      vcorr bench knn --json bench_knn.json
      vcorr bench knn --batch 2 --size 14 --repeats 5
    """
    from rich.console import Console
    from rich.table import Table

    from vcorr.pipelines.bench.models import bench_knn

    console = Console()
    with console.status("benchmarking the k-NN") as status:
        r = bench_knn(batch=batch, channels=channels, frames=frames, size=size, k=k,
                      repeats=repeats, naive_repeats=naive_repeats, threads=threads,
                      progress=lambda msg: status.update(msg), device=device)
    mib = 1 << 20
    t = Table(title=f"k-NN (k={k}, other frames only), B={batch} C={channels} "
                    f"N={frames}x{size}x{size}={r['positions']}, {r['device']}, "
                    f"{r['threads']} thread(s)")
    for name in ("method", "best ms", "median ms", "t/floor", "peak MiB", "m/naive matrix"):
        t.add_column(name, justify="left" if name == "method" else "right")
    floor = r["floor_best_s"]
    matrix = r["naive_matrix_bytes"]
    t.add_row("chunked" + (" (oneDNN matmul)" if r["onednn"] else ""),
              f"{r['chunked_best_s'] * 1e3:.1f}", f"{r['chunked_median_s'] * 1e3:.1f}",
              f"{r['time_ratio_vs_matmul']:.2f}", f"{r['chunked_peak_bytes'] / mib:.1f}",
              f"{r['peak_memory_ratio_vs_naive']:.4f}")
    if r["onednn"]:
        t.add_row("chunked (BLAS only)", f"{r['chunked_blas_best_s'] * 1e3:.1f}",
                  f"{r['chunked_blas_median_s'] * 1e3:.1f}",
                  f"{r['blas_time_ratio_vs_matmul']:.2f}", "", "")
    t.add_row("naive B*N^2 matrix", f"{r['naive_best_s'] * 1e3:.1f}",
              f"{r['naive_median_s'] * 1e3:.1f}", f"{r['naive_best_s'] / floor:.2f}",
              f"{r['naive_peak_bytes'] / mib:.1f}", f"{r['naive_peak_bytes'] / matrix:.2f}")
    t.add_row("floor: torch.bmm alone", f"{floor * 1e3:.1f}", f"{r['floor_median_s'] * 1e3:.1f}",
              "1", f"{matrix / mib:.1f}", "1")
    console.print(t)
    a = r["agreement"]
    click.echo(f"same neighbours as the naive matrix: {r['same_neighbours']} "
               f"({a['rows_identical']} of {a['rows']} rows identical; "
               f"{a['rows_differing']} differ, {a['rows_differing_beyond_float32_ties']} beyond "
               f"float32 ties)")
    click.echo(f"time {r['time_ratio_vs_matmul']:.2f}x the matmul floor (target <= "
               f"{r['targets']['time_ratio_vs_matmul']}x; median "
               f"{r['time_ratio_vs_matmul_median']:.2f}x); peak memory "
               f"{r['peak_memory_ratio_vs_naive']:.4f} of the naive matrix's "
               f"{matrix / mib:.0f} MiB (target <= 1/8); targets met: {r['targets_met']}")
    click.echo(f"memory: {r['memory_method']}")
    _save_json(r, json_path)


@bench.command()
@click.option("--models", "model_list", default="cpnet_r18,c2d_r18", show_default=True,
              help="Comma-separated registered models; ratios are against the last one.")
@click.option("--frames", default=8, show_default=True, help="Frames per clip.")
@click.option("--size", default=112, show_default=True, help="Height and width of the clips.")
@click.option("--batch", default=4, show_default=True, help="Clips per training step.")
@click.option("--repeats", default=5, show_default=True,
              help="Timed steps per model (interleaved across models).")
@click.option("--threads", default=1, show_default=True, help=_THREADS_HELP)
@device_option
@click.option("--amp", type=click.Choice(["off", "bf16", "fp16"]), default="off",
              show_default=True, help="Autocast dtype of forward and loss (fp16: CUDA only).")
@click.option("--compile", "with_compile", is_flag=True,
              help="Also time every model under torch.compile (interleaved with eager; the "
                   "first call, which compiles, is the warm-up).")
@click.option("--channels-last", is_flag=True,
              help="Also time every model with channels_last_3d weights and activations.")
@json_option
def models(model_list: str, frames: int, size: int, batch: int, repeats: int, threads: int,
           device: str, amp: str, with_compile: bool, channels_last: bool,
           json_path: str | None) -> None:
    """Training step (forward, cross-entropy, backward) time and peak memory of registered
    models; by default CPNet ResNet-18 vs its C2D baseline at 8x112x112 on the CPU.

    \b
    Examples:
      vcorr bench models
      vcorr bench models --json bench_models.json
      vcorr bench correlation --json bench_correlation.json
      vcorr bench models --models cpnet_r18,nl_c2d_r18,c2d_r18 --batch 2 --repeats 3
      vcorr bench models --compile --channels-last --repeats 5
      vcorr bench models --device cuda --amp bf16 --batch 8 --size 224
    """
    from rich.console import Console
    from rich.table import Table

    from vcorr.pipelines.bench.models import bench_models, parse_model_list

    names = parse_model_list(model_list)
    variants = ["eager"] + (["compile"] if with_compile else []) + (
        ["channels_last"] if channels_last else []) + (
        ["compile+channels_last"] if with_compile and channels_last else [])
    console = Console()
    with console.status("benchmarking models") as status:
        r = bench_models(names, frames=frames, size=size, batch=batch, repeats=repeats,
                         threads=threads, progress=lambda msg: status.update(msg),
                         device=device, amp=amp, variants=variants)
    mib = 1 << 20
    t = Table(title=f"training step on {r['device']}, batch {batch} x {frames}x{size}x{size}, "
                    f"amp {amp}, {r['threads']} thread(s), {repeats} runs; base = {r['baseline']}")
    extra = len(variants) > 1   # the variant, its speed-up against eager, the warm-up time
    short = {"channels_last": "c-last", "compile+channels_last": "compile+c-last"}
    t.add_column("model", no_wrap=True)
    cols = ("variant", "best ms", "median ms", "t/base", "speed-up", "warm-up s",
            "peak MiB") if extra else ("params M", "best ms", "median ms", "t/base",
                                       "peak MiB", "m/base")
    for name in cols:
        t.add_column(name, justify="left" if name == "variant" else "right", no_wrap=True)
    for name in names:
        for v in variants:
            row = r["results"][name]["variants"][v]
            timing = [f"{row['step_best_s'] * 1e3:.0f}", f"{row['step_median_s'] * 1e3:.0f}",
                      f"{row['time_ratio']:.2f}"]
            if extra:
                cells = [short.get(v, v), *timing, f"{row['speedup_vs_first']:.2f}x",
                         f"{row['warmup_s']:.1f}", f"{row['peak_bytes'] / mib:.0f}"]
            else:
                cells = [f"{r['results'][name]['params'] / 1e6:.2f}", *timing,
                         f"{row['peak_bytes'] / mib:.0f}", f"{row['peak_memory_ratio']:.2f}"]
            t.add_row(name, *cells)
    console.print(t)
    for v in variants[1:]:
        click.echo(f"{v} vs {variants[0]}: " + ", ".join(
            f"{n} {r['results'][n]['variants'][v]['speedup_vs_first']:.2f}x (warm-up "
            f"{r['results'][n]['variants'][v]['warmup_s']:.0f} s)" for n in names))
    click.echo(f"{names[0]} step = {r['time_ratio']:.2f}x {r['baseline']} (median "
               f"{r['time_ratio_median']:.2f}x; target <= {r['target_time_ratio']}x): "
               f"{'met' if r['targets_met'] else 'not met'}; peak memory "
               f"{r['peak_memory_ratio']:.2f}x")
    click.echo(f"memory: {r['memory_method']}")
    _save_json(r, json_path)


@bench.command()
@click.option("--batch", default=2, show_default=True, help="Clips per batch.")
@click.option("--channels", default=64, show_default=True, help="Input channels C.")
@click.option("--frames", default=8, show_default=True, help="Frames T.")
@click.option("--size", default=56, show_default=True, help="Height and width of the maps.")
@click.option("--kernel-size", default=7, show_default=True, help="Displacement grid K (odd).")
@click.option("--dilation", default=2, show_default=True, help="Dilation D of the grid.")
@click.option("--group-size", default=32, show_default=True,
              help="Channels per group (G = channels / group size).")
@click.option("--repeats", default=5, show_default=True, help="Timed runs of our operator.")
@click.option("--unfold-repeats", default=3, show_default=True,
              help="Timed runs of the unfold baseline.")
@device_option
@json_option
def correlation(batch: int, channels: int, frames: int, size: int, kernel_size: int,
                dilation: int, group_size: int, repeats: int, unfold_repeats: int,
                device: str, json_path: str | None) -> None:
    """Correlation operator vs the unfold formulation: forward+backward time, peak memory,
    error, and the distance from the arithmetic floor. Defaults: CorrNet-26 res2.

    \b
    Examples:
      vcorr bench correlation
      vcorr bench correlation --json bench_correlation.json
      vcorr bench correlation --channels 128 --frames 4 --size 28 --repeats 10
    """
    from rich.console import Console
    from rich.table import Table

    from vcorr.pipelines.bench.correlation import (
        CorrelationBenchConfig,
        run_correlation_bench,
    )

    cfg = CorrelationBenchConfig(batch=batch, channels=channels, frames=frames, size=size,
                                 kernel_size=kernel_size, dilation=dilation,
                                 group_size=group_size, repeats=repeats,
                                 unfold_repeats=unfold_repeats)
    cfg.validate()
    console = Console()
    with console.status("benchmarking") as status:
        r = run_correlation_bench(cfg, progress=lambda msg: status.update(msg), device=device)

    mib = 1 << 20
    t = Table(title=f"correlation forward+backward, B={batch} C={channels} T={frames} "
                    f"{size}x{size} K={kernel_size} D={dilation} G={cfg.groups}, "
                    f"{r['device']}, {r['threads']} threads")
    # Ratios: time / unfold's, peak memory / unfold's, time / floor's.
    for name in ("method", "best ms", "median ms", "peak MiB", "t/unfold", "m/unfold",
                 "t/floor"):
        t.add_column(name, justify="left" if name == "method" else "right")
    t.add_row("ours", f"{r['ours_best_s'] * 1e3:.1f}", f"{r['ours_median_s'] * 1e3:.1f}",
              f"{r['ours_peak_bytes'] / mib:.1f}", f"{1 / r['speedup_vs_unfold']:.3f}",
              f"{r['peak_memory_ratio_vs_unfold']:.4f}", f"{r['ours_vs_floor']:.2f}")
    t.add_row("unfold", f"{r['unfold_best_s'] * 1e3:.1f}", f"{r['unfold_median_s'] * 1e3:.1f}",
              f"{r['unfold_peak_bytes'] / mib:.1f}", "1", "1", f"{r['unfold_vs_floor']:.2f}")
    t.add_row("floor", f"{r['floor_s'] * 1e3:.1f}", "", "", "", "", "1")
    t.add_row("floor, cache", f"{r['floor_in_cache_s'] * 1e3:.1f}", "", "", "", "",
              f"{r['floor_in_cache_s'] / r['floor_s']:.2f}")
    console.print(t)
    click.echo(
        f"speed-up {r['speedup_vs_unfold']:.1f}x (target >= 3x; best of runs, median "
        f"{r['speedup_vs_unfold_median']:.1f}x); peak memory {r['peak_memory_ratio_vs_unfold']:.4f}"
        f" of unfold's (target <= 0.1), {r['ours_peak_vs_output']:.1f}x the output's size")
    click.echo(f"max abs error vs unfold: output {r['max_abs_error']:.2e}, "
               f"gradients {r['max_abs_grad_error']:.2e}")
    click.echo(
        f"floor: {r['multiply_adds'] / 1e9:.2f} G multiply-adds (fwd + 3 bwd terms) at "
        f"{r['fma_per_s_large'] / 1e9:.2f} G/s (one large addcmul_) = {r['floor_s'] * 1e3:.1f} ms;"
        f" ours takes {r['ours_vs_floor']:.2f}x it; in-cache rate {r['fma_per_s_in_cache'] / 1e9:.2f}"
        f" G/s gives {r['floor_in_cache_s'] * 1e3:.1f} ms ({r['ours_vs_floor_in_cache']:.2f}x)")
    click.echo(f"memory: {r['memory_method']}")
    _save_json(r, json_path)


@bench.command()
@click.argument("data", type=click.Path(file_okay=False), required=False)
@synthetic_option
@click.option("--model", default="c2d_r18", show_default=True, help="Registered model name.")
@click.option("--frames", default=8, show_default=True)
@click.option("--crop", default=112, show_default=True)
@click.option("--batch", default=8, show_default=True, help="Clips per step.")
@click.option("--workers", default=1, show_default=True, help="DataLoader worker processes.")
@click.option("--steps", default=12, show_default=True, help="Timed steps (after 2 warm-up).")
@click.option("--device", default=None,
              help="cpu or cuda (cuda:N) [default: CUDA when present].")
@json_option
def train(data: str | None, synthetic: str | None, model: str, frames: int, crop: int,
          batch: int, workers: int, steps: int, device: str | None,
          json_path: str | None) -> None:
    """Training clips/s and the share of step time spent waiting for data.

    DATA is a folder written by 'vcorr prepare' (frames at least CROP px on the short side).

    \b
    Examples:
      vcorr bench train data/k400_12 --model c2d_r18 --json bench_train.json
      vcorr bench train --synthetic /tmp/bench_data --model cpnet_r18 --workers 1
    """
    from rich.console import Console
    from rich.table import Table

    from vcorr.pipelines.bench.train import bench_train
    from vcorr.pipelines.runtime import resolve_device

    resolve_device(device)   # a CUDA request without CUDA: one line, before any data work
    data = _data_folder(data, synthetic)
    r = bench_train(data, model, frames=frames, crop=crop, batch=batch, workers=workers,
                    steps=steps, device=device)
    t = Table(title=f"train {model}: {batch} x {frames}x{crop}x{crop} clips, {workers} "
                    f"worker(s), {r['torch_threads']} torch threads, {r['device']}")
    for col in ("clips/s", "step s (median)", "data wait share", "target"):
        t.add_column(col, justify="right")
    t.add_row(f"{r['clips_per_s']:.2f}", f"{r['step_s_median']:.3f}",
              f"{100 * r['data_wait_share']:.1f}%", "< 10%" + (" met" if r["target_met"] else " MISSED"))
    Console().print(t)
    _save_json(r, json_path)


@bench.command(name="eval")
@click.argument("data", type=click.Path(file_okay=False), required=False)
@synthetic_option
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
@click.option("--device", default=None,
              help="cpu or cuda (cuda:N) [default: CUDA when present].")
@click.option("--compile", "with_compile", is_flag=True, help="torch.compile the model.")
@json_option
def eval_bench(data: str | None, synthetic: str | None, split: str | None, model: str,
               clips: int, crops: str, frames: int, crop: int, short_side: int, max_views: int,
               workers: int, videos: int, device: str | None, with_compile: bool,
               json_path: str | None) -> None:
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

    from vcorr.pipelines.bench.eval import bench_eval
    from vcorr.pipelines.runtime import resolve_device

    resolve_device(device)   # a CUDA request without CUDA: one line, before any data work
    data = _data_folder(data, synthetic)
    r = bench_eval(data, model, split=split, clips=clips, crops=int(crops), frames=frames,
                   crop=crop, short_side=short_side or None, max_views=max_views,
                   workers=workers, videos=videos, device=device, compile=with_compile)
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
    _save_json(r, json_path)


@bench.command(name="predict")
@click.argument("video_dir", type=click.Path(file_okay=False))
@click.option("--model", default="c2d_r18", show_default=True, help="Registered model name.")
@click.option("--frames", default=8, show_default=True)
@click.option("--crop", default=112, show_default=True)
@click.option("--short-side", default=128, show_default=True, help="0 keeps the decoded size.")
@click.option("--clips", default=1, show_default=True)
@click.option("--crops", default="1", show_default=True, type=click.Choice(["1", "3", "6", "10"]))
@click.option("--every", default=4, show_default=True,
              help="Frames taken every N-th source frame (the training data's rate).")
@click.option("--videos", default=16, show_default=True, help="Timed videos (after 1 warm-up).")
@click.option("--seconds", default=10.0, show_default=True, help="Length of each video.")
@click.option("--fps", default=30, show_default=True, help="Frame rate of the videos.")
@click.option("--size", default="320x240", show_default=True, help="WxH of the videos.")
@click.option("--workers", default=1, show_default=True, help="DataLoader worker processes.")
@click.option("--device", default=None, help="cpu or cuda (cuda:N) [default: CUDA if present].")
@json_option
def predict_bench(video_dir: str, model: str, frames: int, crop: int, short_side: int,
                  clips: int, crops: str, every: int, videos: int, seconds: float, fps: int,
                  size: str, workers: int, device: str | None, json_path: str | None) -> None:
    """Share of `vcorr predict`'s wall time spent outside the model (decoding, resizing, views,
    waiting for workers) on raw videos -- target <= 25% for c2d_r18, 8x112, 1 clip x 1 crop.

    Generates Kinetics-like H.264 videos (noisy testsrc2) in VIDEO_DIR unless they are there.
    The model is randomly initialised: only its speed matters.

    \b
    Examples:
      vcorr bench predict /tmp/bench_videos --json bench_predict.json
      vcorr bench predict /tmp/bench_videos --clips 10 --crops 3 --workers 2
    """
    from rich.console import Console
    from rich.table import Table

    from vcorr.pipelines.bench.predict import bench_predict

    r = bench_predict(video_dir, model, frames=frames, crop=crop, short_side=short_side,
                      clips=clips, crops=int(crops), videos=videos, seconds=seconds, fps=fps,
                      size=size, every=every, workers=workers, device=device)
    t = Table(title=f"predict {model}: {clips} clip(s) x {crops} crop(s) of {frames}x{crop}x"
                    f"{crop}, {r['videos']} videos of {seconds:g} s {size} @ {fps} fps, "
                    f"{workers} worker(s), {r['torch_threads']} torch threads, {r['device']}")
    for col in ("videos/s", "wall s", "model s", "outside model s", "of it: first clips s",
                "outside model", "target"):
        t.add_column(col, justify="right")
    t.add_row(f"{r['videos_per_s']:.2f}", f"{r['wall_s']:.2f}", f"{r['model_s']:.2f}",
              f"{r['outside_model_s']:.2f}", f"{r['first_clips_s']:.2f}",
              f"{100 * r['outside_model_share']:.1f}%",
              "<= 25%" + (" met" if r["target_met"] else " MISSED"))
    Console().print(t)
    _save_json(r, json_path)


@bench.command(name="gpu")
@click.option("--device", default="cuda", show_default=True, help="The GPU (cuda or cuda:N).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="bench_gpu",
              show_default=True, help="Folder for bench_gpu.json and bench_gpu.md.")
@click.option("--overwrite", is_flag=True,
              help="Move earlier results in --out aside (OUT.old-N) instead of stopping.")
@click.option("--data", type=click.Path(file_okay=False), default=None,
              help="A prepared folder for the eval figure [default: synthetic videos].")
@click.option("--repeats", default=5, show_default=True, type=click.IntRange(min=1),
              help="Timed runs of each measurement (best kept; unfold: 3).")
@click.option("--tiny", is_flag=True, hidden=True,
              help="Toy sizes, any device: checks that the script runs (not a measurement).")
def gpu(device: str, out_dir: str, overwrite: bool, data: str | None, repeats: int,
        tiny: bool) -> None:
    """All GPU figures of the README in one run (a few minutes, 8 at most): correlation
    forward+backward (Triton, the PyTorch loop, unfold; fp32 and bf16; CorrNet-26 res2 and
    DCF X3D-S's largest stage), the CP k-NN, bf16 training steps of cpnet_r18 vs c2d_r18 and
    corrnet_26 vs r2plus1d_26 at batch 8, and vcorr eval at 10x3 views. Writes
    OUT/bench_gpu.json and OUT/bench_gpu.md (the README's tables, with the GPU's name).

    \b
    Examples:
      vcorr bench gpu
      vcorr bench gpu --device cuda:1 --out results/bench_gpu_h200 --overwrite
      vcorr bench gpu --data data/k400_12
    """
    from pathlib import Path

    from rich.console import Console

    from vcorr.pipelines.bench.gpu import gpu_markdown, run_gpu_bench
    from vcorr.pipelines.fileio import write_atomic
    from vcorr.pipelines.outputs import check_folder, move_aside
    from vcorr.pipelines.runtime import resolve_device

    resolve_device(device)
    out = Path(out_dir)
    names = ("bench_gpu.json", "bench_gpu.md")
    move_old = check_folder(out, names, overwrite=overwrite,
                            what="the results of an earlier `vcorr bench gpu`")
    console = Console()
    with console.status("benchmarking the GPU") as status:
        r = run_gpu_bench(device, tiny=tiny, data=data, repeats=repeats,
                          progress=lambda msg: status.update(msg))
    table = gpu_markdown(r)
    if move_old:
        move_aside(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "bench_gpu.json", json.dumps(r, indent=2) + "\n")
    write_atomic(out / "bench_gpu.md", table)
    click.echo(table)
    click.echo(f"took {r['seconds']['total']:.0f} s; wrote {out / 'bench_gpu.json'} and "
               f"{out / 'bench_gpu.md'}")


@bench.command()
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("vcorr-learn"),
              show_default=True, help="Output folder (must be new or empty).")
@click.option("--quick", is_flag=True,
              help="1200 videos instead of 3200, one test view instead of three, C2D against "
                   "CPNet, CorrNet and DCF only (about 10 minutes on 2 cores; the full plan "
                   "about 45).")
@click.option("--models", "model_keys", default=None,
              help="Comma-separated model keys (c2d,c3d,r2plus1d,x3d,nl,artnet,cpnet,corrnet,dcf; "
                   "default all but nl and artnet); c2d is required (the baseline).")
@click.option("--videos", type=click.IntRange(min=32), default=None,
              help="Generated videos in all (default 3200, --quick 1200).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs of every model (default 6, --quick 6).")
@click.option("--size", type=click.Choice(["tiny", "full"]), default="tiny", show_default=True,
              help="tiny: the CPU-size models (*_tiny); full: the registered paper sizes (GPU).")
@click.option("--seed", default=0, show_default=True, help="Seed of the videos and training.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Device of training and evaluation [default: CUDA when present].")
def learn(out_dir: Path, quick: bool, model_keys: str | None, videos: int | None,
          epochs: int | None, size: str, seed: int, device: str | None) -> None:
    """Does each model learn motion? Generate the motion dataset (time-reversal pairs and
    appearance controls), prepare it, train every model with one recipe, evaluate on the test
    split in original and reversed frame order, compare each with C2D; writes OUT/report.md,
    OUT/learn.json, OUT/pairs.png and OUT/curves.png.

    \b
    Examples:
      vcorr bench learn --quick
      vcorr bench learn --out results/learn
      vcorr bench learn --models c2d,corrnet --epochs 4 --videos 600
      vcorr bench learn --size full --device cuda --out results/learn_gpu
    """
    import dataclasses

    from vcorr.cli.demo_cmd import echo_learn_result, run_vcorr
    from vcorr.pipelines.bench.learn import FULL, QUICK, run_learn

    plan = QUICK if quick else FULL
    changes: dict[str, Any] = {"size": size, "seed": seed}
    if model_keys:
        changes["models"] = tuple(k.strip() for k in model_keys.split(",") if k.strip())
    if videos:
        changes["videos"] = videos
    if epochs:
        changes["epochs"] = epochs
    plan = dataclasses.replace(plan, **changes)
    r = run_learn(out_dir, plan, run_vcorr, echo=click.echo, device=device)
    echo_learn_result(r, f"Does it learn motion? {plan.videos} videos, {plan.epochs} epochs, "
                         f"test split ({r['seconds']:.0f} s)")
