"""Test-time views: spatial crops of the evenly spaced clips of a video, and the averaging of
their class scores.

A clip is cropped on the tensor after the frames were read and resized once, so every view of
a video comes from one read. Crop layouts (``crops``):

- ``1``: the centre crop.
- ``3``: three crops along the longer side (start, centre, end), centred on the shorter side;
  together they cover the frame.
- ``6``: six crops evenly spaced along the longer side (the CPNet authors' evaluation).
- ``10``: the four corners and the centre, plus their horizontal flips.

A flipped view's class scores are mapped back through the dataset's label-swap map (e.g.
"left to right" <-> "right to left") before averaging.

Temporal-order analysis (``vcorr eval --frame-order``): the frames of every sampled clip can be
fed in reverse time order or in a fixed random order (:func:`order_frames`), so that the drop in
accuracy shows how much a class depends on motion. The clips are sampled as usual; only the
order of their frames changes, the same for every crop of a clip.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch

CROP_CHOICES = (1, 3, 6, 10)
FRAME_ORDERS = ("original", "reversed", "shuffled")


@dataclass(frozen=True)
class Box:
    """A ``size`` x ``size`` crop at row ``y``, column ``x``; ``flip``: mirrored horizontally."""

    y: int
    x: int
    size: int
    flip: bool = False


def _spaced(length: int, size: int, n: int) -> list[int]:
    room = length - size
    if n == 1:
        return [room // 2]
    return [int(round(i * room / (n - 1))) for i in range(n)]


def crop_boxes(height: int, width: int, size: int, crops: int) -> list[Box]:
    """The crop boxes of ``crops`` views of a ``height`` x ``width`` frame."""
    if crops not in CROP_CHOICES:
        raise ValueError(f"crops must be one of {CROP_CHOICES}, got {crops}")
    if size > height or size > width:
        raise ValueError(f"crop {size} is larger than the frame ({height}x{width}); lower "
                         "--crop-size or raise --short-side")
    cy, cx = (height - size) // 2, (width - size) // 2
    if crops == 1:
        return [Box(cy, cx, size)]
    if crops in (3, 6):
        if width >= height:
            return [Box(cy, x, size) for x in _spaced(width, size, crops)]
        return [Box(y, cx, size) for y in _spaced(height, size, crops)]
    five = [Box(0, 0, size), Box(0, width - size, size), Box(height - size, 0, size),
            Box(height - size, width - size, size), Box(cy, cx, size)]
    return five + [Box(b.y, b.x, size, True) for b in five]


def build_views(clips: torch.Tensor, boxes: Sequence[Box] | None) -> tuple[torch.Tensor, list[bool]]:
    """``clips`` (N, C, T, H, W) -> views (N * len(boxes), C, T, s, s), clip-major, and which
    views are flipped. ``boxes=None``: the full frames (one view per clip)."""
    if boxes is None:
        return clips, [False] * clips.shape[0]
    views, flips = [], []
    for k in range(clips.shape[0]):
        for b in boxes:
            v = clips[k, :, :, b.y:b.y + b.size, b.x:b.x + b.size]
            views.append(v.flip(-1) if b.flip else v)
            flips.append(b.flip)
    return torch.stack(views), flips


def swap_scores(scores: torch.Tensor, swap_map: dict[int, int]) -> torch.Tensor:
    """Class scores (..., K) of a flipped view as scores of the unflipped video: the score of
    class c is the flipped view's score of ``swap_map[c]``."""
    if not swap_map:
        return scores
    perm = torch.arange(scores.shape[-1])
    for a, b in swap_map.items():
        if a < len(perm) and b < len(perm):
            perm[a] = b
    return scores.index_select(-1, perm.to(scores.device))


MIRRORED_CROPS = (10,)  # crop layouts with horizontally flipped views


