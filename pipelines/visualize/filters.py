"""Learned CorrNet correlation weights (CorrNet Fig. 4).

Every 4-D ``*.weight`` of a correlation operator in a checkpoint's state dict (shape
(C, T or 1, K, K), :class:`vcorr.models.ops.LearnableCorrelation`) is drawn as a time x channel grid
of K x K maps, with an arrow from the centre (zero displacement) to the map's largest weight.
Map pixel (iy, ix) is displacement ((iy - r) * D, (ix - r) * D) into the previous frame.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vcorr.pipelines.errors import UserError
from vcorr.pipelines.visualize.figures import plt, save


def correlation_weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Names and tensors of the correlation weights in a state dict: keys ending in
    ``corr.weight`` with a 4-D (C, T, K, K) tensor, K odd and square."""
    out = {}
    for key, v in state.items():
        if (key.endswith("corr.weight") and isinstance(v, torch.Tensor) and v.dim() == 4
                and v.shape[2] == v.shape[3] and v.shape[2] % 2 == 1):
            out[key] = v.detach().float().cpu()
    return out


def draw_filters(name: str, weight: torch.Tensor, path: Path, written: list[Path],
                 max_channels: int = 16, max_times: int = 8) -> None:
    """One figure: rows = time steps (at most ``max_times``), columns = channels (the
    ``max_channels`` with the largest weight spread)."""
    c, t, k, _ = weight.shape
    spread = (weight.amax(dim=(2, 3)) - weight.amin(dim=(2, 3))).amax(dim=1)
    chans = sorted(torch.argsort(spread, descending=True)[:max_channels].tolist())
    times = list(range(t)) if t <= max_times else np.linspace(0, t - 1, max_times).round().astype(int).tolist()
    p = plt()
    panel = 1.1
    fig, axes = p.subplots(len(times), len(chans), figsize=(panel * len(chans) + 1.2,
                                                            panel * len(times) + 0.8), squeeze=False)
    r = k // 2
    for i, ti in enumerate(times):
        for j, ch in enumerate(chans):
            ax = axes[i, j]
            m = weight[ch, ti].numpy()
            ax.imshow(m, cmap="viridis")
            iy, ix = np.unravel_index(int(np.argmax(m)), m.shape)
            if np.count_nonzero(m == m.max()) > 1:
                # no single largest weight (a constant map: e.g. CorrNet's initial weights):
                # an arrow would point at whichever tied weight comes first
                ax.plot(r, r, marker="o", ms=5, mfc="none", mec="0.8")
            elif (iy, ix) != (r, r):
                ax.annotate("", xy=(ix, iy), xytext=(r, r),
                            arrowprops=dict(arrowstyle="->", color="red", lw=1.2))
            else:
                ax.plot(r, r, "r.", ms=4)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"c{ch}", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"t={ti}", fontsize=8)
    fig.suptitle(f"{name} ({c}x{t}x{k}x{k}); arrow: centre -> largest weight; dot: the "
                 "largest weight is at the centre; circle: no single largest weight", fontsize=9)
    fig.tight_layout()
    save(fig, path, written)


def visualize_filters(checkpoint: str | Path, out_dir: str | Path, *, max_channels: int = 16,
                      max_times: int = 8) -> list[Path]:
    """One PNG per correlation operator of the checkpoint's model."""
    from vcorr.pipelines.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise UserError(f"{checkpoint}: checkpoint has no 'model' state dict")
    weights = correlation_weights(state)
    if not weights:
        raise UserError(f"{checkpoint}: no learnable correlation weights (CorrNet models with "
                        "filtered correlation have them)")
    written: list[Path] = []
    out = Path(out_dir)
    for key, w in weights.items():
        safe = key.removesuffix(".weight").replace(".", "_")
        draw_filters(key, w, out / f"filters_{safe}.png", written, max_channels, max_times)
    return written
