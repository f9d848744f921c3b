"""``vcorr eval`` and ``vcorr compare``: parse options, call :mod:`vcorr.pipelines.evaluate`."""
from __future__ import annotations

import os
from pathlib import Path

import click

from vcorr.cli.predict_cmds import model_arg_option, parse_model_args, swap_map_option


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
@click.option("--frame-order", type=click.Choice(["original", "reversed", "shuffled"]),
              default="original", show_default=True,
              help="Feed every clip's frames in this order (after sampling; all crops of a "
                   "clip alike): reversed in time, or a fixed random permutation per clip "
                   "(never the original order). For `vcorr compare --order`.")
@click.option("--seed", type=int, default=None,
              help="With --frame-order shuffled: seeds each clip's permutation together with "
                   "its video id and clip index [default: 0].")
@model_arg_option
@swap_map_option
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: CHECKPOINT's folder/eval_<split>_<clips>x<crops> "
                   "for best.pt, eval_<name>_<split>_... for another checkpoint (last.pt: "
                   "eval_last_val_...), then _reversed or _shuffled (_shuffled_seed<N>) for "
                   "another frame order].")
@click.option("--overwrite", is_flag=True,
              help="Replace earlier results in the output folder (they are moved aside to "
                   "OUT.old-N).")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
def eval_cmd(checkpoint: Path, data: Path | None, split: str, clips: int, crops: str,
             full_frame: bool, crop_size: int | None, short_side: int | None, average: str,
             max_views_per_batch: int, workers: int, device: str | None, no_amp: bool,
             with_compile: bool, frame_order: str, seed: int | None,
             model_args: tuple[str, ...], swap_map: str, out_dir: Path | None,
             overwrite: bool, no_progress: bool) -> None:
    """Evaluate a training checkpoint with multi-view testing (clips x crops per video).

    Clips have the training clip length, interval and sampler; the frames of a video are read
    once and all its views cut from them. Writes OUT/metrics.json (top1, top5,
    mean_class_accuracy, per_class, confusion_matrix, failed_videos, ...),
    OUT/predictions.csv (id, label, predicted, top-5) and OUT/scores.npz (averaged scores).
    A folder that holds results already is refused (--overwrite moves them aside). Top-5 is
    not reported for datasets of fewer than 6 classes (it would always be 100%).

    With --frame-order reversed or shuffled the same views are fed with their frames
    reordered (recorded as frame_order and frame_order_seed in metrics.json); `vcorr compare
    ORIGINAL --order REORDERED` then shows per class how much accuracy drops, i.e. which
    classes need motion.

    \b
    Examples:
      vcorr eval runs/toy/best.pt --data data/toy_h5 --clips 1 --crops 1
      vcorr eval runs/k400_c2d/best.pt --clips 25 --crops 10 --out results/c2d_25x10
      vcorr eval runs/ssv2_cpnet/best.pt --split val --clips 2 --crops 3 --average logits
      vcorr eval runs/k400_c2d/best.pt --clips 10 --full-frame --short-side 128
      vcorr eval runs/ssv2_cpnet/best.pt --clips 2 --crops 3 --frame-order reversed
      vcorr eval runs/k400_cpnet_k8/best.pt --clips 1 --crops 1 --model-arg k=4
    """
    from rich.console import Console
    from rich.table import Table

    from vcorr.pipelines.errors import UserError
    from vcorr.pipelines.evaluate import EvalSettings, evaluate_checkpoint

    if seed is not None and frame_order != "shuffled":
        raise UserError("--seed applies to --frame-order shuffled only")
    s = EvalSettings(clips=clips, crops=int(crops), crop_size=crop_size, short_side=short_side,
                     full_frame=full_frame, average=average,
                     max_views_per_batch=max_views_per_batch, workers=workers, amp=not no_amp,
                     compile=with_compile, frame_order=frame_order, frame_order_seed=seed or 0,
                     model_args=parse_model_args(model_args), swap_map=swap_map)
    m = evaluate_checkpoint(checkpoint, data, out_dir, split, s, device=device,
                            progress=not no_progress, overwrite=overwrite)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return
    views = "full frame" if full_frame else f"{m['crops']} crop(s) of {m['crop_size']}"
    order = "" if frame_order == "original" else f", frames {frame_order}"
    t = Table(title=f"{m['model_name']} on {split}: {clips} clip(s) x {views}, "
                    f"{m['averaging']} averaged{order}")
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
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="The baseline's `vcorr eval` output folder: per-class gains of each RESULT.")
@click.option("--order", "reordered", multiple=True, type=click.Path(path_type=Path),
              help="Instead of --baseline: a `vcorr eval --frame-order reversed|shuffled` result "
                   "of the same checkpoint and views as RESULT (the original order); per-class "
                   "drop. Repeat for several (one subfolder each).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=Path("compare"),
              show_default=True,
              help="Output folder (one subfolder per model, or per --order result, when "
                   "several are given).")
