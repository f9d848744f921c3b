"""``vcorr eval`` and ``vcorr compare``: parse options, call :mod:`vcorr.pipelines.evaluate`."""
from __future__ import annotations

import os
from pathlib import Path

import click


@click.command(name="eval")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--data", type=click.Path(path_type=Path),
              help="Prepared dataset folder [default: the checkpoint's data.root].")
@click.option("--split", default="val", show_default=True, help="Split to evaluate.")
@click.option("--clips", default=10, show_default=True, type=click.IntRange(min=1),
              help="Clips per video, evenly spaced over the whole video.")
@click.option("--crops", default=3, show_default=True, type=click.Choice(["1", "3", "6", "10"]),
              help="Spatial crops per clip: 1 centre; 3 along the longer side; 6 evenly spaced "
                   "along the longer side; 10 corners + centre and their flips.")
@click.option("--full-frame", is_flag=True,
              help="Feed the whole resized frame (fully-convolutional testing; no crops).")
@click.option("--crop-size", type=click.IntRange(min=1), default=None,
              help="Crop size [default: the checkpoint's data.crop].")
@click.option("--short-side", type=click.IntRange(min=0), default=None,
              help="Resize the short side to this first, 0 keeps the stored size "
                   "[default: the checkpoint's data.test_short_side].")
@click.option("--average", type=click.Choice(["probs", "logits"]), default="probs",
              show_default=True, help="Average softmax probabilities or logits over views.")
@click.option("--max-views-per-batch", default=64, show_default=True,
              type=click.IntRange(min=1), help="Views per forward pass.")
@click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0),
              help="DataLoader worker processes reading the next videos.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Force a device [default: CUDA when present].")
@click.option("--no-amp", is_flag=True, help="No autocast on CUDA.")
@click.option("--compile", "with_compile", is_flag=True,
              help="Run the model under torch.compile (compiles at the first batch, and once "
                   "more if the batch size changes).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: CHECKPOINT's folder/eval_<split>_<clips>x<crops>].")
@click.option("--overwrite", is_flag=True,
              help="Replace earlier results in the output folder (they are moved aside to "
                   "OUT.old-N).")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
def eval_cmd(checkpoint: Path, data: Path | None, split: str, clips: int, crops: str,
             full_frame: bool, crop_size: int | None, short_side: int | None, average: str,
             max_views_per_batch: int, workers: int, device: str | None, no_amp: bool,
             with_compile: bool, out_dir: Path | None, overwrite: bool,
             no_progress: bool) -> None:
    """Evaluate a training checkpoint with multi-view testing (clips x crops per video).

    Clips have the training clip length, interval and sampler; the frames of a video are read
    once and all its views cut from them. Writes OUT/metrics.json (top1, top5,
    mean_class_accuracy, per_class, confusion_matrix, failed_videos, ...),
    OUT/predictions.csv (id, label, predicted, top-5) and OUT/scores.npz (averaged scores).
    A folder that holds results already is refused (--overwrite moves them aside). Top-5 is
    not reported for datasets of fewer than 6 classes (it would always be 100%).

    \b
    Examples:
      vcorr eval runs/toy/best.pt --data data/toy_h5 --clips 1 --crops 1
      vcorr eval runs/k400_c2d/best.pt --clips 25 --crops 10 --out results/c2d_25x10
      vcorr eval runs/ssv2_cpnet/best.pt --split val --clips 2 --crops 3 --average logits
      vcorr eval runs/k400_c2d/best.pt --clips 10 --full-frame --short-side 128
    """
    from rich.console import Console
    from rich.table import Table

    from vcorr.pipelines.evaluate import EvalSettings, evaluate_checkpoint

    s = EvalSettings(clips=clips, crops=int(crops), crop_size=crop_size, short_side=short_side,
                     full_frame=full_frame, average=average,
                     max_views_per_batch=max_views_per_batch, workers=workers, amp=not no_amp,
                     compile=with_compile)
    m = evaluate_checkpoint(checkpoint, data, out_dir, split, s, device=device,
                            progress=not no_progress, overwrite=overwrite)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    views = "full frame" if full_frame else f"{m['crops']} crop(s) of {m['crop_size']}"
    t = Table(title=f"{m['model_name']} on {split}: {clips} clip(s) x {views}, "
                    f"{m['averaging']} averaged")
    for col in ("videos", "failed", "top-1", "top-5", "mean class acc", "views/video",
                "videos/s"):
        t.add_column(col, justify="right")
    top5 = "-" if m["top5"] is None else f"{100 * m['top5']:.2f}%"
    t.add_row(str(m["num_videos"]), str(m["num_failed"]), f"{100 * m['top1']:.2f}%",
              top5, f"{100 * m['mean_class_accuracy']:.2f}%",
              str(m["views_per_video"]),
              f"{(m['num_videos'] + m['num_failed']) / max(m['seconds'], 1e-9):.2f}")
    Console().print(t)
    for f in m["failed_videos"][:10]:
        click.echo(f"failed: {f['id']}: {f['error']}", err=True)
    if m["num_failed"] > 10:
        click.echo(f"... {m['num_failed'] - 10} more failed videos in metrics.json", err=True)
    if m.get("moved_aside"):
        click.echo(f"moved the earlier results aside to {m['moved_aside']}")
    click.echo(f"wrote {m['out']}")


eval = eval_cmd  # registered in vcorr.cli.main as ("vcorr.cli.eval_cmds", "eval")


@click.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--baseline", required=True, type=click.Path(path_type=Path),
              help="The baseline's `vcorr eval` output folder.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("compare"),
              show_default=True,
              help="Output folder (one subfolder per model when several are given).")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=0),
              help="How many largest gains and losses the summary lists.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier comparison in the output folder (moved aside to "
                   "OUT.old-N).")
def compare(results: tuple[Path, ...], baseline: Path, out_dir: Path, top: int,
            overwrite: bool) -> None:
    """Per-class top-1 accuracy gain of each RESULT_DIR (a `vcorr eval` output) over the
    baseline: OUT/gains.png (sorted bar chart), gains.csv, gains.md, summary.json.

    \b
    Examples:
      vcorr compare results/cpnet --baseline results/c2d --out results/cpnet_vs_c2d
      vcorr compare results/cpnet results/corrnet --baseline results/c2d --top 5
    """
    from rich.console import Console
    from rich.table import Table

    from vcorr.pipelines.evaluate import compare_results

    summaries = compare_results(list(results), baseline, out_dir, top, overwrite=overwrite)
    console = Console()
    t = Table(title=f"per-class top-1 gain over {baseline}")
    for col in ("model", "top-1", "overall gain", "mean class gain", "improved", "worse",
                "equal"):
        t.add_column(col, justify="right")
    for s in summaries:
        t.add_row(s["name"], f"{100 * s['model_top1']:.2f}%", f"{100 * s['overall_gain']:+.2f}",
                  f"{100 * s['mean_per_class_gain']:+.2f}", str(s["improved"]),
                  str(s["worse"]), str(s["equal"]))
    console.print(t)
    for s in summaries:
        if s["largest_gains"]:
            console.print(f"{s['name']} largest gains: " + ", ".join(
                f"{r['class']} {100 * r['gain']:+.1f}" for r in s["largest_gains"]))
        if s["largest_losses"]:
            console.print(f"{s['name']} largest losses: " + ", ".join(
                f"{r['class']} {100 * r['gain']:+.1f}" for r in s["largest_losses"]))
        click.echo(f"wrote {s['out']}")
