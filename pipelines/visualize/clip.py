"""Clips and models for the visualisations: frames sampled like the model's evaluation clip
(one centred clip of the dense/segment sampler), and a model from a checkpoint or by name."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vcorr.pipelines.errors import UserError

# Frames side by side in one row of a figure: more are shrunk past reading (a 32-frame row was
# 7260 px wide, each panel a smudge); the GIF (--animate) has every frame.
MAX_COLUMNS = 8


@dataclass
class Clip:
    """uint8 frames (T, H, W, 3), the source frame number of each and its presentation time
    (seconds from the video's first frame; None where unknown); ``warning`` says what went
    wrong decoding a damaged video file (None if nothing did)."""

    frames: np.ndarray
    indices: list[int]
    name: str
    warning: str | None = None
    times: list[float] | None = None

    def labels(self) -> list[str]:
        if self.times is None:
            return [f"t={t} (frame {i})" for t, i in enumerate(self.indices)]
        return [f"t={t} (frame {i}, {s:.2f} s)"
                for t, (i, s) in enumerate(zip(self.indices, self.times))]


def shown_frames(clip: Clip, times: list[float] | None = None,
                 limit: int = MAX_COLUMNS) -> list[int]:
    """Positions in ``clip`` of the frames a figure shows, in clip order: the frame nearest in
    presentation time to each of ``times`` (seconds from the video's first frame), or
    without ``times`` at most ``limit`` evenly spaced frames (first and last included).

    Raises:
        UserError: more than ``limit`` times, a time outside the clip (by more than one frame
            interval), two times on the same frame, or a clip without frame times.
    """
    n = len(clip.frames)
    if times is None:
        if n <= limit:
            return list(range(n))
        return sorted(set(np.linspace(0, n - 1, limit).round().astype(int).tolist()))
    if clip.times is None:
        raise UserError(f"{clip.name}: frame times are not known; leave out --times")
    if not times:
        raise UserError("--times: no times given")
    if len(times) > limit:
        raise UserError(f"--times: {len(times)} times; at most {limit} frames fit a readable "
                        "row (--animate writes every frame to the GIF)")
    at = np.asarray(clip.times, dtype=np.float64)
    gap = float(np.median(np.diff(at))) if n > 1 else 0.0
    span = (f"the clip has frames {clip.indices[0]}-{clip.indices[-1]}, "
            f"{at[0]:.2f}-{at[-1]:.2f} s")
    out: list[int] = []
    for s in times:
        if not at[0] - gap - 1e-9 <= s <= at[-1] + gap + 1e-9:
            raise UserError(f"--times {s:g}: outside the clip ({span}); give times inside it, "
                            "or more --frames for a longer clip")
        j = int(np.argmin(np.abs(at - s)))
        if j in out:
            raise UserError(f"--times: {s:g} s and an earlier time both fall on frame "
                            f"{clip.indices[j]} ({span}, {gap:.3f} s apart)")
        out.append(j)
    return sorted(out)


def parse_times(text: str | None) -> list[float] | None:
    """``--times "0.5,1,2.25"`` -> [0.5, 1.0, 2.25] (seconds); None stays None."""
    if text is None:
        return None
    try:
        return [float(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise UserError(f"--times {text!r}: not a comma-separated list of seconds") from None


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    frames: int
    interval: int = 1
    sampler: str = "dense"
    normalize: bool = True
    extra: dict[str, Any] = field(default_factory=dict)
    short_video: str = "loop"   # the config's data.short_video (loop or repeat)


def load_model(checkpoint: str | Path | None = None, name: str | None = None) -> LoadedModel:
    """A model in eval mode from a training checkpoint (with its clip settings), or a freshly
    built registered model (random weights; its default clip length, interval 1)."""
    from vcorr import models
    if checkpoint is not None:
        from vcorr.pipelines.evaluate.evaluate import clip_settings
        from vcorr.pipelines.train.trainer import model_from_checkpoint

        model, ckpt = model_from_checkpoint(checkpoint)
        cfg = ckpt["config"]
        frames, interval, sampler = clip_settings(cfg)
        return LoadedModel(model.eval(), cfg["model"]["name"], int(frames), int(interval),
                           str(sampler), bool(cfg["data"].get("normalize", True)),
                           short_video=str(cfg["data"].get("short_video", "loop")))
    if name is None:
        raise UserError("give --checkpoint or --model")
    try:
        entry = models.get_model_entry(name)
    except KeyError as exc:
        raise UserError(str(exc)) from None
    model = models.create_model(name)
    return LoadedModel(model.eval(), name, int(entry.input_shape[1]))


def sample_indices(n: int, frames: int, interval: int = 1, sampler: str = "dense",
                   short_video: str = "loop") -> list[int]:
    """The frames of the single evaluation clip (the centred one); ``short_video``: how a
    dense clip longer than the video is filled (loop, or repeat as CorrNet Sec. 5)."""
    from vcorr.pipelines.data.samplers import make_sampler

    if n < 1:
        raise UserError("the video has no frames")
    return make_sampler(sampler, frames, interval, short_video).test(n, 1)[0]


def read_clip(video: str | Path | None, frames: int, interval: int = 1, sampler: str = "dense", *,
              data: str | Path | None = None, video_id: str | None = None,
              short_video: str = "loop") -> Clip:
    """Frames of ``video`` (a file or frame folder) or of prepared video ``video_id`` in
    ``data`` (a ``vcorr prepare`` output folder), with their presentation times (a file: the
    stream's timestamps, through :mod:`vcorr.pipelines.data.decode`; prepared: frame / fps).
    The clip is sampled as the checkpoint's evaluation samples it (``sampler``,
    ``short_video``)."""
    if data is not None or video_id is not None:
        if data is None or video_id is None:
            raise UserError("--data and --id go together")
        from vcorr.pipelines.data.dataset import decode_frames
        from vcorr.pipelines.data.inspect import read_index
        from vcorr.pipelines.data.shards import ShardReader

        rows = [r for r in read_index(data) if r["id"] == video_id]
        if not rows:
            raise UserError(f"{data}: no video with id {video_id!r}")
        row = rows[0]
        idx = sample_indices(row["num_frames"], frames, interval, sampler, short_video)
        reader = ShardReader(Path(data) / "shards")
        uniq = sorted(set(idx))
        try:
            dec = decode_frames(reader.read_encoded(row["shard"], row["id"], uniq))
        finally:
            reader.close()
        clip = _clip(dec.permute(0, 2, 3, 1).numpy(), uniq, idx, video_id)
        # prepare stores frames at a constant rate (index.csv's fps)
        clip.times = [i / row["fps"] for i in idx] if row["fps"] > 0 else None
        return clip
    if video is None:
        raise UserError("give a VIDEO file or --data DIR --id VIDEO_ID")
    path = Path(video)
    if not path.exists():
        raise UserError(f"{path}: video not found")
    from vcorr.pipelines.data.decode import VideoError, VideoReader

    try:
        src = VideoReader(path)
        idx = sample_indices(src.info.num_frames, frames, interval, sampler, short_video)
        uniq = sorted(set(idx))
        arr = src.read(uniq)
    except VideoError as exc:
        raise UserError(f"{path}: {exc}") from None
    clip = _clip(arr, uniq, idx, path.stem)
    clip.warning = src.report.problem()
    clip.times = [float(src.info.times[i]) for i in idx]  # presentation times from the stream
    return clip


def _clip(arr: np.ndarray, uniq: list[int], idx: list[int], name: str) -> Clip:
    """The clip's frames ``idx`` (repeats allowed) from ``arr``, the decoded frames ``uniq``."""
    pos = {v: k for k, v in enumerate(uniq)}
    return Clip(np.ascontiguousarray(arr[[pos[i] for i in idx]]), idx, name)


def resize_frames(frames: np.ndarray, short_side: int | None) -> np.ndarray:
    """Bilinear resize so that the short side is ``short_side`` (None: unchanged)."""
    if not short_side:
        return frames
    t, h, w, _ = frames.shape
    s = short_side / min(h, w)
    size = (max(1, round(h * s)), max(1, round(w * s)))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def model_input(frames: np.ndarray, normalize: bool = True) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> float (1, 3, T, H, W) in [0, 1], ImageNet-normalised if asked."""
    from vcorr.pipelines.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(255)
    x = x.permute(3, 0, 1, 2).unsqueeze(0)
    if normalize:
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)) / torch.tensor(
            IMAGENET_STD).view(1, 3, 1, 1, 1)
    return x
