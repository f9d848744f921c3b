"""Clip transforms on uint8 videos with torchvision transforms v2.

Clips enter as uint8 ``(T, C, H, W)`` (a ``tv_tensors.Video``, so every frame gets the same
random crop, scale and colour change) and leave as float ``(C, T, H, W)``, the model layout,
after one permute. Horizontal flips are applied by the dataset, since a flip may change the
label (see :mod:`vcorr.pipelines.data.swaps`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

class ToModelLayout(torch.nn.Module):
    """(T, C, H, W) -> (C, T, H, W), the one permute of the pipeline."""

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return video.as_subclass(torch.Tensor).permute(1, 0, 2, 3)


def train_transform(crop: int = 112, short_side: Sequence[int] | int | None = (128, 160),
                    random_resized: bool = False, rrc_scale: tuple[float, float] = (0.5, 1.0),
                    rrc_ratio: tuple[float, float] = (0.9, 1.1), color_jitter: float = 0.0,
                    mean: Sequence[float] | None = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """Training augmentation.

    ``short_side``: scale jitter, the short side drawn from the range (or fixed; None keeps
    the stored size); then a random ``crop`` square, or with ``random_resized`` a
    RandomResizedCrop with the CPNet authors' scale 0.5-1 and ratio 0.9-1.1 (the short-side
    scale then only sets the working resolution); optional colour jitter (brightness,
    contrast, saturation); float in [0, 1] and normalisation.
    """
    ops: list = []
    if short_side is not None:
        ops.append(_short_side(short_side))
    if random_resized:
        ops.append(v2.RandomResizedCrop(crop, scale=rrc_scale, ratio=rrc_ratio, antialias=True))
    else:
        ops.append(v2.RandomCrop(crop, pad_if_needed=True))
    if color_jitter > 0:
        ops.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    return _finish(ops, mean, std)


def test_transform(crop: int | None = 112, short_side: int | None = 128,
                   mean: Sequence[float] | None = IMAGENET_MEAN,
                   std: Sequence[float] = IMAGENET_STD) -> v2.Compose:
    """Evaluation: resize the short side, centre crop (``crop=None``: the full frame)."""
    ops: list = []
    if short_side is not None:
        ops.append(v2.Resize(short_side, antialias=True))
    if crop is not None:
        ops.append(v2.CenterCrop(crop))
    return _finish(ops, mean, std)


def _short_side(size: Sequence[int] | int) -> v2.Transform:
    if isinstance(size, int):
        return v2.Resize(size, antialias=True)
    lo, hi = size
    return v2.RandomShortestSize(list(range(lo, hi + 1)), antialias=True)


def _finish(ops: list, mean: Sequence[float] | None, std: Sequence[float]) -> v2.Compose:
    ops.append(v2.ToDtype(torch.float32, scale=True))
    if mean is not None:
        ops.append(v2.Normalize(list(mean), list(std)))
    ops.append(ToModelLayout())
    return v2.Compose(ops)


def as_video(frames: torch.Tensor) -> tv_tensors.Video:
    """Wrap uint8 (T, C, H, W) frames so v2 transforms treat them as one video."""
    return tv_tensors.Video(frames)
