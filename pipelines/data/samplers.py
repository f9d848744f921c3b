"""Which frames of a video a clip uses.

Two samplers, each with a random draw for training and deterministic views for testing:

- :class:`DenseSampler`: ``frames`` consecutive samples ``interval`` apart (C2D/C3D/CPNet
  style clips); training draws a random start; testing spaces ``num_clips`` clips evenly over
  the whole video.
- :class:`SegmentSampler`: TSN's segments: the video is cut into ``frames`` equal segments
  and one frame is taken from each: random in training, the centre in testing (``num_clips``
  views shift the pick evenly inside every segment).

Videos shorter than a dense clip's span (``short_video``):

- ``loop`` (default): index ``i`` reads frame ``i mod n``; the clip jumps from the last frame
  back to the first, a scene cut.
- ``repeat``: the n frames are stretched over the span, each repeated about ``span / n``
  times (position p of the span reads frame ``floor(p * n / span)``): CorrNet Sec. 5, "Some
  videos in Something do not have enough frames. We simply repeat each frame twice for those
  videos." No jump, so a correlation layer sees no false motion.

The segment sampler needs neither: its segments shrink with the video and repeat frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


SHORT_VIDEO = ("loop", "repeat")


@dataclass(frozen=True)
class DenseSampler:
    frames: int
    interval: int = 1
    short_video: str = "loop"  # videos shorter than the span: "loop" or "repeat" (see above)

    def __post_init__(self) -> None:
        if self.short_video not in SHORT_VIDEO:
            raise ValueError(f"short_video must be one of {SHORT_VIDEO}, got {self.short_video!r}")

    @property
    def span(self) -> int:
        """Number of source frames a clip covers."""
        return (self.frames - 1) * self.interval + 1

    def _clip(self, n: int, start: int) -> list[int]:
        if self.short_video == "repeat" and n < self.span:
            return [k * self.interval * n // self.span for k in range(self.frames)]
        return [(start + k * self.interval) % n for k in range(self.frames)]

    def train(self, n: int, rng: np.random.Generator) -> list[int]:
        """One clip with a random start."""
        start = int(rng.integers(0, n - self.span + 1)) if n > self.span else 0
        return self._clip(n, start)

    def test(self, n: int, num_clips: int = 1) -> list[list[int]]:
        """``num_clips`` clips with starts evenly spaced from the first to the last possible
        start (one clip: the centred one)."""
        room = max(n - self.span, 0)
        if num_clips == 1:
            starts = [room // 2]
        else:
            starts = [int(round(i * room / (num_clips - 1))) for i in range(num_clips)]
        return [self._clip(n, s) for s in starts]


@dataclass(frozen=True)
class SegmentSampler:
    frames: int

    def train(self, n: int, rng: np.random.Generator) -> list[int]:
        """A random frame from each of ``frames`` equal segments."""
        edges = np.linspace(0, n, self.frames + 1)
        picks = edges[:-1] + rng.random(self.frames) * (edges[1:] - edges[:-1])
        return [int(p) % n for p in np.floor(picks)]

    def test(self, n: int, num_clips: int = 1) -> list[list[int]]:
        """For view ``v`` of ``num_clips``, the frame at fraction (v + 0.5) / num_clips of
        every segment (one view: the segment centres)."""
        seg = n / self.frames
        return [[int((k + (v + 0.5) / num_clips) * seg) % n for k in range(self.frames)]
                for v in range(num_clips)]


def make_sampler(kind: str, frames: int, interval: int = 1,
                 short_video: str = "loop") -> DenseSampler | SegmentSampler:
    """Sampler by name: ``dense`` (alias ``interval``) or ``segment`` (alias ``tsn``);
    ``short_video`` is the dense sampler's policy for videos shorter than a clip."""
    if kind in ("dense", "interval"):
        return DenseSampler(frames, interval, short_video)
    if kind in ("segment", "tsn"):
        return SegmentSampler(frames)
    raise ValueError(f"unknown sampler {kind!r}; use 'dense' or 'segment'")
