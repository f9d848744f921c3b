"""Dominant displacements of correlation volumes (DCF Figs 4-5).

For a correlation volume (channel ``p*G*K*K + g*K*K + iy*K + ix``, see
:mod:`models.ops.correlation`), the volume of one temporal offset ``tau`` is summed over the
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
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.visualize.clip import Clip, LoadedModel, model_input
from pipelines.visualize.figures import (blend, flow_colors, frames_grid, save,
                                         upsample_nearest, write_gif)


@dataclass
class Stage:
    """One row of the figure: motion (T', 2, h, w) in input pixels (u = x, v = y), match
    strength (T', h, w) in [0, 1], the largest expressible motion, and for each of the T'
    maps the clip frame it belongs to."""

    title: str
    flow: np.ndarray
    strength: np.ndarray
    max_radius: float
    frame_of: list[int]


# --- the volume -> motion step ----------------------------------------------------------------

def dominant_displacement(volume: torch.Tensor, kernel_size: int, dilation: int, tau: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Motion (T, 2, H, W) (u = x, v = y, feature pixels) and best score (T, H, W) of a
    one-offset volume (K*K, T, H, W) (groups already summed). Ties go to the zero
    displacement (a tiny bonus on the centre)."""
    k, r = kernel_size, kernel_size // 2
    v = volume.float().clone()
    v[r * k + r] += 1e-6 * (v.abs().amax(dim=0) + 1e-12)
    best, arg = v.max(dim=0)
    dy = (arg // k - r) * dilation
    dx = (arg % k - r) * dilation
    sign = 1 if tau > 0 else -1
    flow = torch.stack([dx, dy], dim=1).float() * sign        # (T, 2, H, W)
    return flow, best


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
    """Motion (T, 2, H, W) from frame t-1 to t (pixels; frame 0: zero) and the cosine
    similarity of the best match (T, H, W), by correlating normalised patches."""
    from models.ops.correlation import correlation

    feat = pixel_features(frames, patch)
    vol = correlation(feat, None, kernel_size=kernel_size, offsets=(-1,), dilations=dilation,
                      clip_ends="self", scale=1.0)
    flow, best = dominant_displacement(vol[0], kernel_size, dilation, -1)
    flow[0] = 0
    best[0] = 0
    return flow.numpy(), best.clamp(0, 1).numpy()


# --- model correlation modules -------------------------------------------------------------------

def correlation_modules(model: nn.Module) -> list[tuple[str, nn.Module, dict]]:
    """(name, module, geometry) of every correlation operator in ``model``, in network order.
    geometry: kernel_size, offsets, dilations, groups."""
    from models.dcf import DCFCorrelation
    from models.ops.correlation import DenseCorrelation, LearnableCorrelation, dcf_offsets

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
    from pipelines.errors import UserError

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
        flow, best = dominant_displacement(v, geo["kernel_size"], geo["dilations"][p], tau)
        t, h, w = best.shape
        sy, sx = h_in / h, w_in / w
        flow[:, 0] *= sx
        flow[:, 1] *= sy
        spread = best - v.mean(dim=0)
        strength = (spread / spread.amax().clamp_min(1e-12)).clamp(0, 1)
        r = (geo["kernel_size"] // 2) * geo["dilations"][p] * max(sx, sy)
        frame_of = [min(t_in - 1, (i * t_in) // t) for i in range(t)]
        title = f"{name} (tau={tau:+d}, {h}x{w}, stride {sx:g})"
        stages.append(Stage(title, flow.numpy(), strength.numpy(), float(max(r, 1.0)), frame_of))
    return stages


# --- figures -----------------------------------------------------------------------------

def _overlays(clip: Clip, stage: Stage) -> tuple[list[np.ndarray], np.ndarray]:
    colors, legend = flow_colors(stage.flow, stage.max_radius)
    h, w = clip.frames.shape[1:3]
    out = []
    for i, fi in enumerate(stage.frame_of):
        col = upsample_nearest(colors[i], h, w)
        alpha = 0.25 + 0.6 * upsample_nearest(stage.strength[i], h, w)
        out.append(blend(clip.frames[fi], col, alpha))
    return out, legend


def draw_stages(clip: Clip, stages: list[Stage], out_dir: Path, stem: str,
                animate: bool = False) -> list[Path]:
    """``OUT/<stem>.png``: clip frames on top, one row per stage with the dominant motion
    colour-coded over the frames and the colour wheel as legend (+ ``<stem>.gif``)."""
    written: list[Path] = []
    t = len(clip.frames)
    fig, axes = frames_grid(1 + len(stages), t, extra_col=True)
    labels = clip.labels()
    for j in range(t):
        axes[0, j].imshow(clip.frames[j])
        axes[0, j].set_title(labels[j], fontsize=7)
    axes[0, 0].set_ylabel("frames", fontsize=7)
    axes[0, t].axis("off")
    per_stage = []
    for r, st in enumerate(stages, start=1):
        imgs, legend = _overlays(clip, st)
        per_stage.append(imgs)
        for j in range(t):
            ax = axes[r, j]
            if j < len(imgs):
                ax.imshow(imgs[j])
                ax.set_title(f"t={st.frame_of[j]}", fontsize=7)
            else:
                ax.axis("off")
        axes[r, 0].set_ylabel(st.title, fontsize=6)
        axes[r, t].imshow(legend)
        axes[r, t].set_title(f"motion\n(wheel edge {st.max_radius:g} px)", fontsize=6)
        axes[r, t].set_xlabel("u (x) ->", fontsize=6)
        axes[r, t].set_ylabel("v (y, down)", fontsize=6)
    fig.suptitle(f"{clip.name}: dominant displacement (argmax over KxK)", fontsize=9)
    fig.tight_layout()
    save(fig, out_dir / f"{stem}.png", written)
    if animate:
        gif = []
        for j in range(t):
            row = [clip.frames[j]]
            for st, imgs in zip(stages, per_stage):
                k = max([i for i, f in enumerate(st.frame_of) if f <= j], default=0)
                row.append(imgs[k])
            gif.append(np.concatenate(row, axis=1))
        write_gif(gif, out_dir / f"{stem}.gif", written)
    return written


def visualize_pixels(clip: Clip, out_dir: str | Path, *, patch: int = 5, kernel_size: int = 9,
                     dilation: int = 2, animate: bool = False) -> list[Path]:
    """``--pixels``: correlation of normalised pixel patches with the previous frame."""
    flow, best = pixel_correlation(clip.frames, patch, kernel_size, dilation)
    st = Stage(f"pixels ({patch}x{patch} patches, K={kernel_size}, dil={dilation})", flow,
               best, float((kernel_size // 2) * dilation), list(range(len(clip.frames))))
    return draw_stages(clip, [st], Path(out_dir), "correlation_pixels", animate)


def visualize_model_correlation(loaded: LoadedModel, clip: Clip, out_dir: str | Path, *,
                                offset: int | None = None, animate: bool = False) -> list[Path]:
    """Every correlation stage of ``loaded.model`` on ``clip``."""
    x = model_input(clip.frames, loaded.normalize)
    stages = model_stages(loaded.model, x, offset)
    return draw_stages(clip, stages, Path(out_dir), "correlation", animate)
