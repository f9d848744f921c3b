"""Correspondence proposals of a CP module (CPNet main paper Fig. 5, supp. Figs 6-8).

For a query position i0 the module proposes k neighbours i1..ik (nearest in feature space,
other frames). Each pair is embedded by the MLP, g_c = max_j MLP(pair_j)_c (Eq. 2); neighbour
j is in the set A when it attains that max for at least one output channel c of the MLP. Here
a channel counts only where its max is > 0 (after the last ReLU; a channel whose k values are
all 0 is won by no neighbour: it adds nothing, and no gradient flows to any pair). The figure
also shows, per frame, the L1 change the module makes to the feature map,
``|module(x) - x|`` summed over channels.

Query points (``--points "t,y,x;..."``) are in *input-pixel* coordinates of the clip as fed to
the model (after ``--short-side`` resizing); they are mapped to the k-NN grid by scaling.
Without points, the positions whose features the module changes most are used.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vcorr.pipelines.errors import UserError
from vcorr.pipelines.visualize.clip import (
    MAX_COLUMNS,
    Clip,
    LoadedModel,
    model_input,
    shown_frames,
)
from vcorr.pipelines.visualize.figures import frames_grid, save, upsample_nearest, write_gif


@dataclass
class Correspondences:
    """Everything drawn, on the k-NN grid (T, h, w) of one module.

    queries (Q, 3) int (t, y, x); neighbours (Q, k, 3); wins (Q, k) channels won;
    change (T, H', W') L1 change at the module's resolution; grid (T, h, w).
    """

    queries: np.ndarray
    neighbours: np.ndarray
    wins: np.ndarray
    change: np.ndarray
    grid: tuple[int, int, int]


def cp_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    from vcorr.models.cp import CPModule

    return [(n, m) for n, m in model.named_modules() if isinstance(m, CPModule)]


@torch.no_grad()
def mlp_outputs(module: nn.Module, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The MLP's output for every pair (B, N, k, C_last), after the last ReLU: the values whose
    max over k the module takes (Eq. 2). Uses the module's BatchNorms as they are (call
    ``module.eval()`` first for running statistics)."""
    import torch.nn.functional as F

    from vcorr.models.cp import grid_positions

    f = module.knn_features(x)
    b, c, t, h, w = f.shape
    flat = f.reshape(b, c, -1)
    pos = grid_positions(t, h, w, dtype=f.dtype, device=f.device)
    e = module.first_layer(flat, pos, idx)
    k = idx.shape[-1]
    e = F.relu(module.bn1(e.reshape(-1, e.shape[-1])))
    e = module.mlp(e)
    return e.view(b, flat.shape[-1], k, -1)


def winners(mlp_out: torch.Tensor) -> torch.Tensor:
    """Channels each neighbour wins: (B, N, k) counts of channels c where the neighbour attains
    max_j mlp_out[..., j, c] and that max is > 0 (the set A of Eq. 2 is where count > 0)."""
    best = mlp_out.amax(dim=2, keepdim=True)
    hit = (mlp_out == best) & (best > 0)
    return hit.sum(dim=-1)


def parse_points(text: str) -> list[tuple[int, int, int]]:
    """'t,y,x;t,y,x' -> [(t, y, x), ...]."""
    pts = []
    for part in text.replace(" ", "").split(";"):
        if not part:
            continue
        bits = part.split(",")
        if len(bits) != 3:
            raise UserError(f"--points: {part!r} is not t,y,x")
        try:
            pts.append(tuple(int(float(b)) for b in bits))
        except ValueError:
            raise UserError(f"--points: {part!r} is not three numbers") from None
    if not pts:
        raise UserError("--points: no points given")
    return pts  # type: ignore[return-value]


