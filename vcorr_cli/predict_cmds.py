"""``vcorr predict`` and ``vcorr extract``: parse options, call :mod:`vcorr.pipelines.predict`."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from vcorr.pipelines.errors import UserError

_ROWS_SHOWN = 40

_inputs = click.argument("inputs", nargs=-1, metavar="[INPUT]...", type=click.Path(path_type=Path))
_fps = click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=None,
                    help="Frame rate of the training data (prepare's --fps) [default: from the "
                         "checkpoint's data, else every frame].")
_every = click.option("--every", type=click.IntRange(min=1), default=None,
                      help="The training data kept every N-th frame (prepare's --every).")


def _clips_option(per: str) -> Callable[[Callable], Callable]:
    return click.option("--clips", default=10, show_default=True, type=click.IntRange(min=1),
                        help=f"Clips per {per}, evenly spaced.")


_crops = click.option("--crops", default="3", show_default=True,
                      type=click.Choice(["1", "3", "6", "10"]),
                      help="Spatial crops per clip, as in `vcorr eval`.")
_workers = click.option("--workers", default=2, show_default=True, type=click.IntRange(min=0),
                        help="DataLoader worker processes decoding the next videos.")
_device = click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
                       help="Force a device [default: CUDA when present].")
_views = click.option("--max-views-per-batch", default=64, show_default=True,
                      type=click.IntRange(min=1),
                      help="Views per forward pass (several videos share one); bounds memory.")
_no_progress = click.option("--no-progress", is_flag=True, help="No progress bar or lines.")
model_arg_option = click.option(
    "--model-arg", "model_args", multiple=True, metavar="KEY=VALUE",
    help="Override a model builder argument at test time (a TOML value; repeatable), e.g. k=4 "
         "for a CPNet trained with k=8 (CPNet Table 3(b)). Refused if it would change the "
         "trained weights.")
swap_map_option = click.option(
    "--swap-map", default="", metavar="NAME|FILE",
    help="Classes a mirrored view swaps (--crops 10): a built-in map (ssv2, ssv1, jester, "
         "jester-authors) or a CSV file of class-name pairs [default: the map the run trained "
         "with, recorded in the checkpoint].")


def parse_model_args(items: tuple[str, ...]) -> dict:
    """``("k=4", ...)`` -> ``{"k": 4}`` (values as TOML, else the text itself).

    Raises:
        UserError: an item without ``=`` or without a key.
    """
    from vcorr.pipelines.train.config import parse_value

    out = {}
    for item in items:
        key, eq, text = item.partition("=")
        if not eq or not key.strip():
            raise UserError(f"--model-arg {item!r}: expected KEY=VALUE, e.g. k=4")
        out[key.strip()] = parse_value(text.strip())
    return out


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@_inputs
@click.option("--top-k", default=5, show_default=True, type=click.IntRange(min=1),
              help="Classes listed per video and window.")
@_clips_option("video and per --window")
@_crops
@click.option("--window", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Also predict windows of this many seconds (by presentation time).")
@click.option("--stride", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds between window starts [default: --window].")
@click.option("--render", is_flag=True,
              help="Also write OUT/<id>.render.mp4 with the current window's top-3 labels.")
@_fps
@_every
@_views
@_workers
@_device
@click.option("--no-amp", is_flag=True, help="No autocast on CUDA.")
@model_arg_option
@swap_map_option
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: CHECKPOINT's folder/predict].")
@click.option("--overwrite", is_flag=True,
              help="Replace earlier results in the output folder (moved aside to OUT.old-N).")
@_no_progress
def predict(checkpoint: Path, inputs: tuple[Path, ...], top_k: int, clips: int, crops: str,
            window: float | None, stride: float | None, render: bool, fps: float | None,
            every: int | None, max_views_per_batch: int, workers: int, device: str | None,
            no_amp: bool, model_args: tuple[str, ...], swap_map: str, out_dir: Path | None,
            overwrite: bool, no_progress: bool) -> None:
    """Top-k classes of a checkpoint on raw videos: INPUT is a video file, a folder (searched
    recursively for video files and frame folders) or a .txt/.lst file listing paths (an INPUT
    that does not exist, or a .csv, is an error; a listed path that is missing is a failed
    video).

    Each video gets the view protocol of `vcorr eval` (clips x crops, softmax averaged) on
    frames taken at the training data's rate; writes OUT/predictions.csv and
    predictions.json. With --window, also OUT/<id>.timeline.csv and .png (each window's top-k
    over time). A video that cannot be read is reported and the run goes on; the exit code is
    2 when no video could be predicted.

    \b
    Examples:
      vcorr predict runs/k400_c2d/best.pt my_videos/ --out preds
      vcorr predict runs/k400_c2d/best.pt a.mp4 b.mkv --clips 1 --crops 1 --top-k 3
      vcorr predict runs/k400_c2d/best.pt long.mp4 --window 2 --render --out long_preds
      vcorr predict models/x3d_m.pt list.txt --clips 5 --crops 3 --workers 4
    """
    from rich.console import Console
    from rich.table import Table

    from vcorr.pipelines.predict import PredictSettings, predict_videos

    if not inputs:
        raise UserError("give at least one INPUT (a video, a folder or a list file)")
    s = PredictSettings(top_k=top_k, clips=clips, crops=int(crops), window=window,
                        stride=stride, render=render, fps=fps, every=every,
                        max_views_per_batch=max_views_per_batch, workers=workers,
                        amp=not no_amp, model_args=parse_model_args(model_args),
                        swap_map=swap_map)
    r = predict_videos(checkpoint, inputs, out_dir, s, device=device,
                       progress=not no_progress, overwrite=overwrite)
    for note in r["notes"]:
        click.echo(f"note: {note}", err=True)
    from vcorr.pipelines.progress import rate_text

    t = Table(title=f"{r['model_name']}: {clips} clip(s) x {crops} crop(s), top-{r['top_k']}")
    # The top-k after the top-1 (all k are in predictions.csv).
    for col in ("video", "top-1", "prob", "runners-up", "windows"):
        t.add_column(col, justify="right" if col in ("prob", "windows") else "left")
    for row in r["videos"][:_ROWS_SHOWN]:
        if row["error"]:
            continue
        top = row["top"]
        t.add_row(row["id"], top[0]["class"], f"{100 * top[0]['prob']:.1f}%",
                  ", ".join(f"{x['class']} {100 * x['prob']:.0f}%" for x in top[1:]),
                  str(row["windows"]) if row["windows"] else "")
    Console().print(t)
    if len(r["videos"]) > _ROWS_SHOWN:
        click.echo(f"... {len(r['videos']) - _ROWS_SHOWN} more videos in predictions.csv")
    for row in r["videos"]:
        if row["error"]:
            click.echo(f"failed: {row['path']}: {row['error']}", err=True)
        if row.get("render_error"):
            click.echo(f"render failed: {row['path']}: {row['render_error']}", err=True)
    if r.get("moved_aside"):
        click.echo(f"moved the earlier results aside to {r['moved_aside']}")
    click.echo(f"{r['predicted']} of {len(r['videos'])} videos predicted "
               f"({rate_text(len(r['videos']), r['timing']['wall'], 'video')}); "
               f"wrote {r['out']}")
    if r["predicted"] == 0:
        raise UserError(f"no video could be read ({r['failed']} failed; the reasons are in "
                        f"{Path(r['out']) / 'predictions.csv'})")


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@_inputs
@click.option("--data", type=click.Path(path_type=Path), default=None,
              help="A prepared dataset folder instead of INPUT videos.")
@click.option("--split", default=None, help="With --data: only this split [default: all].")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, path_type=Path),
              required=True,
              help="The HDF5 file (resumed if it exists: ids already in it are skipped).")
@click.option("--layer", default="pool", show_default=True,
              help="pool (the last stage, averaged) or a stage of the model: res2..res5.")
@click.option("--per-clip", is_flag=True, help="One vector per clip instead of per video.")
@click.option("--keep-spatial", is_flag=True,
              help="Keep the (C, T, H, W) map instead of averaging it.")
@_clips_option("video")
@_crops
@_fps
@_every
@_views
@_workers
@_device
@model_arg_option
@click.option("--overwrite", is_flag=True,
              help="Start the HDF5 file anew instead of resuming it (the old one is moved "
                   "aside to STEM.old-N.h5).")
@_no_progress
def extract(checkpoint: Path, inputs: tuple[Path, ...], data: Path | None, split: str | None,
            out_path: Path, layer: str, per_clip: bool, keep_spatial: bool, clips: int,
            crops: str, fps: float | None, every: int | None, max_views_per_batch: int,
            workers: int, device: str | None, model_args: tuple[str, ...], overwrite: bool,
            no_progress: bool) -> None:
    """Features of a checkpoint for every video of a prepared dataset (--data) or of INPUT
    videos (files, folders, list files): one float32 dataset per video id in an HDF5 file,
    the mean over clips x crops (or per clip). Rerunning skips ids already complete (a run
    with other settings is refused; --overwrite starts a new file, the old one moved aside);
    a killed run never leaves a partial vector under a video's id.

    \b
    Examples:
      vcorr extract runs/k400_c2d/best.pt --data data/k400 --split val --out feats/val.h5
      vcorr extract runs/k400_c2d/best.pt my_videos/ --out feats.h5 --layer res4
      vcorr extract runs/k400_c2d/best.pt long.mp4 --per-clip --clips 32 --crops 1 --out f.h5
    """
    from vcorr.pipelines.predict.extract import extract_features

    r = extract_features(checkpoint, out_path, data=data, split=split, inputs=inputs,
                         layer=layer, per_clip=per_clip, keep_spatial=keep_spatial, clips=clips,
                         crops=int(crops), fps=fps, every=every, max_views=max_views_per_batch,
                         workers=workers, device=device, progress=not no_progress,
                         model_args=parse_model_args(model_args), overwrite=overwrite)
    if r["moved_aside"]:
        click.echo(f"moved the earlier features aside to {r['moved_aside']}")
    for f in r["failed"]:
        click.echo(f"failed: {f.get('path', f['id'])}: {f['error']}", err=True)
    click.echo(f"{r['written']} written, {r['skipped']} already there, {len(r['failed'])} "
               f"failed; {r['videos_in_file']} videos in {r['out']} (layer {r['layer']}, "
               f"{r['clips']} clip(s) x {r['crops']} crop(s))")
    if r["written"] == 0 and r["failed"]:
        raise UserError(f"no video could be read ({len(r['failed'])} failed)")
