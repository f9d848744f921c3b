"""Dominant displacements of correlation volumes (DCF Figs 4-5).

For a correlation volume (channel ``p*G*K*K + g*K*K + iy*K + ix``, see
:mod:`vcorr.models.ops.correlation`), the volume of one temporal offset ``tau`` is summed over the
groups and the argmax over the K x K displacements is taken at every position. Correlating
frame ``t`` with frame ``t + tau`` at displacement ``(dy, dx)`` means that the content at
``(y, x)`` in frame t is found at ``(y + dy, x + dx)`` in frame t + tau, so the shown *motion*
is ``sign(tau) * (dy, dx)`` (for tau = -1: where the content came from, reversed, i.e. the
motion from t-1 to t), in input pixels (feature displacements times the stage's stride).
Colours are those of :func:`torchvision.utils.flow_to_image` on one fixed scale per stage
(the edge of the colour wheel is the largest displacement the stage can express).

``--pixels`` needs no model: per-pixel features are zero-mean, unit-norm P x P RGB patches and
each frame is correlated with the previous one (cosine similarity of patches); exact ties
(flat regions) resolve to zero motion.

A displacement is shown only where the peak stands out: its *confidence* is the peak score
minus the mean score over the K x K displacements at that position (displacements that point
outside the frame are left out of the mean). Flat regions (all scores equal) have 0, sensor
noise little (5 x 5 patches of pure noise: median 0.27, 99th percentile 0.41), a textured or
moving surface much more. For ``--pixels`` it is in cosine-similarity units (at most 2); a
model's scores have no fixed scale, so there it is divided by the median best score |peak| of
the stage over the clip. Below the threshold (``--min-confidence``, default
:data:`MIN_CONFIDENCE`) the frame is shown in grey. A displacement that beats the zero
displacement by no more than :data:`ZERO_TIE` (same units) is taken as no motion: on a nearly
static scene, noise otherwise makes neighbouring displacements win by hair's breadths.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vcorr.pipelines.visualize.clip import Clip, LoadedModel, model_input, shown_frames
from vcorr.pipelines.visualize.figures import (blend, flow_colors, frames_grid, grey, save,
                                               upsample_nearest, write_gif)

# Default --min-confidence (peak minus mean over the K x K grid): above what pure noise reaches
# with 5 x 5 patches (median 0.27, 99th percentile 0.41, cosine units), below what a moving
# textured object in a compressed phone-size video reaches (10th percentile 0.64; generated
# 720x1280 H.264 clips shrunk to the default 128 px short side).
MIN_CONFIDENCE = 0.5
# A displacement that beats the zero displacement by at most this (same units as the
# confidence) counts as no motion. On a nearly static phone-size scene (smooth walls, sensor
# noise) the best non-zero displacement beats zero by 0.012 (median) to 0.058 (99th
# percentile) in cosine units: 86% of the picture was colour speckle, 1.3% with
# MIN_CONFIDENCE alone, 0.00% with this too; a moving textured object keeps 96.5% of its
# pixels shown with the right motion (96.8% without).
ZERO_TIE = 0.05


@dataclass
class Stage:
    """One row of the figure: motion (T', 2, h, w) in input pixels (u = x, v = y), confidence
    (T', h, w) (peak minus mean over the K x K grid, see the module docstring), the largest
    expressible motion, and for each of the T' maps the clip frame it belongs to."""

    title: str
    flow: np.ndarray
    confidence: np.ndarray
    max_radius: float
    frame_of: list[int]


# --- the volume -> motion step ----------------------------------------------------------------

def dominant_displacement(volume: torch.Tensor, kernel_size: int, dilation: int, tau: int,
                          zero_tie: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Motion (T, 2, H, W) (u = x, v = y, feature pixels) and best score (T, H, W) of a
    one-offset volume (K*K, T, H, W) (groups already summed). Ties go to the zero
    displacement (a tiny bonus on the centre), and so does a displacement that beats it by
    at most ``zero_tie`` (volume units): noise must not pass for motion."""
    k, r = kernel_size, kernel_size // 2
    v = volume.float().clone()
    v[r * k + r] += 1e-6 * (v.abs().amax(dim=0) + 1e-12)
    best, arg = v.max(dim=0)
    if zero_tie > 0:
        arg = torch.where(best - v[r * k + r] <= zero_tie, r * k + r, arg)
    dy = (arg // k - r) * dilation
    dx = (arg % k - r) * dilation
    sign = 1 if tau > 0 else -1
    flow = torch.stack([dx, dy], dim=1).float() * sign        # (T, 2, H, W)
    return flow, best


def peak_margin(volume: torch.Tensor, kernel_size: int, dilation: int) -> torch.Tensor:
    """How far the best score stands out: max minus mean over the K*K displacements of a
    one-offset volume (K*K, T, H, W) -> (T, H, W), in the volume's units (0 where all the
    scores are equal). The mean leaves out displacements that point outside the frame
    (zero-padded: a 0 there would make every peak near the border look distinct)."""
    k, r = kernel_size, kernel_size // 2
    v = volume.float()
    _, _, h, w = v.shape
    d = (torch.arange(k) - r) * dilation
    ys, xs = torch.arange(h), torch.arange(w)
    ok_y = ((ys[None] + d[:, None]) >= 0) & ((ys[None] + d[:, None]) < h)   # (K, H)
    ok_x = ((xs[None] + d[:, None]) >= 0) & ((xs[None] + d[:, None]) < w)   # (K, W)
    valid = (ok_y[:, None, :, None] & ok_x[None, :, None, :]).reshape(k * k, 1, h, w)
    mean = (v * valid).sum(dim=0) / valid.sum(dim=0)
    return v.amax(dim=0) - mean


def offset_volume(volume: torch.Tensor, offsets: tuple[int, ...], groups: int, kernel_size: int,
                  p: int) -> torch.Tensor:
    """(B, P*G*K*K, T, H, W) -> the volume of offset index p, summed over groups: (K*K, T, H, W)
    of the first batch item."""
    kk = kernel_size ** 2
    b, c, t, h, w = volume.shape
    v = volume[0].reshape(len(offsets), groups, kk, t, h, w)
    return v[p].sum(dim=0)


# --- --pixels --------------------------------------------------------------------------------

def pixel_features(frames: np.ndarray, patch: int = 5) -> torch.Tensor:
    """uint8 (T, H, W, 3) -> (1, 3*P*P, T, H, W): zero-mean, unit-L2-norm P x P RGB patches
    (replicate-padded at the borders; flat patches are zero vectors)."""
    if patch < 1 or patch % 2 == 0:
        raise ValueError(f"patch must be a positive odd number, got {patch}")
    x = torch.from_numpy(np.ascontiguousarray(frames)).float().div(255).permute(0, 3, 1, 2)
    t, c, h, w = x.shape
    pad = patch // 2
    xp = F.pad(x, (pad, pad, pad, pad), mode="replicate") if pad else x
    cols = F.unfold(xp, patch)                                   # (T, 3*P*P, H*W)
    cols = cols - cols.mean(dim=1, keepdim=True)
    norm = cols.norm(dim=1, keepdim=True)
    cols = torch.where(norm > 1e-3, cols / norm.clamp_min(1e-12), torch.zeros_like(cols))
    return cols.view(t, -1, h, w).transpose(0, 1).unsqueeze(0).contiguous()


def pixel_correlation(frames: np.ndarray, patch: int = 5, kernel_size: int = 9,
                      dilation: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Motion (T, 2, H, W) from frame t-1 to t (pixels; frame 0: zero) and its confidence
    (T, H, W): the best match's cosine similarity minus the mean over the K x K grid (frame
    0, which has no previous frame: 0), by correlating normalised patches of uint8 frames
    (T, H, W, 3)."""
    from vcorr.models.ops.correlation import correlation

    feat = pixel_features(frames, patch)
    vol = correlation(feat, None, kernel_size=kernel_size, offsets=(-1,), dilations=dilation,
                      clip_ends="self", scale=1.0)
    flow, _ = dominant_displacement(vol[0], kernel_size, dilation, -1, zero_tie=ZERO_TIE)
    margin = peak_margin(vol[0], kernel_size, dilation)
    flow[0] = 0
    margin[0] = 0
    return flow.numpy(), margin.numpy()


# --- model correlation modules -------------------------------------------------------------------

def correlation_modules(model: nn.Module) -> list[tuple[str, nn.Module, dict]]:
    """(name, module, geometry) of every correlation operator in ``model``, in network order.
    geometry: kernel_size, offsets, dilations, groups."""
    from vcorr.models.dcf import DCFCorrelation
    from vcorr.models.ops.correlation import DenseCorrelation, LearnableCorrelation, dcf_offsets

    found = []
    for name, m in model.named_modules():
        if isinstance(m, LearnableCorrelation):
            geo = dict(kernel_size=m.kernel_size, offsets=(-1,), dilations=(m.dilation,),
                       groups=m.groups)
        elif isinstance(m, DenseCorrelation):
            offs = dcf_offsets(m.temporal_range)
            geo = dict(kernel_size=m.kernel_size, offsets=offs,
                       dilations=tuple(m.dilation * abs(o) for o in offs), groups=m.groups)
        elif isinstance(m, DCFCorrelation):
            geo = dict(kernel_size=m.kernel_size, offsets=tuple(m.offsets),
                       dilations=tuple(m.dilation * abs(o) for o in m.offsets), groups=1)
        else:
            continue
        found.append((name, m, geo))
    return found


@torch.no_grad()
def model_stages(model: nn.Module, x: torch.Tensor, offset: int | None = None) -> list[Stage]:
    """Run ``model`` on ``x`` (1, 3, T, H, W) and turn each correlation module's volume into a
    :class:`Stage` (offset -1 where the module has it, else its first; or ``offset``)."""
    from vcorr.pipelines.errors import UserError

    mods = correlation_modules(model)
    if not mods:
        raise UserError("the model has no correlation modules (CorrNet / DCF models have)")
    captured: dict[str, torch.Tensor] = {}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: captured.__setitem__(n, out))
             for n, m, _ in mods]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    t_in, h_in, w_in = x.shape[2:]
    stages = []
    for name, _, geo in mods:
        if name not in captured:
            continue
        vol = captured[name].float()
        offs = geo["offsets"]
        tau = offset if offset is not None else (-1 if -1 in offs else offs[0])
        if tau not in offs:
            raise UserError(f"{name}: offset {tau} not among its offsets {offs}")
        p = offs.index(tau)
        v = offset_volume(vol, offs, geo["groups"], geo["kernel_size"], p)
        # No fixed scale: margins as a fraction of the stage's typical best score.
        unit = v.amax(dim=0).abs().median().clamp_min(1e-12)
        flow, best = dominant_displacement(v, geo["kernel_size"], geo["dilations"][p], tau,
                                           zero_tie=ZERO_TIE * float(unit))
        t, h, w = best.shape
        sy, sx = h_in / h, w_in / w
        flow[:, 0] *= sx
        flow[:, 1] *= sy
        confidence = peak_margin(v, geo["kernel_size"], geo["dilations"][p]) / unit
        r = (geo["kernel_size"] // 2) * geo["dilations"][p] * max(sx, sy)
        frame_of = [min(t_in - 1, (i * t_in) // t) for i in range(t)]
        title = f"{name} (tau={tau:+d}, {h}x{w}, stride {sx:g})"
        stages.append(Stage(title, flow.numpy(), confidence.numpy(), float(max(r, 1.0)),
                            frame_of))
    return stages


# --- figures -----------------------------------------------------------------------------

def _overlays(clip: Clip, stage: Stage, min_confidence: float
              ) -> tuple[list[np.ndarray], np.ndarray]:
    """Per stage map: the motion colours over the frame where the confidence reaches
    ``min_confidence``, the frame in grey elsewhere; and the colour-wheel legend."""
    colors, legend = flow_colors(stage.flow, stage.max_radius)
    h, w = clip.frames.shape[1:3]
    out = []
    for i, fi in enumerate(stage.frame_of):
        col = upsample_nearest(colors[i], h, w)
        sure = upsample_nearest(stage.confidence[i] >= min_confidence, h, w)[..., None]
        frame = clip.frames[fi]
        out.append(np.where(sure, blend(frame, col, 0.8), grey(frame)))
    return out, legend


def _map_of(stage: Stage, frame: int) -> int:
    """The stage map shown under clip frame ``frame``: the last one that starts at or before it
    (stages with temporal stride have fewer maps than the clip has frames)."""
    return max([i for i, f in enumerate(stage.frame_of) if f <= frame], default=0)


def draw_stages(clip: Clip, stages: list[Stage], out_dir: Path, stem: str,
                animate: bool = False, *, times: list[float] | None = None,
                min_confidence: float = MIN_CONFIDENCE, confidence_unit: str = "") -> list[Path]:
    """``OUT/<stem>.png``: clip frames on top, one row per stage with the dominant motion
    colour-coded over the frames where its confidence reaches ``min_confidence`` (grey
    elsewhere), and the colour wheel as legend; at most
    :data:`vcorr.pipelines.visualize.clip.MAX_COLUMNS` frames (``times``: the frames nearest those
    presentation times, seconds; default evenly spaced), at most
    :data:`vcorr.pipelines.visualize.figures.MAX_WIDTH_PX` wide. ``<stem>.gif`` (``animate``): every
    frame of the clip.

    Raises:
        UserError: ``times`` that do not select frames of the clip
            (:func:`vcorr.pipelines.visualize.clip.shown_frames`).
    """
    written: list[Path] = []
    t = len(clip.frames)
    cols = shown_frames(clip, times)
    h, w = clip.frames.shape[1:3]
    fig, axes = frames_grid(1 + len(stages), len(cols), aspect=h / w, extra_col=True)
    labels = clip.labels()
    n = len(cols)
    for c, j in enumerate(cols):
        axes[0, c].imshow(clip.frames[j])
        axes[0, c].set_title(labels[j], fontsize=8)
    axes[0, 0].set_ylabel("frames", fontsize=8)
    axes[0, n].axis("off")
    per_stage = []
    for r, st in enumerate(stages, start=1):
        imgs, legend = _overlays(clip, st, min_confidence)
        per_stage.append(imgs)
        for c, j in enumerate(cols):
            k = _map_of(st, j)
            axes[r, c].imshow(imgs[k])
            axes[r, c].set_title(f"map of frame t={st.frame_of[k]}", fontsize=8)
        axes[r, 0].set_ylabel(st.title, fontsize=7)
        axes[r, n].imshow(legend)
        axes[r, n].set_title(f"motion\n(wheel edge {st.max_radius:g} px)", fontsize=7)
        axes[r, n].set_xlabel(f"u (x) ->\ngrey: peak - mean\n< {min_confidence:g}", fontsize=7)
        axes[r, n].set_ylabel("v (y, down)", fontsize=7)
    shown = f"{n} of {t} frames" + (" (all in the GIF)" if n < t else "")
    fig.suptitle(f"{clip.name}: dominant displacement (argmax over KxK), coloured where peak "
                 f"- mean over KxK >= {min_confidence:g}{confidence_unit}; {shown}",
                 fontsize=10)
    save(fig, out_dir / f"{stem}.png", written)
    if animate:
        gif = []
        for j in range(t):
            row = [clip.frames[j]]
            for st, imgs in zip(stages, per_stage):
                row.append(imgs[_map_of(st, j)])
            gif.append(np.concatenate(row, axis=1))
        write_gif(gif, out_dir / f"{stem}.gif", written)
    return written


def visualize_pixels(clip: Clip, out_dir: str | Path, *, patch: int = 5, kernel_size: int = 9,
                     dilation: int = 2, animate: bool = False, times: list[float] | None = None,
                     min_confidence: float = MIN_CONFIDENCE) -> list[Path]:
    """``--pixels``: correlation of normalised pixel patches with the previous frame
    (confidence in cosine units; see :func:`draw_stages` for ``times``)."""
    shown_frames(clip, times)  # bad --times fail before the work
    flow, margin = pixel_correlation(clip.frames, patch, kernel_size, dilation)
    st = Stage(f"pixels ({patch}x{patch} patches, K={kernel_size}, dil={dilation})", flow,
               margin, float((kernel_size // 2) * dilation), list(range(len(clip.frames))))
    return draw_stages(clip, [st], Path(out_dir), "correlation_pixels", animate, times=times,
                       min_confidence=min_confidence, confidence_unit=" (cosine)")


def visualize_model_correlation(loaded: LoadedModel, clip: Clip, out_dir: str | Path, *,
                                offset: int | None = None, animate: bool = False,
                                times: list[float] | None = None,
                                min_confidence: float = MIN_CONFIDENCE) -> list[Path]:
    """Every correlation stage of ``loaded.model`` on ``clip`` (confidence as a fraction of
    each stage's median best score; see :func:`draw_stages` for ``times``)."""
    shown_frames(clip, times)
    x = model_input(clip.frames, loaded.normalize)
    stages = model_stages(loaded.model, x, offset)
    return draw_stages(clip, stages, Path(out_dir), "correlation", animate, times=times,
                       min_confidence=min_confidence,
                       confidence_unit=" (x the median best score)")
