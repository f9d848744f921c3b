"""The clip loader: a torch Dataset over the HDF5 shards written by ``vcorr prepare``."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torchvision.io import decode_jpeg
from torchvision.transforms.v2 import functional as TF

from vcorr.pipelines.data.index import VideoTable
from vcorr.pipelines.data.inspect import read_classes, read_index, read_meta
from vcorr.pipelines.data.samplers import DenseSampler, SegmentSampler
from vcorr.pipelines.data.shards import ShardReader
from vcorr.pipelines.data.swaps import swap_index_map, training_swap_pairs
from vcorr.pipelines.data.transforms import as_video
from vcorr.pipelines.errors import UserError


def decode_frames(encoded: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """JPEG byte arrays (or raw (N, H, W, 3) frames) -> uint8 (N, 3, H, W)."""
    if isinstance(encoded, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(encoded)).permute(0, 3, 1, 2)
    return torch.stack(decode_jpeg([torch.from_numpy(b) for b in encoded]))


class VideoClipDataset(torch.utils.data.Dataset):
    """Clips of one split of a prepared dataset.

    Training (``train=True``) returns ``(clip, label)`` with one randomly sampled and
    augmented clip; testing returns all ``num_clips`` evenly spaced clips of the video,
    stacked, decoded from one read of the frames they need.

    Shape: clip (C, T, H, W) in training or with ``num_clips=1``; (num_clips, C, T, H, W)
    otherwise.

    ``videos`` lists the split's rows of ``index.csv`` (a
    :class:`~vcorr.pipelines.data.index.VideoTable`: ``videos[i]`` is video ``i``'s row dict).

    Randomness comes from a generator seeded by (seed, epoch, index), so a clip depends only
    on those, not on worker count or order: runs repeat exactly and resumes are exact. Call
    :meth:`set_epoch` at every epoch. HDF5 files are opened lazily in each worker.

    Args:
        root: a folder written by ``vcorr prepare``.
        split: ``train``, ``val`` or ``test``.
        sampler: :class:`DenseSampler` or :class:`SegmentSampler`.
        transform: v2 transform on uint8 ``Video`` (T, C, H, W) returning (C, T, H, W).
        flip: ``"off"``, ``"on"`` (p=0.5, training only) or ``"swap"`` (flip and swap the
            label through ``swap_map``, class index -> mirrored class index; by default the
            dataset's built-in map or ``swap_spec``'s, :mod:`vcorr.pipelines.data.swaps`).
        swap_spec: ``data.swap_map``: "" (the dataset's built-in map), a built-in map's name
            or a CSV file of class-name pairs (:func:`vcorr.pipelines.data.swaps.swap_pairs`).
    """

    def __init__(self, root: str | Path, split: str, sampler: DenseSampler | SegmentSampler,
                 transform: Callable | None = None, train: bool = True, num_clips: int = 1,
                 flip: str = "off", swap_map: dict[int, int] | None = None, seed: int = 0,
                 min_frames: int = 1, swap_spec: str = "") -> None:
        self.root = Path(root)
        self.split, self.sampler, self.transform = split, sampler, transform
        self.train, self.num_clips, self.seed, self.epoch = train, num_clips, seed, 0
        # The split's rows as a view of the index's columns (no Python object per video: the
        # dataset is forked into every DataLoader worker, which would copy such objects'
        # pages as it read them), shared with any other holder of the same index.
        index = read_index(self.root)
        self.videos: VideoTable = index.select(
            index.mask("split", split) & (index.column("num_frames") >= min_frames))
        if not len(self.videos):
            raise UserError(f"{self.root}: no videos in split {split!r}")
        self.classes = read_classes(self.root)
        if flip not in ("off", "on", "swap"):
            raise ValueError(f"flip must be off, on or swap, got {flip!r}")
        self.flip = flip
        # The class pairs a mirror swaps (recorded in checkpoints for mirrored test views).
        if swap_map is not None:   # an explicit index map (library use)
            self.swap_pairs = [(self.classes[a], self.classes[b])
                               for a, b in sorted(swap_map.items()) if a < b]
        else:
            self.swap_pairs = training_swap_pairs(
                swap_spec, read_meta(self.root).get("dataset", ""), self.classes, flip,
                str(self.root))
            if flip == "swap":
                swap_map = swap_index_map(self.swap_pairs, self.classes)
        self.swap_map = swap_map or {}
        self.reader = ShardReader(self.root / "shards")

    def __len__(self) -> int:
        return len(self.videos)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def labels(self) -> list[int]:
        """``label_index`` of every video, in dataset order."""
        return self.videos.column("label_index").tolist()

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, index])

    def read_clips(self, index: int, clips: list[list[int]]) -> list[torch.Tensor]:
        """uint8 (T, 3, H, W) frames for each clip, decoding each needed frame once."""
        v = self.videos[index]
        uniq = sorted({i for c in clips for i in c})
        frames = decode_frames(self.reader.read_encoded(v["shard"], v["id"], uniq))
        if len(clips) == 1 and clips[0] == uniq:  # the usual dense clip: no copy needed
            return [frames]
        pos = {f: k for k, f in enumerate(uniq)}
        return [frames.index_select(0, torch.tensor([pos[i] for i in c])) for c in clips]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        v = self.videos[index]
        rng = self._rng(index)
        n = v["num_frames"]
        clips = [self.sampler.train(n, rng)] if self.train else self.sampler.test(n,
                                                                                  self.num_clips)
        label = v["label_index"]
        flip = self.train and self.flip != "off" and rng.random() < 0.5
        if flip and self.flip == "swap":
            label = self.swap_map.get(label, label)
        # v2 transforms draw from torch's global RNG: seed it for this item, then restore it.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            out = []
            for frames in self.read_clips(index, clips):
                if flip:
                    frames = TF.horizontal_flip(frames)
                video = as_video(frames)
                out.append(self.transform(video) if self.transform is not None
                           else video.as_subclass(torch.Tensor).permute(1, 0, 2, 3))
        clip = out[0] if len(out) == 1 else torch.stack(out)
        return clip, label
