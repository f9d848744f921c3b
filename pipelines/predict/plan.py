"""How a trained model sees a raw video: the frame rate of its training data, and where the
test clips of a whole video and of each time window lie.

A model is trained on the frames ``vcorr prepare`` stored (``--every N``: every N-th frame;
``--fps F``: the frame shown nearest each time k/F) and its config's clips (``frames``
samples ``interval`` stored frames apart, dense or segment sampler). On a raw video the same
selection is made with the decoding layer's own selector (:meth:`VideoInfo.select`), so a
clip covers the same seconds as in training; the clips are then placed exactly as
``vcorr eval`` places them (:meth:`DenseSampler.test` / :meth:`SegmentSampler.test`), over the
whole video or over the stored frames of one window.

Where the rate comes from, first found: ``--fps``/``--every``; a converted checkpoint's source
(``vcorr weights convert`` records the rate its source was trained at); the training data's
``prepare.json`` (its ``data_options``) as the checkpoint recorded it (``data_meta``), or for
older checkpoints as found through their ``data.root``; otherwise every frame of the video
(prepare's default, ``--every 1``), said in the output (``sampling.source``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vcorr.pipelines.data.decode import VideoInfo
from vcorr.pipelines.data.samplers import make_sampler
from vcorr.pipelines.errors import UserError

FALLBACK = ("every frame (prepare's default --every 1): the checkpoint does not record the "
            "frame rate of its training data and {why}; give --fps or --every to set it")


@dataclass(frozen=True)
class Sampling:
    """The stored-frame selection of the training data: ``fps`` (frames per second, by time)
    or ``every`` (every N-th frame); ``folder_fps``: the rate of frame folders (images per
    second); ``short_side``: the short side prepare stored (0: the source size, None:
    unknown); ``source``: where these values come from; ``assumed``: the rate is the
    fallback, not known."""

    every: int = 1
    fps: float | None = None
    folder_fps: float = 12.0
    short_side: int | None = None
    source: str = ""
    assumed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def checkpoint_data_meta(ckpt: dict) -> tuple[dict | None, str]:
    """The training data's ``prepare.json`` facts (``data_options``, ``dataset``) as the run
    recorded them in the checkpoint (``data_meta``), so that nothing depends on the folder
    inference runs from; for checkpoints from before that record, read through the config's
    ``data.root`` (:func:`training_data_meta`). Returns (meta or None, where or why not)."""
    recorded = ckpt.get("data_meta")
    if isinstance(recorded, dict) and isinstance(recorded.get("data_options"), dict):
        return recorded, (f"the checkpoint (recorded from {recorded.get('root', '?')}"
                          "/prepare.json)")
    return training_data_meta(ckpt.get("config", {}))


def training_data_meta(cfg: dict) -> tuple[dict | None, str]:
    """The training data's ``prepare.json`` (via the config's ``data.root``; it holds
    ``data_options`` and ``dataset``) and its path, or None with the reason it is not
    available."""
    root = str(cfg.get("data", {}).get("root", "") or "")
    if not root:
        return None, "its config names no data.root"
    path = Path(root) / "prepare.json"
    if not path.is_file():
        return None, f"{path} is not there"
    try:
        meta = json.loads(path.read_text())
        if isinstance(meta, dict) and isinstance(meta.get("data_options"), dict):
            return meta, str(path)
    except (ValueError, OSError):
        pass
    return None, f"{path} is unreadable"


def resolve_sampling(ckpt: dict, fps: float | None = None, every: int | None = None) -> Sampling:
    """The :class:`Sampling` of a checkpoint (see the module docstring for the order).

    Raises:
        UserError: both ``fps`` and ``every``, or a non-positive value.
    """
    if fps is not None and every is not None:
        raise UserError("use either --fps or --every, not both")
    if (fps is not None and fps <= 0) or (every is not None and every < 1):
        raise UserError("--fps must be positive and --every at least 1")
    meta, where = checkpoint_data_meta(ckpt)
    opts = meta["data_options"] if meta else None
    folder_fps = float(opts.get("folder_fps", 12.0)) if opts else 12.0
    short_side = int(opts["short_side"]) if opts and "short_side" in opts else None
    if fps is not None or every is not None:
        return Sampling(every or 1, fps, folder_fps, short_side, "given on the command line")
    source = ckpt.get("source")
    if isinstance(source, dict) and source.get("fps"):
        return Sampling(1, float(source["fps"]), folder_fps, short_side,
                        f"the converted checkpoint's source ({source.get('name', '?')})")
    if opts is not None:
        return Sampling(int(opts.get("every", 1)), opts.get("fps"), folder_fps, short_side, where)
    return Sampling(1, None, folder_fps, short_side, FALLBACK.format(why=where), assumed=True)


def sampled_frames(info: VideoInfo, sampling: Sampling) -> tuple[np.ndarray, np.ndarray]:
    """The frames prepare would store of this video (frame numbers, with repeats where a
    variable-rate video's frame is nearest several times) and their times (seconds).

    By ``fps`` on a variable-rate video, entry k stands for time k/fps (the selector keeps one
    frame per time); otherwise each kept frame's own presentation time.
    Shape: two (S,) arrays.
    """
    numbers = np.asarray(info.select(sampling.every, sampling.fps), np.int64)
    if sampling.fps is not None and info.nominal_rate is None:
        times = np.arange(len(numbers)) / float(sampling.fps)
    else:
        times = np.asarray(info.times, np.float64)[numbers] if len(numbers) else np.zeros(0)
    return numbers, times


@dataclass
class Group:
    """Clips predicted together: the whole video (``key`` -1) or window ``key``, from
    ``start`` to ``end`` seconds; ``clips``: frame numbers of each clip."""

    key: int
    start: float
    end: float
    clips: list[list[int]]


WHOLE = -1


def window_starts(duration: float, window: float, stride: float) -> list[float]:
    """Start times (seconds) of windows ``stride`` apart from 0 while they start inside the
    video."""
    n = int(np.ceil(duration / stride - 1e-9)) if duration > 0 else 0
    return [k * stride for k in range(max(n, 1))]


def plan_groups(numbers: np.ndarray, times: np.ndarray, duration: float, *, sampler: str,
                frames: int, interval: int, clips: int, window: float | None = None,
                stride: float | None = None, short_video: str = "loop") -> list[Group]:
    """The whole video's ``clips`` test clips, then (with ``window``) those of each window
    [start, start + window) of stored frames by time. Windows holding no stored frame (shorter
    than the stored frames' spacing) are left out.

    Raises:
        ValueError: no stored frame.
    """
    if not len(numbers):
        raise ValueError("no stored frame")
    s = make_sampler(sampler, frames, interval, short_video)

    def place(idx: np.ndarray) -> list[list[int]]:
        return [[int(numbers[idx[j]]) for j in clip] for clip in s.test(len(idx), clips)]

    groups = [Group(WHOLE, 0.0, duration, place(np.arange(len(numbers))))]
    if window:
        stride = stride or window
        for k, start in enumerate(window_starts(duration, window, stride)):
            end = min(start + window, duration)
            # A small tolerance: times on a 1/fps grid computed in floating point.
            idx = np.nonzero((times >= start - 1e-9) & (times < end - 1e-9))[0]
            if len(idx):
                groups.append(Group(k, start, end, place(idx)))
    return groups