@torch.no_grad()
def module_correspondences(module: nn.Module, x: torch.Tensor,
                           points: list[tuple[int, int, int]] | None = None,
                           num_points: int = 3, input_size: tuple[int, int] | None = None,
                           run=None) -> Correspondences:
    """Run the CP ``module`` (directly on ``x``, or via ``run()``, a callable that runs the
    whole model while ``x`` is captured by a hook) and collect proposals, winners and change.

    ``points`` (t, y, x) in input pixels of an image of ``input_size`` (H, W) (default: the
    module's own resolution); None picks the ``num_points`` most changed positions (at most one
    per frame first, then the next largest).
    """
    captured: dict[str, torch.Tensor] = {}

    def hook(mod, inp, out):
        captured["x"], captured["y"] = inp[0].detach(), out.detach()

    old = module.keep_knn
    module.keep_knn = True
    handle = module.register_forward_hook(hook)
    try:
        if run is None:
            module(x)
        else:
            run()
    finally:
        handle.remove()
        module.keep_knn = old
    if "x" not in captured:
        raise UserError("the chosen CP module did not run")
    xin, y = captured["x"], captured["y"]
    idx = module.last_knn
    change = (y - xin).abs().sum(dim=1)[0]                     # (T, H', W')
    f = module.knn_features(xin)
    _, _, t, h, w = f.shape
    hw = h * w
    if points is None:
        # change on the k-NN grid
        ch = torch.nn.functional.interpolate(change.unsqueeze(1), size=(h, w), mode="area")[:, 0] \
            if (h, w) != tuple(change.shape[-2:]) else change
        order = torch.argsort(ch.reshape(-1), descending=True).tolist()
        chosen, frames_used = [], set()
        for i in order:
            if i // hw not in frames_used:
                chosen.append(i)
                frames_used.add(i // hw)
            if len(chosen) == num_points:
                break
        for i in order:
            if len(chosen) >= num_points:
                break
            if i not in chosen:
                chosen.append(i)
        flat_q = chosen
    else:
        ih, iw = input_size or tuple(xin.shape[-2:])
        flat_q = []
        for (pt, py, px) in points:
            if not (0 <= pt < t and 0 <= py < ih and 0 <= px < iw):
                raise UserError(f"point {pt},{py},{px} is outside the clip ({t} frames, {ih}x{iw})")
            gy, gx = min(h - 1, py * h // ih), min(w - 1, px * w // iw)
            flat_q.append(pt * hw + gy * w + gx)
    q = torch.tensor(flat_q, dtype=torch.long)
    nb = idx[0, q]                                              # (Q, k)
    wins = winners(mlp_outputs(module, xin, idx))[0, q]         # (Q, k)

    def coords(flat: torch.Tensor) -> np.ndarray:
        return torch.stack([flat // hw, (flat % hw) // w, flat % w], dim=-1).numpy()

    return Correspondences(coords(q), coords(nb), wins.numpy(), change.numpy(), (t, h, w))


def _to_pixels(yx: np.ndarray, grid_hw: tuple[int, int], img_hw: tuple[int, int]) -> np.ndarray:
    """Centres of grid cells in image pixels."""
    sy, sx = img_hw[0] / grid_hw[0], img_hw[1] / grid_hw[1]
    return np.stack([(yx[..., 0] + 0.5) * sy - 0.5, (yx[..., 1] + 0.5) * sx - 0.5], axis=-1)


def correspondence_frames(clip: Clip, corr: Correspondences,
                          times: list[float] | None = None) -> list[int]:
    """Clip frames the figure shows: those of ``times``
    (:func:`vcorr.pipelines.visualize.clip.shown_frames`), or by default the frames that hold the
    queries and their proposals, filled up with evenly spaced ones to
    :data:`vcorr.pipelines.visualize.clip.MAX_COLUMNS` (if more frames hold them: the queries'
    frames, then those with the most proposals)."""
    if times is not None:
        return shown_frames(clip, times)
    t_n = len(clip.frames)
    t_grid = corr.grid[0]

    def column(tt: int) -> int:
        return min(t_n - 1, int(tt) * t_n // t_grid)
    queries = sorted({column(tt) for tt in corr.queries[:, 0]})
    counts: dict[int, int] = {}
    for tt in corr.neighbours[..., 0].ravel():
        counts[column(tt)] = counts.get(column(tt), 0) + 1
    # the queries' frames first, then the frames with the most proposals
    ranked = queries + sorted(set(counts) - set(queries), key=lambda j: (-counts[j], j))
    if len(ranked) >= MAX_COLUMNS:
        return sorted(ranked[:MAX_COLUMNS])
    chosen = set(ranked)
    for j in shown_frames(clip):  # evenly spaced, until the row is full
        if len(chosen) >= min(MAX_COLUMNS, t_n):
            break
        chosen.add(j)
    return sorted(chosen)


def draw_correspondences(clip: Clip, frames: np.ndarray, corr: Correspondences, out_dir: Path,
                         title: str, animate: bool = False, *,
                         times: list[float] | None = None) -> list[Path]:
    """``OUT/correspondences.png``: frames with the queries (stars) and their k proposals
    (filled circle with channel count: in A; hollow x: not in A), one colour per query; below,
    the per-frame heatmap of the L1 change. At most
    :data:`vcorr.pipelines.visualize.clip.MAX_COLUMNS` frames (:func:`correspondence_frames`);
    proposals on frames not shown are counted in the title. (+ ``correspondences.gif``, every
    frame.)"""
    from matplotlib.patches import ConnectionPatch

    from vcorr.pipelines.visualize.figures import plt

    written: list[Path] = []
    t_n = len(frames)
    img_hw = frames.shape[1:3]
    t_grid, h, w = corr.grid
    colors = plt().get_cmap("tab10")
    cols = correspondence_frames(clip, corr, times)
    column = {j: c for c, j in enumerate(cols)}
    fig, axes = frames_grid(2, len(cols), aspect=img_hw[0] / img_hw[1])
    labels = clip.labels()
    qpix = _to_pixels(corr.queries[:, 1:], (h, w), img_hw)
    npix = _to_pixels(corr.neighbours[..., 1:], (h, w), img_hw)
    vmax = float(corr.change.max()) or 1.0
    t_ch = len(corr.change)

    def ax_of(tt: int):  # the panel of a k-NN grid frame, None if that frame is not shown
        j = min(t_n - 1, int(tt) * t_n // t_grid)
        return axes[0, column[j]] if j in column else None
    for c, j in enumerate(cols):
        ax = axes[0, c]
        ax.imshow(frames[j])
        ax.set_title(labels[j], fontsize=8)
        hm = axes[1, c].imshow(corr.change[min(t_ch - 1, j * t_ch // t_n)], cmap="inferno",
                               vmin=0, vmax=vmax)
        axes[1, c].set_title(f"|CP(x) - x|, t={j}", fontsize=8)
    fig.colorbar(hm, ax=list(axes[1]), fraction=0.02, pad=0.01)
    hidden = 0
    for qi in range(len(corr.queries)):
        c = colors(qi % 10)
        q_ax = ax_of(corr.queries[qi, 0])
        if q_ax is None:
            hidden += 1 + corr.neighbours.shape[1]
            continue
        q_ax.plot(qpix[qi, 1], qpix[qi, 0], marker="*", ms=13, color=c, mec="white", mew=0.8,
                  ls="none")
        for kj in range(corr.neighbours.shape[1]):
            ax = ax_of(corr.neighbours[qi, kj, 0])
            if ax is None:
                hidden += 1
                continue
            yy, xx = npix[qi, kj]
            n_win = int(corr.wins[qi, kj])
            fig.add_artist(ConnectionPatch(
                xyA=(qpix[qi, 1], qpix[qi, 0]), coordsA=q_ax.transData,
                xyB=(xx, yy), coordsB=ax.transData, color=c, lw=0.7,
                alpha=0.8 if n_win > 0 else 0.35, ls="-" if n_win > 0 else ":"))
            if n_win > 0:
                ax.plot(xx, yy, marker="o", ms=7, color=c, mec="white", mew=0.8, ls="none")
                ax.annotate(str(n_win), (xx, yy), xytext=(3, 3), textcoords="offset points",
                            fontsize=6, color="white",
                            bbox={"boxstyle": "round,pad=0.1", "fc": c, "ec": "none",
                                  "alpha": 0.8})
            else:
                ax.plot(xx, yy, marker="x", ms=6, color=c, mew=1.5, ls="none")
    axes[0, 0].set_ylabel("proposals (o: in A, n = channels won; x: not)", fontsize=7)
    axes[1, 0].set_ylabel("L1 feature change", fontsize=7)
    shown = f"{len(cols)} of {t_n} frames" + (" (all in the GIF)" if len(cols) < t_n else "")
    if hidden:
        shown += f"; {hidden} queries/proposals on frames not shown"
    fig.suptitle(f"{title}; {shown}", fontsize=10)
    save(fig, out_dir / "correspondences.png", written)
    if animate:
        gif = []
        cmap = plt().get_cmap("inferno")
        for j in range(t_n):
            hm = (cmap(corr.change[min(t_ch - 1, j * t_ch // t_n)] / vmax)[..., :3] * 255
                  ).astype(np.uint8)
            hm = upsample_nearest(hm, *img_hw)
            gif.append(np.concatenate([frames[j], hm], axis=1))
        write_gif(gif, out_dir / "correspondences.gif", written)
    return written


def visualize_correspondences(loaded: LoadedModel, clip: Clip, out_dir: str | Path, *,
                              module_index: int = -1, points: str | None = None,
                              num_points: int = 3, animate: bool = False,
                              times: list[float] | None = None) -> list[Path]:
    """Proposals of CP module ``module_index`` (network order; default the last) of
    ``loaded.model`` on ``clip``; ``times`` (seconds) picks the frames shown
    (:func:`correspondence_frames`)."""
    if times is not None:
        shown_frames(clip, times)  # bad --times fail before the work
    mods = cp_modules(loaded.model)
    if not mods:
        raise UserError(f"{loaded.name} has no CP module (CPNet models have)")
    try:
        name, module = mods[module_index]
    except IndexError:
        raise UserError(f"--module {module_index}: the model has {len(mods)} CP module(s)") from None
    x = model_input(clip.frames, loaded.normalize)
    pts = parse_points(points) if points else None
    corr = module_correspondences(module, x, pts, num_points, tuple(x.shape[-2:]),
                                  run=lambda: loaded.model(x))
    # Counted from 1 for people ("6 of 6" is the last); --module itself is a 0-based index.
    title = (f"{clip.name}: {loaded.name} CP module {name} "
             f"({mods.index((name, module)) + 1} of {len(mods)}), k={corr.neighbours.shape[1]}")
    return draw_correspondences(clip, clip.frames, corr, Path(out_dir), title, animate,
                                times=times)
