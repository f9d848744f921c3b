"""Inference from Python: load a checkpoint once, then predict videos or frames in memory.

>>> from vcorr import Predictor
>>> p = Predictor("runs/k400_c2d/best.pt", clips=10, crops=3)
>>> p.predict("a.mp4").top            # [(class, probability), ...], best first
>>> p.predict(frames, fps=30.0).top   # uint8 (T, H, W, 3) RGB, a video's frames at 30 fps
>>> p.predict([img0, img1, ...])      # PIL images, already at the training data's rate

Everything after the frames are chosen is ``vcorr predict``'s own code
(:mod:`vcorr.pipelines.predict.predict`): the checkpoint is opened by
:func:`~vcorr.pipelines.predict.predict.open_checkpoint`, a video path is decoded and sampled
by :class:`~vcorr.pipelines.predict.loader.RawVideos` and its clips run through
:func:`~vcorr.pipelines.predict.predict.run_clip_items`, exactly as ``vcorr predict`` runs
them; frames in memory are cut into clips as a decoded video's are
(:func:`~vcorr.pipelines.predict.plan.plan_groups`,
:func:`~vcorr.pipelines.predict.loader.resize_frames`) and go through the same loop. So a
video's probabilities here equal those in ``vcorr predict``'s ``predictions.json``.

Which frames the model sees matters: it was trained on the frames ``vcorr prepare`` stored (at
the training data's rate, :mod:`vcorr.pipelines.predict.plan`), and a clip of ``frames``
samples ``interval`` stored frames apart covers a fixed number of seconds only at that rate.
A video path is sampled at that rate from its timestamps. Frames in memory are either a
video's consecutive frames at ``fps`` frames per second (then the training data's selection is
made on them as on a video of that rate) or, with ``fps=None``, already the stored frames
(every frame is used, as if at the training data's rate).
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np
import torch

from vcorr.pipelines.data.decode import VideoInfo
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.evaluate.views import CROP_CHOICES
from vcorr.pipelines.predict.loader import ClipSpec, resize_frames
from vcorr.pipelines.predict.plan import WHOLE, Sampling, plan_groups, sampled_frames
from vcorr.pipelines.predict.predict import (
    Inference,
    open_checkpoint,
    run_clip_items,
    run_raw_videos,
    top_classes,
)

# A video file or frame folder, a uint8 (T, H, W, 3) RGB array (or tensor), or PIL images.
Source = Union[str, "os.PathLike[str]", np.ndarray, torch.Tensor, Sequence[Any]]


@dataclass(frozen=True)
class Prediction:
    """One video's (or frame sequence's) prediction.

    ``top``: the top-k (class, probability) pairs, best first (ties: the earlier class), as
    ``vcorr predict`` lists them; ``scores``: the averaged softmax probabilities over all
    clips x crops views, in ``classes`` order; ``info``: for a video path what
    ``predictions.csv`` says of it (duration in seconds, frames, fps, decoder, ``warning``),
    for frames ``frames`` (given) and ``stored_frames`` (those the clips were placed over).

    Shape: ``scores`` float32 (K,), K = ``len(classes)``.
    """

    top: list[tuple[str, float]]
    scores: np.ndarray
    classes: list[str]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """The top-1 class."""
        return self.top[0][0]

    @property
    def prob(self) -> float:
        """The top-1 class's probability."""
        return self.top[0][1]