def check_mirrored_views(crops: int, train_flip: str, swap_map: dict[int, int],
                         checkpoint: object) -> None:
    """Refuse test-time mirroring that would vote for the wrong class (issue 23, item 1).

    A mirrored view keeps its label only if training said so (``data.flip = "on"``) or a
    label-swap map maps its scores back (the run's map, e.g. SSv2 and Jester's built-in ones,
    or ``--swap-map``; :mod:`vcorr.pipelines.data.swaps`). A model trained with ``flip =
    "off"`` on a dataset without a map (a ``list`` dataset of "swipe left" / "swipe right")
    would have its five mirrored views of ``--crops 10`` vote for the opposite direction;
    that is refused, not averaged silently.

    Raises:
        UserError: ``crops`` has mirrored views, training used no flips and there is no map.
    """
    from vcorr.pipelines.errors import UserError

    if crops in MIRRORED_CROPS and train_flip == "off" and not swap_map:
        raise UserError(
            f"{checkpoint}: --crops {crops} includes mirrored views, but the model was trained "
            f"without flips (data.flip = \"off\") and its dataset has no label-swap map, so a "
            f"mirrored \"left\" would vote for \"right\"; use --crops 3 or 6 (no mirroring), "
            f"or give --swap-map FILE (a CSV of mirrored class pairs)")


def average_views(logits: torch.Tensor, flipped: Sequence[bool], swap_map: dict[int, int],
                  mode: str = "probs") -> torch.Tensor:
    """One video's (V, K) view logits -> (K,) averaged scores: softmax probabilities
    (``probs``) or raw logits (``logits``), flipped views swapped back first."""
    if mode not in ("probs", "logits"):
        raise ValueError(f"mode must be probs or logits, got {mode!r}")
    scores = logits.float()
    if mode == "probs":
        scores = scores.softmax(dim=-1)
    mask = torch.tensor(list(flipped), dtype=torch.bool, device=scores.device)
    if mask.any() and swap_map:
        scores = scores.clone()
        scores[mask] = swap_scores(scores[mask], swap_map)
    return scores.mean(dim=0)


def check_frame_order(order: str) -> None:
    """Raises:
        ValueError: ``order`` is not one of :data:`FRAME_ORDERS`."""
    if order not in FRAME_ORDERS:
        raise ValueError(f"frame order must be one of {', '.join(FRAME_ORDERS)}, got {order!r}")


def frame_permutation(frames: int, order: str, video_id: str, clip_index: int,
                      seed: int = 0) -> list[int]:
    """The frame order of clip ``clip_index`` of ``video_id``: position t of the fed clip
    shows frame ``perm[t]`` of the sampled clip.

    ``original``: 0..T-1; ``reversed``: T-1..0; ``shuffled``: the frames sorted by SHA-256 of
    (``seed``, video id, clip index, attempt, frame index), a uniformly random permutation that
    is the same for a clip on any machine, in any process and with any library version (no
    random generator's stream involved). An attempt that gives the original order is
    followed by the next: a shuffled clip of two or more frames is never in its original
    order (for T=2 it is the reversal).

    Raises:
        ValueError: ``order`` is not one of :data:`FRAME_ORDERS`.
    """
    check_frame_order(order)
    if order == "original" or frames < 2:
        return list(range(frames))
    if order == "reversed":
        return list(range(frames - 1, -1, -1))
    identity = list(range(frames))
    attempt = 0
    while True:
        perm = sorted(identity, key=lambda t: hashlib.sha256(
            f"{seed}\0{video_id}\0{clip_index}\0{attempt}\0{t}".encode()).digest())
        if perm != identity:
            return perm
        attempt += 1


def order_frames(clips: torch.Tensor, order: str, video_id: str, seed: int = 0) -> torch.Tensor:
    """The clips of one video with their frames in ``order`` (:func:`frame_permutation`,
    clip k permuted with clip index k); ``original`` returns ``clips`` itself.

    Shape: ``clips`` (N, C, T, H, W) -> (N, C, T, H, W).

    Raises:
        ValueError: ``order`` is not one of :data:`FRAME_ORDERS`.
    """
    if order == "original":
        return clips
    if order == "reversed":
        return clips.flip(2)
    check_frame_order(order)
    return torch.stack([
        clips[k].index_select(1, torch.tensor(
            frame_permutation(clips.shape[2], order, video_id, k, seed), device=clips.device))
        for k in range(clips.shape[0])])
