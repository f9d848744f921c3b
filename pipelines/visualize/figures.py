"""Shared figure helpers: matplotlib (Agg) setup, flow colouring, atomic PNG and GIF output."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from vcorr.pipelines.fileio import write_atomic

# Figures stay readable in any viewer: at most this wide (pixels at DPI).
MAX_WIDTH_PX = 2500
DPI = 100


def plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as pyplot

    return pyplot


def flow_colors(flows: np.ndarray, max_radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Colour (N, H, W, 3) uint8 of flows (N, 2, H, W) (u=x, v=y) with the flow colour wheel of
    :func:`torchvision.utils.flow_to_image`, on a fixed scale (``max_radius`` is the edge of
    the wheel), and the wheel itself as a (65, 65, 3) legend image.

    ``flow_to_image`` scales by the largest vector of its whole input; a legend disk of radius
    ``max_radius`` is colourised in the same call, so every frame and the legend share one scale.
    """
    from torchvision.utils import flow_to_image

    r = 32
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float32)
    inside = (xx ** 2 + yy ** 2) <= r * r
    wheel = np.stack([xx, yy]) * (max_radius / r) * inside
    n, _, h, w = flows.shape
    flows = np.clip(flows, -max_radius, max_radius)
    batch = [torch.from_numpy(np.ascontiguousarray(f, dtype=np.float32)) for f in flows]
    # One call on a padded batch: flow_to_image normalises by the max over the whole batch.
    side_h, side_w = max(h, 2 * r + 1), max(w, 2 * r + 1)
    stack = torch.zeros(n + 1, 2, side_h, side_w)
    for i, f in enumerate(batch):
        stack[i, :, :h, :w] = f
    stack[n, :, :2 * r + 1, :2 * r + 1] = torch.from_numpy(wheel)
    img = flow_to_image(stack).permute(0, 2, 3, 1).numpy()
    legend = img[n, :2 * r + 1, :2 * r + 1].copy()
    legend[~inside] = 255
    return img[:n, :h, :w].copy(), legend


def save(fig, path: Path, written: list[Path], dpi: int = DPI) -> None:
    """Render ``fig`` in the format of ``path``'s suffix, write it atomically (a reader never
    sees half a figure), close it and record ``path`` in ``written``."""
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=dpi)
    plt().close(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())
    written.append(path)


def frames_grid(rows: int, cols: int, aspect: float = 1.0, extra_col: bool = False,
                max_panel: float = 3.0):
    """A figure of rows x cols image panels of height/width ``aspect`` (+1 narrow column for a
    legend), the panels as wide as fits :data:`MAX_WIDTH_PX` (at most ``max_panel`` inches,
    at :data:`DPI`). Returns (figure, axes array (rows, cols [+1]))."""
    p = plt()
    legend = 1.3 if extra_col else 0.0
    margin = 0.9  # row labels on the left, padding
    panel = min(max_panel, (MAX_WIDTH_PX / DPI - legend - margin) / max(cols, 1))
    aspect = min(max(aspect, 0.3), 3.0)  # extreme shapes still leave room for the row
    ratios = [1.0] * cols + ([legend / panel] if extra_col else [])
    fig, axes = p.subplots(rows, cols + (1 if extra_col else 0),
                           figsize=(panel * cols + legend + margin,
                                    (panel * aspect + 0.45) * rows + 0.5),
                           squeeze=False, gridspec_kw={"width_ratios": ratios},
                           layout="constrained")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def write_gif(images: Sequence[np.ndarray], path: Path, written: list[Path],
              ms_per_frame: int = 400) -> None:
    """Animated GIF (PIL) of uint8 (H, W, 3) images, looping."""
    from PIL import Image

    if not images:
        return
    pil = [Image.fromarray(np.ascontiguousarray(im)) for im in images]
    buf = io.BytesIO()
    pil[0].save(buf, format="GIF", save_all=True, append_images=pil[1:],
                duration=ms_per_frame, loop=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, buf.getvalue())
    written.append(path)


def grey(frame: np.ndarray) -> np.ndarray:
    """``frame`` (H, W, 3) uint8 in grey (luma, ITU-R BT.601), its contrast halved: what a
    figure shows where it has nothing to say (darker than the white of zero motion)."""
    y = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.repeat((0.5 * y + 45).clip(0, 255).astype(np.uint8)[..., None], 3, axis=2)


def blend(frame: np.ndarray, color: np.ndarray, alpha: float | np.ndarray = 0.6) -> np.ndarray:
    """``frame`` with ``color`` laid over it (same size, uint8); alpha scalar or (H, W)."""
    a = np.asarray(alpha, dtype=np.float32)
    if a.ndim == 2:
        a = a[..., None]
    out = frame.astype(np.float32) * (1 - a) + color.astype(np.float32) * a
    return out.clip(0, 255).astype(np.uint8)


def upsample_nearest(img: np.ndarray, h: int, w: int) -> np.ndarray:
    """Nearest-neighbour resize of (h0, w0, ...) to (h, w, ...)."""
    h0, w0 = img.shape[:2]
    ys = np.minimum((np.arange(h) * h0) // h, h0 - 1)
    xs = np.minimum((np.arange(w) * w0) // w, w0 - 1)
    return img[ys][:, xs]
