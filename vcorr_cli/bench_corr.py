"""``vcorr bench correlation``: parse options, call pipelines.bench.correlation (issue 4)."""
from __future__ import annotations

import json

import click


@click.command()
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
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Write the numbers to this JSON file.")
def correlation(batch: int, channels: int, frames: int, size: int, kernel_size: int,
                dilation: int, group_size: int, repeats: int, unfold_repeats: int,
                json_path: str | None) -> None:
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

    from pipelines.bench.correlation import CorrelationBenchConfig, run_correlation_bench
    from pipelines.fileio import write_atomic

    cfg = CorrelationBenchConfig(batch=batch, channels=channels, frames=frames, size=size,
                                 kernel_size=kernel_size, dilation=dilation,
                                 group_size=group_size, repeats=repeats,
                                 unfold_repeats=unfold_repeats)
    cfg.validate()
    console = Console()
    with console.status("benchmarking") as status:
        r = run_correlation_bench(cfg, progress=lambda msg: status.update(msg))

    mib = 1 << 20
    t = Table(title=f"correlation forward+backward, B={batch} C={channels} T={frames} "
                    f"{size}x{size} K={kernel_size} D={dilation} G={cfg.groups}, "
                    f"{r['threads']} threads")
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
    if json_path:
        write_atomic(json_path, json.dumps(r, indent=2) + "\n")
