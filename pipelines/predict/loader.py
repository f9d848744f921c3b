"""Raw videos to test clips, in DataLoader workers.

Each worker takes the next video not yet taken (a shared counter, so one long video does not
hold up a queue of short ones), plans its clips (:mod:`vcorr.pipelines.predict.plan`), decodes only
the frames they use through the decoding layer, resizes each such frame once (short side, with
antialiasing, as ``vcorr eval`` resizes stored frames) and hands out each group of clips (the
whole video, a window) as soon as its frames are decoded, then one closing item per video. A
frame is dropped once no group still to come needs it, so a long video with many windows never
sits in memory whole. In a worker the decoder runs in a thread feeding a bounded queue; in the
main process (``workers=0``) a video's groups are collected first, because the decoding layer
captures the process's stderr while it decodes (a progress bar drawn meanwhile would vanish).
"""
from __future__ import annotations

import multiprocessing
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from vcorr.pipelines.data.decode import (
    NO_FRAME,
    FrameChunk,
    VideoError,
    VideoReader,
    first_line,
)
from vcorr.pipelines.predict.plan import Group, Sampling, plan_groups, sampled_frames


@dataclass(frozen=True)
class ClipSpec:
    """What a worker needs to cut clips: the training data's sampling, the clip (sampler,
    frames, interval), test clips per group, windows (seconds; None: whole videos only) and the
    short side to resize to (None keeps the decoded size)."""

    sampling: Sampling
    sampler: str
    frames: int
    interval: int
    clips: int
    short_side: int | None
    window: float | None = None
    stride: float | None = None
    short_video: str = "loop"  # the training config's data.short_video (dense clips)