class Predictor:
    """A checkpoint loaded once, ready to predict videos and frames with ``vcorr predict``'s
    views, sampling and normalisation (see the module docstring).

    Args:
        checkpoint: a vcorr checkpoint (``best.pt``, ``last.pt``, a converted model).
        clips: test clips per video, evenly spaced (``--clips``).
        crops: spatial crops per clip: 1, 3, 6 or 10 (``--crops``; 10 includes mirrored
            views, refused for a model trained without flips and with no ``swap_map``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a torch device (None: CUDA when
            present).
        data_fps, data_every: the training data's rate (``vcorr prepare``'s ``--fps``, frames
            per second, or ``--every``, every N-th frame), as ``vcorr predict --fps/--every``;
            None: what the checkpoint records (else every frame, said in ``notes``).
        model_args: test-time model builder overrides (``--model-arg``), e.g. ``{"k": 4}``.
        swap_map: the classes a mirrored view swaps: a built-in map name or a CSV file
            (``--swap-map``; "": the run's).
        max_views_per_batch: views per forward pass (bounds memory).
        amp: autocast on CUDA (``--no-amp`` is ``amp=False``); no effect on CPU.

    Raises:
        UserError: bad ``clips``/``crops``/``max_views_per_batch``, a checkpoint that does not
            load, bad ``data_fps``/``data_every``, ``crops=10`` the model cannot use, a device
            that is not there.
    """

    def __init__(self, checkpoint: str | os.PathLike[str], *, clips: int = 10, crops: int = 3,
                 device: str | torch.device | None = None, data_fps: float | None = None,
                 data_every: int | None = None, model_args: dict[str, Any] | None = None,
                 swap_map: str = "", max_views_per_batch: int = 64, amp: bool = True) -> None:
        if crops not in CROP_CHOICES:
            raise UserError(f"crops must be one of {', '.join(map(str, CROP_CHOICES))}, "
                            f"got {crops!r}")
        if not isinstance(clips, int) or clips < 1:
            raise UserError(f"clips must be a positive integer, got {clips!r}")
        if max_views_per_batch < 1:
            raise UserError(f"max_views_per_batch must be at least 1, got {max_views_per_batch}")
        self.checkpoint = str(checkpoint)
        self.crops, self.max_views, self.amp = crops, max_views_per_batch, amp
        self.inference: Inference
        self.inference, self.device = open_checkpoint(
            checkpoint, clips=clips, crops=crops, device=device, fps=data_fps,
            every=data_every, model_args=model_args, swap_map=swap_map)

    @property
    def classes(self) -> list[str]:
        """The checkpoint's classes, in score order."""
        return self.inference.classes

    @property
    def sampling(self) -> Sampling:
        """The training data's frame selection used on videos (and frames with ``fps``)."""
        return self.inference.spec.sampling

    @property
    def notes(self) -> list[str]:
        """What had to be assumed (e.g. the training rate), as ``vcorr predict`` notes it."""
        return self.inference.notes

    def describe(self) -> dict[str, Any]:
        """The settings, as ``predictions.json`` gives them (model, clip, views, sampling)."""
        return {"checkpoint": self.checkpoint, **self.inference.describe(),
                "crops": self.crops, "device": str(self.device)}

    def __repr__(self) -> str:
        s = self.inference.spec
        return (f"Predictor({self.checkpoint!r}, model={self.inference.model_name}, "
                f"clips={s.clips}, crops={self.crops}, device={self.device})")

    def predict(self, source: Source, top_k: int = 5, fps: float | None = None) -> Prediction:
        """The top-k classes of one video or frame sequence: ``clips`` x ``crops`` views,
        softmax averaged, as ``vcorr predict`` does.

        ``source`` is a video file or frame folder (decoded and sampled at the training
        data's rate exactly as ``vcorr predict``; ``fps`` must be None), a uint8 RGB array or
        tensor of frames, or a list of PIL images (converted to RGB; all of one size). Frames
        are consecutive frames at ``fps`` frames per second, from which the training data's
        selection is taken as from a video of that rate (by time, or every N-th frame); with
        ``fps=None`` they are taken as already at the training data's rate and all used.

        Shape: frames uint8 (T, H, W, 3), RGB, T >= 1 (H, W in pixels; resized and cropped as
        the checkpoint's config says).

        Raises:
            UserError: ``top_k`` < 1; a path that is missing or cannot be decoded (the reason
                given), or a path with ``fps``; frames of another type, dtype or shape, or no
                frames; ``fps`` not positive; frames smaller than the crop.
        """
        return self.predict_many([source], top_k=top_k, fps=fps, workers=0)[0]

    def predict_many(self, sources: Sequence[Source], top_k: int = 5,
                     fps: float | None = None, workers: int = 2) -> list[Prediction]:
        """:meth:`predict` for several sources, in order; views of several sources share
        forward passes and video files are decoded in ``workers`` DataLoader workers (as in
        ``vcorr predict --workers``; 0: in this process). ``fps`` applies to every frame
        sequence among them.

        Raises:
            UserError: as :meth:`predict`, naming the first source that failed (by path, or
                by its position in ``sources``); nothing is run if a source is malformed.
        """
        if not isinstance(top_k, int) or top_k < 1:
            raise UserError(f"top_k must be a positive integer, got {top_k!r}")
        if fps is not None and not fps > 0:
            raise UserError(f"fps must be positive (frames per second of the frames), got {fps}")
        if isinstance(sources, (str, os.PathLike, np.ndarray, torch.Tensor)):
            raise UserError("predict_many takes a list of sources; use predict for one")
        paths: dict[int, str] = {}
        arrays: dict[int, np.ndarray] = {}
        for i, src in enumerate(sources):
            if isinstance(src, (str, os.PathLike)):
                if fps is not None:
                    raise UserError(f"{src}: fps is for frames; a video is sampled by its own "
                                    "timestamps")
                paths[i] = os.fspath(src)
            else:
                arrays[i] = as_frames(src, f"source {i}" if len(sources) > 1 else "frames")
        scores: dict[int, tuple[np.ndarray, dict[str, Any]]] = {}
        inf = self.inference
        kw = {"crops": self.crops, "max_views": self.max_views, "device": self.device,
              "amp": self.amp}
        if paths:
            order = list(paths)
            r = run_raw_videos(inf, [paths[i] for i in order], workers=workers, **kw)
            for i, v in zip(order, r["videos"]):
                if v["error"]:
                    raise UserError(f"{paths[i]}: {v['error']}")
                scores[i] = (v["groups"][WHOLE].numpy(), v["info"])
        if arrays:
            order = list(arrays)
            items = _items_of(inf.spec, [arrays[i] for i in order], fps)
            r = run_clip_items(inf, items, len(order), workers=0, **kw)
            for i, v in zip(order, r["videos"]):
                if v["error"]:
                    what = f"source {i}" if len(sources) > 1 else "frames"
                    raise UserError(f"{what}: {v['error']}")
                scores[i] = (v["groups"][WHOLE].numpy(), v["info"])
        k = min(top_k, len(inf.classes))
        return [Prediction(top_classes(sc, inf.classes, k), sc, inf.classes, info)
                for sc, info in (scores[i] for i in range(len(sources)))]