@click.option("--top", default=10, show_default=True, type=click.IntRange(min=0),
              help="How many largest gains and losses (drops and rises) the summary lists.")
@click.option("--overwrite", is_flag=True,
              help="Replace an earlier comparison in the output folder (moved aside to "
                   "OUT.old-N).")
def compare(results: tuple[Path, ...], baseline: Path | None, reordered: tuple[Path, ...],
            out_dir: Path, top: int, overwrite: bool) -> None:
    """Per-class top-1 accuracy gain of each RESULT (a `vcorr eval` output folder) over the
    baseline: OUT/gains.png (sorted bar chart), gains.csv, gains.md, summary.json.

    Which classes need motion? With --order, RESULT is one checkpoint's evaluation with the
    frames in their original order and each --order result the same evaluation with
    --frame-order reversed or shuffled; per class: accuracy original, accuracy reordered and
    the drop (original - reordered), sorted by drop: OUT/drop.png, drop.csv, drop.md,
    summary.json (mean drop). Results of other checkpoints (weights), views or class lists
    are refused.

    \b
    Examples:
      vcorr compare results/cpnet --baseline results/c2d --out results/cpnet_vs_c2d
      vcorr compare results/cpnet results/corrnet --baseline results/c2d --top 5
      vcorr compare runs/cpnet/eval_val_2x3 --order runs/cpnet/eval_val_2x3_reversed \\
          --order runs/cpnet/eval_val_2x3_shuffled --out results/cpnet_order
    """
    from rich.console import Console
    from rich.table import Table

    from vcorr.pipelines.errors import UserError
    from vcorr.pipelines.evaluate import compare_orders, compare_results

    if (baseline is None) == (not reordered):
        raise UserError("give either --baseline (gains over a baseline) or --order "
                        "(drop with the frames reordered)")
    console = Console()
    if reordered:
        if len(results) != 1:
            raise UserError(f"--order compares one original-order RESULT, got {len(results)}")
        summaries = compare_orders(results[0], list(reordered), out_dir, top,
                                   overwrite=overwrite)
        t = Table(title=f"{summaries[0]['model']}: per-class top-1 drop with reordered frames")
        for col in ("frames", "top-1", "reordered top-1", "top-1 drop", "mean class drop",
                    "dropped", "rose", "equal"):
            t.add_column(col, justify="right")
        for s in summaries:
            t.add_row(s["frame_order"], f"{100 * s['original_top1']:.2f}%",
                      f"{100 * s['reordered_top1']:.2f}%", f"{100 * s['top1_drop']:+.2f}",
                      f"{100 * s['mean_drop']:+.2f}", str(s["dropped"]), str(s["rose"]),
                      str(s["equal"]))
        lists = (("largest drops", "largest_drops", "drop"),
                 ("largest rises", "largest_rises", "drop"))
    else:
        summaries = compare_results(list(results), baseline, out_dir, top, overwrite=overwrite)
        t = Table(title=f"per-class top-1 gain over {baseline}")
        for col in ("model", "top-1", "overall gain", "mean class gain", "improved", "worse",
                    "equal"):
            t.add_column(col, justify="right")
        for s in summaries:
            t.add_row(s["name"], f"{100 * s['model_top1']:.2f}%",
                      f"{100 * s['overall_gain']:+.2f}", f"{100 * s['mean_per_class_gain']:+.2f}",
                      str(s["improved"]), str(s["worse"]), str(s["equal"]))
        lists = (("largest gains", "largest_gains", "gain"),
                 ("largest losses", "largest_losses", "gain"))
    console.print(t)
    for s in summaries:
        for what, key, value in lists:
            if s[key]:
                console.print(f"{s['name']} {what}: " + ", ".join(
                    f"{r['class']} {100 * r[value]:+.1f}" for r in s[key]))
        click.echo(f"wrote {s['out']}")