def resize_frames(frames: np.ndarray, short_side: int | None) -> torch.Tensor:
    """Frames with the short side resized to ``short_side`` pixels (antialiased, as
    torchvision's ``v2.Resize(short_side)``; None keeps the size).

    Shape: uint8 (N, H, W, 3) -> uint8 (N, 3, H', W')."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    if short_side and min(x.shape[-2:]) != short_side:
        x = TF.resize(x, [short_side], antialias=True)
    return x.contiguous()


def video_items(index: int, path: str | Path, spec: ClipSpec,
                emit: Callable[[dict[str, Any]], None]) -> None:
    """Decode one video and ``emit`` its groups, then a closing item (see the module
    docstring). Never raises for a bad video: the closing item carries the reason.

    Items: ``{"video", "key", "start", "end", "clips"}`` per group (start and end in seconds);
    ``{"video", "reset": True}`` when the groups emitted so far are void (below); closing:
    ``{"video", "done": True, "groups": emitted since the last reset, "error": "" or reason,
    "info"}``.

    A stream that ends early (a truncated or damaged file whose header announces more frames
    than decode) is planned again over the frames that did decode and read a second time, so
    its clips cover what the file holds, as ``prepare`` stores such a file; the closing item's
    ``info["warning"]`` says what was missing.

    Shape: ``clips`` uint8 (N, C, T, H, W), N clips of the group.
    """
    emitted = 0
    info_out: dict[str, Any] = {}

    def decode(reader: VideoReader, numbers: np.ndarray, times: np.ndarray,
               duration: float) -> tuple[list[Group], Any, dict[int, torch.Tensor]]:
        """Plan the groups over (numbers, times), decode, emit each group once complete;
        return the groups left incomplete, the decode report and the frames still kept."""
        nonlocal emitted
        groups = plan_groups(numbers, times, duration, sampler=spec.sampler,
                             frames=spec.frames, interval=spec.interval, clips=spec.clips,
                             window=spec.window, stride=spec.stride,
                             short_video=spec.short_video)
        # Groups in the order their last frame is decoded; how many groups use each frame.
        todo = sorted(groups, key=lambda g: max(max(c) for c in g.clips))
        uses: dict[int, int] = {}
        for g in todo:
            for n in {n for c in g.clips for n in c}:
                uses[n] = uses.get(n, 0) + 1
        kept: dict[int, torch.Tensor] = {}

        def ready(g: Group) -> bool:
            return all(n in kept for c in g.clips for n in c)

        def on_chunk(chunk: FrameChunk) -> None:
            nonlocal emitted
            for n, frame in zip(chunk.numbers, resize_frames(chunk.frames, spec.short_side)):
                kept[n] = frame
            while todo and ready(todo[0]):
                g = todo.pop(0)
                clips = torch.stack([torch.stack([kept[n] for n in c], dim=1) for c in g.clips])
                emit({"video": index, "key": g.key, "start": g.start, "end": g.end,
                      "clips": clips})
                emitted += 1
                for n in {n for c in g.clips for n in c}:
                    uses[n] -= 1
                    if uses[n] == 0:
                        del kept[n]

        report = reader.decode(on_chunk, indices=sorted(uses))
        return todo, report, kept

    try:
        reader = VideoReader(path, folder_fps=spec.sampling.folder_fps)
        info = reader.info
        info_out = {"duration": round(info.duration, 6), "frames": info.num_frames,
                    "fps": round(info.fps, 6), "variable_rate": info.variable_rate,
                    "height": info.height, "width": info.width}
        numbers, times = sampled_frames(info, spec.sampling)
        if not len(numbers):
            raise VideoError(NO_FRAME, "no frame at the training data's rate")
        todo, report, kept = decode(reader, numbers, times, info.duration)
        warning = report.problem() or ""
        if todo and 0 < report.frames_decoded < report.frames_expected:
            # The stream ended early: plan again over the frames it holds (those before the
            # first frame that did not decode, by number and by time).
            keep = (numbers < report.frames_decoded) & (times < report.stream_end)
            if keep.any():
                if emitted:
                    emit({"video": index, "reset": True})
                    emitted = 0
                info_out["duration_decoded"] = round(report.stream_end, 6)
                todo, report, kept = decode(reader, numbers[keep], times[keep],
                                            report.stream_end)
        info_out.update(decoder=report.decoder, warning=warning)
        if todo:
            missing = min(n for c in todo[0].clips for n in c if n not in kept)
            raise VideoError(NO_FRAME, f"frame {missing} of {info.num_frames} did not decode "
                                       f"({report.problem() or 'out of range'})")
        error = ""
    except VideoError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - a bug of ours must not stop a run over many videos
        error = f"internal error: {type(exc).__name__}: {first_line(exc)}"
    emit({"video": index, "done": True, "groups": emitted, "error": error, "info": info_out})


_END = object()


def _threaded(index: int, path: str | Path, spec: ClipSpec) -> Iterator[dict[str, Any]]:
    """:func:`video_items` in a thread, its items through a bounded queue (the decoder waits
    while the consumer is behind)."""
    q: queue.Queue = queue.Queue(maxsize=4)

    def run() -> None:
        try:
            video_items(index, path, spec, q.put)
        finally:
            q.put(_END)

    threading.Thread(target=run, daemon=True).start()
    while (item := q.get()) is not _END:
        yield item


class RawVideos(torch.utils.data.IterableDataset):
    """Test clips of raw videos (see the module docstring); iterate through a DataLoader with
    ``batch_size=None``."""

    def __init__(self, paths: Sequence[str | Path], spec: ClipSpec) -> None:
        self.paths, self.spec = [str(p) for p in paths], spec
        self._next = multiprocessing.get_context().Value("l", 0)

    def _claim(self) -> int:
        with self._next.get_lock():
            index = self._next.value
            self._next.value += 1
        return index

    def __iter__(self) -> Iterator[dict[str, Any]]:
        in_worker = torch.utils.data.get_worker_info() is not None
        while (index := self._claim()) < len(self.paths):
            if in_worker:
                yield from _threaded(index, self.paths[index], self.spec)
            else:
                items: list[dict[str, Any]] = []
                video_items(index, self.paths[index], self.spec, items.append)
                yield from items
