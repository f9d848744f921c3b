"""``vcorr bench knn`` and ``vcorr bench models``: parse options, call pipelines.bench.models
(issue 3)."""
from __future__ import annotations

import json

import click

_THREADS_HELP = ("torch intra-op threads during the run (0: torch's default). 1 gives per-core "
                 "numbers, the least disturbed on a shared machine.")


@click.command()
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
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the numbers to this JSON file.")
def knn(batch: int, channels: int, frames: int, size: int, k: int, repeats: int,
        naive_repeats: int, threads: int, json_path: str | None) -> None:
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

    from pipelines.bench.models import bench_knn
    from pipelines.fileio import write_atomic

    console = Console()
    with console.status("benchmarking the k-NN") as status:
        r = bench_knn(batch=batch, channels=channels, frames=frames, size=size, k=k,
                      repeats=repeats, naive_repeats=naive_repeats, threads=threads,
                      progress=lambda msg: status.update(msg))
    mib = 1 << 20
    t = Table(title=f"k-NN (k={k}, other frames only), B={batch} C={channels} "
                    f"N={frames}x{size}x{size}={r['positions']}, {r['threads']} thread(s)")
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
    if json_path:
        write_atomic(json_path, json.dumps(r, indent=2) + "\n")


@click.command()
@click.option("--models", "model_list", default="cpnet_r18,c2d_r18", show_default=True,
              help="Comma-separated registered models; ratios are against the last one.")
@click.option("--frames", default=8, show_default=True, help="Frames per clip.")
@click.option("--size", default=112, show_default=True, help="Height and width of the clips.")
@click.option("--batch", default=4, show_default=True, help="Clips per training step.")
@click.option("--repeats", default=5, show_default=True,
              help="Timed steps per model (interleaved across models).")
@click.option("--threads", default=1, show_default=True, help=_THREADS_HELP)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the numbers to this JSON file.")
def models(model_list: str, frames: int, size: int, batch: int, repeats: int, threads: int,
           json_path: str | None) -> None:
    """Training step (forward, cross-entropy, backward) time and peak memory of registered
    models on CPU; by default CPNet ResNet-18 vs its C2D baseline at 8x112x112.

    \b
    Examples:
      vcorr bench models
      vcorr bench models --json bench_models.json
      vcorr bench models --models cpnet_r18,nl_c2d_r18,c2d_r18 --batch 2 --repeats 3
    """
    from rich.console import Console
    from rich.table import Table

    from pipelines.bench.models import bench_models, parse_model_list
    from pipelines.fileio import write_atomic

    names = parse_model_list(model_list)
    console = Console()
    with console.status("benchmarking models") as status:
        r = bench_models(names, frames=frames, size=size, batch=batch, repeats=repeats,
                         threads=threads, progress=lambda msg: status.update(msg))
    mib = 1 << 20
    t = Table(title=f"training step on CPU, batch {batch} x {frames}x{size}x{size}, "
                    f"{r['threads']} thread(s), {repeats} runs; base = {r['baseline']}")
    for name in ("model", "params M", "best ms", "median ms", "t/base", "peak MiB", "m/base"):
        t.add_column(name, justify="left" if name == "model" else "right")
    for name in names:
        row = r["results"][name]
        t.add_row(name, f"{row['params'] / 1e6:.2f}", f"{row['step_best_s'] * 1e3:.0f}",
                  f"{row['step_median_s'] * 1e3:.0f}", f"{row['time_ratio']:.2f}",
                  f"{row['peak_bytes'] / mib:.0f}", f"{row['peak_memory_ratio']:.2f}")
    console.print(t)
    click.echo(f"{names[0]} step = {r['time_ratio']:.2f}x {r['baseline']} (median "
               f"{r['time_ratio_median']:.2f}x; target <= {r['target_time_ratio']}x): "
               f"{'met' if r['targets_met'] else 'not met'}; peak memory "
               f"{r['peak_memory_ratio']:.2f}x")
    click.echo(f"memory: {r['memory_method']}")
    if json_path:
        write_atomic(json_path, json.dumps(r, indent=2) + "\n")
