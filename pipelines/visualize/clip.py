"""Clips and models for the visualisations: frames sampled like the model's evaluation clip
(one centred clip of the dense/segment sampler), and a model from a checkpoint or by name."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipelines.errors import UserError


@dataclass
class Clip:
    """uint8 frames (T, H, W, 3) and the source frame number of each; ``warning`` says what
    went wrong decoding a damaged video file (None if nothing did)."""

    frames: np.ndarray
    indices: list[int]
    name: str
    warning: str | None = None

    def labels(self) -> list[str]:
        return [f"t={t} (frame {i})" for t, i in enumerate(self.indices)]


@dataclass
class LoadedModel:
    model: nn.Module
    name: str
    frames: int
    interval: int = 1
    sampler: str = "dense"
    normalize: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def load_model(checkpoint: str | Path | None = None, name: str | None = None) -> LoadedModel:
    """A model in eval mode from a training checkpoint (with its clip settings), or a freshly
    built registered model (random weights; its default clip length, interval 1)."""
    import models

    if checkpoint is not None:
        from pipelines.evaluate.evaluate import clip_settings
        from pipelines.train.trainer import model_from_checkpoint

        model, ckpt = model_from_checkpoint(checkpoint)
        cfg = ckpt["config"]
        frames, interval, sampler = clip_settings(cfg)
        return LoadedModel(model.eval(), cfg["model"]["name"], int(frames), int(interval),
                           str(sampler), bool(cfg["data"].get("normalize", True)))
    if name is None:
        raise UserError("give --checkpoint or --model")
    try:
        entry = models.get_model_entry(name)
    except KeyError as exc:
        raise UserError(str(exc)) from None
    model = models.create_model(name)
    return LoadedModel(model.eval(), name, int(entry.input_shape[1]))


def sample_indices(n: int, frames: int, interval: int = 1, sampler: str = "dense") -> list[int]:
    """The frames of the single evaluation clip (the centred one)."""
    from pipelines.data.samplers import make_sampler

    if n < 1:
        raise UserError("the video has no frames")
    return make_sampler(sampler, frames, interval).test(n, 1)[0]


def read_clip(video: str | Path | None, frames: int, interval: int = 1, sampler: str = "dense", *,
              data: str | Path | None = None, video_id: str | None = None) -> Clip:
    """Frames of ``video`` (a file or frame folder) or of prepared video ``video_id`` in
    ``data`` (a ``vcorr prepare`` output folder)."""
    if data is not None or video_id is not None:
        if data is None or video_id is None:
            raise UserError("--data and --id go together")
        from pipelines.data.dataset import decode_frames
        from pipelines.data.inspect import read_index
        from pipelines.data.shards import ShardReader

        rows = [r for r in read_index(data) if r["id"] == video_id]
        if not rows:
            raise UserError(f"{data}: no video with id {video_id!r}")
        row = rows[0]
        idx = sample_indices(row["num_frames"], frames, interval, sampler)
        reader = ShardReader(Path(data) / "shards")
        uniq = sorted(set(idx))
        try:
            dec = decode_frames(reader.read_encoded(row["shard"], row["id"], uniq))
        finally:
            reader.close()
        return _clip(dec.permute(0, 2, 3, 1).numpy(), uniq, idx, video_id)
    if video is None:
        raise UserError("give a VIDEO file or --data DIR --id VIDEO_ID")
    path = Path(video)
    if not path.exists():
        raise UserError(f"{path}: video not found")
    from pipelines.data.decode import VideoError, VideoReader

    try:
        src = VideoReader(path)
        idx = sample_indices(src.info.num_frames, frames, interval, sampler)
        uniq = sorted(set(idx))
        arr = src.read(uniq)
    except VideoError as exc:
        raise UserError(f"{path}: {exc}") from None
    clip = _clip(arr, uniq, idx, path.stem)
    clip.warning = src.report.problem()
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
    from pipelines.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(255)
    x = x.permute(3, 0, 1, 2).unsqueeze(0)
    if normalize:
        x = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1, 1)) / torch.tensor(
            IMAGENET_STD).view(1, 3, 1, 1, 1)
    return x
