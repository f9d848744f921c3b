"""The moving-square toy dataset of the CPNet paper (poster, "toy experiment").

A white ``square`` x ``square`` patch on a black ``canvas`` x ``canvas`` frame moves by a random
step of ``min_step``..``max_step`` pixels per frame in one of four directions; the direction is
the label. Per-frame appearance is identical across classes, so a model can only solve it by
relating positions across frames: the poster reports that C2D/C3D/TRN/NL with two 3x3 conv
layers stay at chance and CPNet fits it (what we measure is in the README). Written as real
lossless videos so it goes through ``vcorr prepare`` like any dataset.

Two choices the poster leaves open close the shortcuts a translation-invariant network could
otherwise take (measured: with T=4 and no margin, TRN reached 99.7% from where the square touched
a border). ``margin`` keeps the square ``margin`` pixels off every border: two 3x3 convs see 5x5,
so with margin 3 the square's response never meets the zero padding or the border columns'
response, and every position looks the same to a two-layer net. With that margin a 7-9 px
step fits only two steps on a 32 px canvas, hence T=3 by default. Prepare the toy with
``--codec raw``: JPEG's 8x8 grid would mark positions modulo 8.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vcorr.pipelines.data.video_io import write_videos_segmented
from vcorr.pipelines.fileio import write_atomic
from vcorr.pipelines.errors import UserError

CLASSES = ("up", "down", "left", "right")
# (dy, dx) unit motion of each class, in image coordinates (y grows downwards).
_DIRECTIONS = np.array([(-1, 0), (1, 0), (0, -1), (0, 1)], dtype=np.int64)
TOY_FPS = 8.0


@dataclass(frozen=True)
class ToyOptions:
    """Options of :func:`make_toy` (defaults are the paper's setting)."""

    videos: int = 2000
    val_fraction: float = 0.2
    frames: int = 3
    canvas: int = 32
    square: int = 2
    min_step: int = 7
    max_step: int = 9
    wrap: bool = False
    margin: int = 3
    seed: int = 0


def toy_trajectories(opt: ToyOptions) -> tuple[np.ndarray, np.ndarray]:
    """Labels (N,) and top-left square positions (N, T, 2) as (y, x), deterministic for a seed."""
    if opt.videos < 1 or opt.frames < 1:
        raise UserError("--videos and --frames must be at least 1")
    if not 0 < opt.square <= opt.canvas:
        raise UserError(f"--square {opt.square} must be between 1 and --canvas {opt.canvas}")
    if not 0 <= opt.min_step <= opt.max_step:
        raise UserError(f"need 0 <= --min-step ({opt.min_step}) <= --max-step ({opt.max_step})")
    margin = 0 if opt.wrap else opt.margin
    if margin < 0:
        raise UserError(f"--margin must be at least 0, got {opt.margin}")
    free = opt.canvas - opt.square - 2 * margin
    longest = (opt.frames - 1) * opt.max_step
    if not opt.wrap and longest > free:
        raise UserError(
            f"a square moving up to {longest} px over {opt.frames} frames does not fit in "
            f"{opt.canvas - 2 * margin} px ({opt.canvas} px canvas less a {margin} px margin "
            f"on each side); use --wrap, fewer --frames, a smaller --max-step or --margin")
    rng = np.random.default_rng(opt.seed)
    n, t = opt.videos, opt.frames
    labels = rng.integers(0, len(CLASSES), n)
    steps = rng.integers(opt.min_step, opt.max_step + 1, (n, max(t - 1, 0)))
    travel = np.concatenate([np.zeros((n, 1), np.int64), np.cumsum(steps, axis=1)], axis=1)
    direction = _DIRECTIONS[labels]  # (N, 2)
    if opt.wrap:
        start = rng.integers(0, opt.canvas, (n, 2))
    else:
        # Start uniformly among the positions that keep the whole path on the canvas.
        total = travel[:, -1]
        lo = np.where(direction < 0, total[:, None], 0)
        hi = np.where(direction > 0, free - total[:, None], free)
        start = margin + lo + np.floor(rng.random((n, 2)) * (hi - lo + 1)).astype(np.int64)
    pos = start[:, None, :] + direction[:, None, :] * travel[:, :, None]
    if opt.wrap:
        pos %= opt.canvas
    return labels, pos


def render_toy(opt: ToyOptions, labels: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Frames (N*T, canvas, canvas, 3) uint8 of the trajectories (wrapping across borders)."""
    n, t = pos.shape[:2]
    frames = np.zeros((n * t, opt.canvas, opt.canvas, 3), np.uint8)
    offs = np.arange(opt.square)
    rows = (pos[..., 0, None] + offs) % opt.canvas  # (N, T, S)
    cols = (pos[..., 1, None] + offs) % opt.canvas
    f = np.arange(n * t).reshape(n, t)
    frames[f[..., None, None], rows[..., :, None], cols[..., None, :]] = 255
    return frames


def make_toy(out: str | Path, opt: ToyOptions = ToyOptions()) -> dict:
    """Write ``out/videos/toy_NNNNN.mp4``, ``out/annotations.csv`` and ``out/classes.txt``.

    The first ``videos - round(videos * val_fraction)`` videos are the train split, the rest
    val (videos are i.i.d., so this is a random split). Returns a small summary dict.
    """
    if not 0 <= opt.val_fraction < 1:
        raise UserError(f"--val-fraction must be in [0, 1), got {opt.val_fraction}")
    labels, pos = toy_trajectories(opt)
    out = Path(out)
    videos = out / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    write_videos_segmented(videos / "toy_%05d.mp4", render_toy(opt, labels, pos), opt.frames,
                           fps=TOY_FPS)
    n_val = int(round(opt.videos * opt.val_fraction))
    n_train = opt.videos - n_val
    rows = [(f"videos/toy_{i:05d}.mp4", CLASSES[lab], "train" if i < n_train else "val",
             f"toy_{i:05d}") for i, lab in enumerate(labels)]
    write_atomic(out / "annotations.csv", "path,label,split,id\n"
                  + "".join(",".join(r) + "\n" for r in rows))
    write_atomic(out / "classes.txt", "".join(c + "\n" for c in CLASSES))
    return {"out": str(out), "videos": opt.videos, "train": n_train, "val": n_val,
            "frames": opt.frames, "classes": list(CLASSES)}
