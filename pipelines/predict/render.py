"""What ``vcorr predict`` shows of a video's windows: the timeline figure and the rendered video
with the current window's top-3 labels drawn on every frame."""
from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from vcorr.pipelines.data.decode import FrameChunk, VideoReader
from vcorr.pipelines.data.video_io import TimedVideoWriter

TIMELINE_CLASSES = 5


def timeline_classes(scores: np.ndarray, limit: int = TIMELINE_CLASSES) -> list[int]:
    """Classes a timeline plots, at most ``limit``: those ranked first in some window (highest
    peak first), then those of highest mean probability. Shape: ``scores`` (windows, K)."""
    first = sorted(set(scores.argmax(1).tolist()), key=lambda c: -scores[:, c].max())[:limit]
    rest = [int(c) for c in np.argsort(-scores.mean(0), kind="stable") if c not in first]
    return [int(c) for c in first] + rest[:max(0, min(limit, scores.shape[1]) - len(first))]


def timeline_figure(path: Path, starts: Sequence[float], ends: Sequence[float],
                    scores: np.ndarray, classes: Sequence[str], title: str) -> None:
    """PNG of the probabilities of :func:`timeline_classes` over time: one step per window,
    flat from its start to its end (overlapping windows: drawn at their centres)."""
    from vcorr.pipelines.visualize.figures import plt, save

    p = plt()
    starts, ends = np.asarray(starts, float), np.asarray(ends, float)
    fig, ax = p.subplots(figsize=(10, 3.6))
    overlap = len(starts) > 1 and bool(np.any(starts[1:] < ends[:-1] - 1e-9))
    for c in timeline_classes(scores):
        if overlap:
            ax.plot((starts + ends) / 2, scores[:, c], marker=".", label=classes[c])
        else:
            x = np.concatenate([starts, ends[-1:]])
            ax.stairs(scores[:, c], x, baseline=None, label=classes[c], linewidth=1.8)
    ax.set_xlim(0, float(ends.max()))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("probability")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    save(fig, path, [])


def _label_lines(scores: np.ndarray, classes: Sequence[str], k: int = 3) -> list[str]:
    top = np.argsort(-scores, kind="stable")[:k]
    return [f"{classes[c]}  {100 * scores[c]:.0f}%" for c in top]


def _draw(frame: np.ndarray, lines: list[str], font) -> np.ndarray:
    """``lines`` in white on a dark translucent box in the top-left corner of ``frame``."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(frame).convert("RGBA")
    layer = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    pad = max(2, font.size // 4)
    height = font.size + pad
    width = max(draw.textlength(t, font=font) for t in lines)
    draw.rectangle((0, 0, width + 2 * pad, len(lines) * height + pad), fill=(0, 0, 0, 150))
    for i, text in enumerate(lines):
        draw.text((pad, pad + i * height), text, font=font, fill=(255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(img, layer).convert("RGB"))


def render_video(src: str | Path, out: Path, starts: Sequence[float], scores: np.ndarray,
                 classes: Sequence[str], folder_fps: float = 12.0) -> int:
    """Write ``out`` (H.264 mp4): every frame of ``src`` (display orientation), with the top-3
    classes of the window it lies in (the latest window that starts at or before the frame's
    time) drawn in its top-left corner. Frames keep their presentation times: a variable-rate
    video stays variable-rate (:class:`TimedVideoWriter`). Returns the frames written.

    Shape: ``scores`` (windows, K), ``starts`` (windows,) in seconds.

    Raises:
        VideoError: the video cannot be decoded.
        RuntimeError: ffmpeg failed.
    """
    from PIL import ImageFont

    reader = VideoReader(src, folder_fps=folder_fps)
    info = reader.info
    if info.nominal_rate:  # constant rate: exact timestamps k / rate
        rate = Fraction(info.nominal_rate).limit_denominator(100_000)
        time_base = 1 / rate
    else:  # the last frame lasts as long as in the source
        last = info.duration - float(info.times[-1])
        rate = Fraction(1 / last if last > 0 else max(info.fps, 1.0)).limit_denominator(100_000)
        time_base = Fraction(1, 1_000_000)
    font = ImageFont.load_default(size=max(10, info.height // 18))
    labels = [_label_lines(s, classes) for s in scores]
    starts = np.asarray(starts, float)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.mp4")
    written = 0
    try:
        with TimedVideoWriter(tmp, info.height, info.width, rate, time_base) as writer:
            def on_chunk(chunk: FrameChunk) -> None:
                nonlocal written
                for frame, t in zip(chunk.frames, chunk.times):
                    w = max(0, int(np.searchsorted(starts, t + 1e-9, side="right")) - 1)
                    writer.write(_draw(frame, labels[w], font), t)
                    written += 1

            reader.decode(on_chunk)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return written