def as_frames(source: Any, what: str = "frames") -> np.ndarray:
    """``source`` as frames: a uint8 (T, H, W, 3) numpy array or torch tensor (as it is), or a
    list of PIL images (each converted to RGB, stacked).

    Shape: -> uint8 (T, H, W, 3), RGB, T >= 1.

    Raises:
        UserError: another type, dtype or shape; no frames; images of different sizes.
    """
    expected = "a uint8 array (T, H, W, 3) of RGB frames, a list of PIL images or a video path"
    if isinstance(source, torch.Tensor):
        source = source.detach().cpu().numpy()
    if isinstance(source, (list, tuple)):
        if not source:
            raise UserError(f"{what}: an empty list, no frame to predict")
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - Pillow comes with torchvision
            Image = None
        if Image is None or not all(isinstance(im, Image.Image) for im in source):
            bad = next((type(im).__name__ for im in source
                        if Image is None or not isinstance(im, Image.Image)), "?")
            raise UserError(f"{what}: expected {expected}; the list holds a {bad}")
        images = [np.asarray(im.convert("RGB")) for im in source]
        sizes = {im.shape for im in images}
        if len(sizes) > 1:
            first = images[0].shape
            j = next(j for j, im in enumerate(images) if im.shape != first)
            raise UserError(f"{what}: the images differ in size: image 0 is "
                            f"{first[1]}x{first[0]}, image {j} is {images[j].shape[1]}x"
                            f"{images[j].shape[0]} (width x height, pixels)")
        source = np.stack(images)
    if not isinstance(source, np.ndarray):
        raise UserError(f"{what}: expected {expected}, got {type(source).__name__}")
    if source.dtype != np.uint8 or source.ndim != 4 or source.shape[-1] != 3:
        raise UserError(f"{what}: expected a uint8 array (T, H, W, 3) of RGB frames, got "
                        f"{source.dtype} {tuple(source.shape)}")
    if source.shape[0] == 0 or source.shape[1] == 0 or source.shape[2] == 0:
        raise UserError(f"{what}: no frames to predict, shape {tuple(source.shape)}")
    return source


def stored_frames(count: int, sampling: Sampling, fps: float | None
                  ) -> tuple[np.ndarray, np.ndarray, float]:
    """The frames of a sequence of ``count`` frames that the training data's selection
    keeps, as on a constant-rate video at ``fps`` (frames per second; None: all frames, the
    sequence being at the training data's rate already).

    Returns (frame numbers, their times in seconds, the duration in seconds); without
    ``fps`` the times count at the training rate (``sampling.fps``; for ``every`` sampling,
    where the rate is not known, one frame per second: only the order matters then).
    Shape: two (S,) arrays.
    """
    if fps is None:
        rate = float(sampling.fps or 1.0)
        numbers = np.arange(count, dtype=np.int64)
        return numbers, numbers / rate, count / rate
    info = VideoInfo("<frames>", np.arange(count) / float(fps), count / float(fps), 0, 0,
                     nominal_rate=float(fps))
    numbers, times = sampled_frames(info, sampling)
    return numbers, times, info.duration


def frame_items(index: int, frames: np.ndarray, spec: ClipSpec,
                fps: float | None = None) -> Iterator[dict[str, Any]]:
    """The whole-video clip item and the closing item of frames in memory, as
    :func:`vcorr.pipelines.predict.loader.video_items` makes them of a decoded video: the
    stored frames (:func:`stored_frames`), the test clips placed over them
    (:func:`plan_groups`), each used frame resized once (:func:`resize_frames`).

    Shape: ``frames`` uint8 (T, H, W, 3); the item's ``clips`` uint8 (N, C, T', H', W').
    """
    numbers, times, duration = stored_frames(len(frames), spec.sampling, fps)
    info = {"frames": len(frames), "stored_frames": len(numbers),
            "fps": fps, "duration": round(duration, 6) if fps else None}
    group = plan_groups(numbers, times, duration, sampler=spec.sampler, frames=spec.frames,
                        interval=spec.interval, clips=spec.clips,
                        short_video=spec.short_video)[0]
    used = sorted({n for c in group.clips for n in c})
    resized = dict(zip(used, resize_frames(frames[used], spec.short_side)))
    clips = torch.stack([torch.stack([resized[n] for n in c], dim=1) for c in group.clips])
    yield {"video": index, "key": group.key, "start": group.start, "end": group.end,
           "clips": clips}
    yield {"video": index, "done": True, "groups": 1, "error": "", "info": info}


def _items_of(spec: ClipSpec, arrays: list[np.ndarray],
              fps: float | None) -> Iterator[dict[str, Any]]:
    for i, frames in enumerate(arrays):
        yield from frame_items(i, frames, spec, fps)
