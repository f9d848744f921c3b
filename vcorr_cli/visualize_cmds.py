"""``vcorr visualize``: figures of correspondences, correlations and correlation filters;
parse options, call :mod:`vcorr.pipelines.visualize`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click


@click.group()
def visualize() -> None:
    """Figures of what correspondence / correlation models see (PNG, optionally GIF).

    \b
    Examples:
      vcorr visualize correlation --pixels clip.mp4 --out viz/
      vcorr visualize correspondences --checkpoint runs/toy_cpnet/best.pt clip.mp4 --out viz/
      vcorr visualize filters runs/corrnet/best.pt --out viz/
    """


def _clip_options(f: Callable) -> Callable:
    for opt in reversed([
        click.argument("video", required=False, type=click.Path(path_type=Path)),
        click.option("--data", type=click.Path(path_type=Path),
                     help="Prepared dataset folder (with --id) instead of a VIDEO file."),
        click.option("--id", "video_id", help="Video id in --data."),
        click.option("--frames", type=click.IntRange(min=2), default=None,
                     help="Clip length [default: the checkpoint's evaluation clip, or the "
                          "model's default; correlation --pixels: 8]."),
        click.option("--interval", type=click.IntRange(min=1), default=None,
                     help="Frame interval [default: the checkpoint's, else 1]."),
        click.option("--short-side", type=click.IntRange(min=1), default=None,
                     help="Resize the short side to this before use [default: as stored with "
                          "--data; for a VIDEO file larger than 128 px, 128, the size prepare "
                          "stores by default (a full-size 1080p clip needs minutes and tens "
                          "of GB)]."),
        click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
                     help="Output folder for the figures."),
        click.option("--times", "times_text", default=None, metavar="SECONDS",
                     help="Frames shown in the PNG: the clip frames nearest these presentation "
                          "times, e.g. '1.5,2,2.5' (seconds from the video's start; at most "
                          "8) [default: 8 evenly spaced frames of the clip]. The GIF has every "
                          "frame."),
        click.option("--animate", is_flag=True, help="Also write an animated GIF (every frame)."),
        click.option("--overwrite", is_flag=True,
                     help="Replace this figure if --out has it (the old one is moved aside to "
                          "NAME.old-N)."),
    ]):
        f = opt(f)
    return f


def _read(loaded: Any, video: Path | None, data: Path | None, video_id: str | None,
          frames: int | None, interval: int | None, short_side: int | None):
    from vcorr.pipelines.visualize.clip import read_clip, resize_frames

    n = frames or (loaded.frames if loaded is not None else 8)
    step = interval or (loaded.interval if loaded is not None else 1)
    sampler = loaded.sampler if loaded is not None else "dense"
    clip = read_clip(video, n, step, sampler, data=data, video_id=video_id,
                     short_video=loaded.short_video if loaded is not None else "loop")
    if clip.warning:
        click.echo(f"warning: {video}: {clip.warning}", err=True)
    if short_side is None and video is not None and min(clip.frames.shape[1:3]) > 128:
        short_side = 128  # shrink large files (as prepare does by default), never enlarge
    clip.frames = resize_frames(clip.frames, short_side)
    return clip


def _report(paths: list[Path]) -> None:
    for p in paths:
        click.echo(str(p))


def _claim(paths: list[Path], overwrite: bool) -> list[Path]:
    """The output-folder rule for figures (:mod:`vcorr.pipelines.outputs`): checked before any
    work; returns the files to move aside (with --overwrite) just before writing."""
    from vcorr.pipelines.outputs import check_files

    return check_files(paths, overwrite=overwrite)


def _move_aside(paths: list[Path]) -> None:
    from vcorr.pipelines.outputs import move_aside

    for p in paths:
        click.echo(f"moved {p} aside to {move_aside(p)}")


def _model(checkpoint: Path | None, model: str | None):
    from vcorr.pipelines.errors import UserError
    from vcorr.pipelines.visualize.clip import load_model

    if (checkpoint is None) == (model is None):
        raise UserError("give exactly one of --checkpoint and --model")
    return load_model(checkpoint, model)


@visualize.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Training checkpoint.")
@click.option("--model", "model_name", help="Registered model name (random weights).")
@click.option("--pixels", is_flag=True,
              help="No model: correlate normalised pixel patches with the previous frame.")
@click.option("--patch", default=5, show_default=True, type=click.IntRange(min=1),
              help="--pixels: patch size P (odd).")
@click.option("--kernel-size", default=9, show_default=True, type=click.IntRange(min=1),
              help="--pixels: K x K displacement grid (odd).")
@click.option("--dilation", default=2, show_default=True, type=click.IntRange(min=1),
              help="--pixels: spacing of the displacement grid in pixels.")
@click.option("--offset", type=int, default=None,
              help="Model: temporal offset shown [default: -1 where present].")
@click.option("--min-confidence", default=None, type=click.FloatRange(min=0),
              help="Colour a displacement only where its peak stands out: peak minus mean "
                   "score over the KxK grid at least this (--pixels: cosine similarity; a "
                   "model: in units of the stage's median best score); grey elsewhere. 0 "
                   "colours everything [default: 0.5].")
@_clip_options
def correlation(checkpoint: Path | None, model_name: str | None, pixels: bool, patch: int,
                kernel_size: int, dilation: int, offset: int | None, min_confidence: float | None,
                video: Path | None, data: Path | None, video_id: str | None,
                frames: int | None, interval: int | None, short_side: int | None,
                out_dir: Path, times_text: str | None, animate: bool,
                overwrite: bool) -> None:
    """Dominant displacement (argmax over the KxK displacements) of every correlation stage,
    colour-coded with the optical-flow colour wheel over the frames (DCF Figs 4-5).

    Shown is the motion of the content (for offset -1: from the previous frame to this one),
    in input pixels, where the peak stands out of the KxK grid (--min-confidence); ties, flat
    regions and noise are grey. With --pixels, per-pixel features are zero-mean unit-norm PxP
    RGB patches correlated with the previous frame on a KxK grid of the given dilation. At
    most 8 frames per row (--times picks them), under 2500 px wide. Writes
    OUT/correlation.png (or correlation_pixels.png).

    \b
    Examples:
      vcorr visualize correlation --pixels clip.mp4 --out viz/
      vcorr visualize correlation --pixels clip.mp4 --kernel-size 7 --dilation 3 --animate --out viz/
      vcorr visualize correlation --pixels clip.mp4 --frames 32 --times 1,1.25,1.5 --out viz/
      vcorr visualize correlation --checkpoint runs/corrnet/best.pt --data data/k400 --id abc --out viz/
      vcorr visualize correlation --model dcf_x3d_s clip.mp4 --short-side 160 --out viz/
    """
    from vcorr.pipelines.errors import UserError
    from vcorr.pipelines.visualize.clip import parse_times
    from vcorr.pipelines.visualize.correlation import visualize_model_correlation, visualize_pixels

    times = parse_times(times_text)
    view: dict[str, Any] = {"times": times}
    if min_confidence is not None:  # else the pipeline's default
        view["min_confidence"] = min_confidence
    stem = "correlation_pixels" if pixels else "correlation"
    old = _claim([out_dir / f"{stem}.png", out_dir / f"{stem}.gif"], overwrite)
    if pixels:
        if checkpoint is not None or model_name is not None:
            raise UserError("--pixels takes no --checkpoint / --model")
        if patch % 2 == 0 or kernel_size % 2 == 0:
            raise UserError("--patch and --kernel-size must be odd")
        clip = _read(None, video, data, video_id, frames, interval, short_side)
        _move_aside(old)
        _report(visualize_pixels(clip, out_dir, patch=patch, kernel_size=kernel_size,
                                 dilation=dilation, animate=animate, **view))
        return
    loaded = _model(checkpoint, model_name)
    clip = _read(loaded, video, data, video_id, frames, interval, short_side)
    _move_aside(old)
    _report(visualize_model_correlation(loaded, clip, out_dir, offset=offset, animate=animate,
                                        **view))


@visualize.command()
@click.option("--checkpoint", type=click.Path(path_type=Path), help="Training checkpoint.")
@click.option("--model", "model_name", help="Registered model name (random weights).")
@click.option("--module", "module_index", default=-1, show_default=True, type=int,
              help="Which CP module, in network order (negative counts from the end).")
@click.option("--points", default=None,
              help="Query points 't,y,x;t,y,x' in input pixels of the clip as fed to the model "
                   "(after --short-side) [default: the positions the module changes most].")
@click.option("--num-points", default=3, show_default=True, type=click.IntRange(min=1),
              help="Automatic query points.")
@_clip_options
def correspondences(checkpoint: Path | None, model_name: str | None, module_index: int,
                    points: str | None, num_points: int, video: Path | None, data: Path | None,
                    video_id: str | None, frames: int | None, interval: int | None,
                    short_side: int | None, out_dir: Path, times_text: str | None,
                    animate: bool, overwrite: bool) -> None:
    """The k correspondences a CP module proposes for query positions, across the clip's
    frames (CPNet Fig. 5): filled circles win the max-pool of Eq. 2 for at least one MLP
    channel (the set A; the number is how many channels), crosses win none. Below: the L1
    change |CP(x) - x| per frame. Writes OUT/correspondences.png.

    \b
    Examples:
      vcorr visualize correspondences --checkpoint runs/toy_cpnet/best.pt clip.mp4 --out viz/
      vcorr visualize correspondences --model toy_cpnet clip.mp4 --points "1,16,12;2,16,20" --out viz/
      vcorr visualize correspondences --checkpoint runs/cpnet/best.pt --data data/ssv2 --id 123 \\
          --module 0 --num-points 5 --animate --out viz/
    """
    from vcorr.pipelines.visualize.clip import parse_times
    from vcorr.pipelines.visualize.correspondences import visualize_correspondences

    times = parse_times(times_text)

    old = _claim([out_dir / "correspondences.png", out_dir / "correspondences.gif"], overwrite)
    loaded = _model(checkpoint, model_name)
    clip = _read(loaded, video, data, video_id, frames, interval, short_side)
    _move_aside(old)
    _report(visualize_correspondences(loaded, clip, out_dir, module_index=module_index,
                                      points=points, num_points=num_points, animate=animate,
                                      times=times))


@visualize.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), required=True,
              help="Output folder for the figures.")
@click.option("--channels", default=16, show_default=True, type=click.IntRange(min=1),
              help="Channels shown (those with the largest weight spread).")
@click.option("--time-steps", "times", default=8, show_default=True, type=click.IntRange(min=1),
              help="The operator's weight time steps shown (evenly spaced); not seconds, "
                   "unlike --times of the clip figures.")
@click.option("--overwrite", is_flag=True,
              help="Replace filter figures --out has (moved aside to NAME.old-N).")
def filters(checkpoint: Path, out_dir: Path, channels: int, times: int,
            overwrite: bool) -> None:
    """Learned correlation weights of a CorrNet checkpoint (CorrNet Fig. 4): per operator a
    time x channel grid of KxK maps, an arrow from the centre to each map's largest weight.
    Writes OUT/filters_<module>.png.

    \b
    Examples:
      vcorr visualize filters runs/corrnet/best.pt --out viz/
      vcorr visualize filters runs/corrnet/best.pt --channels 8 --time-steps 4 --out viz/
    """
    from vcorr.pipelines.visualize.filters import visualize_filters

    # The figures of one checkpoint belong together: any earlier one blocks (or moves) all.
    _move_aside(_claim(sorted(out_dir.glob("filters_*.png")), overwrite))
    _report(visualize_filters(checkpoint, out_dir, max_channels=channels, max_times=times))
