"""Classification heads over the last feature map (B, C, T, H, W).

* :class:`ClassifierHead`: global mean over T, H, W -> dropout -> FC (the CPNet paper's C2D head,
  Table 2: "global average pooling, fc 400"); optionally PyTorchVideo's windowed form
  (:func:`window_mean`).

Every head names its classifier, the submodules that depend on the class list, in
``classifier`` (what a new dataset replaces; see :mod:`vcorr.pipelines.weights`).
* :class:`TRNHead`: the multi-scale Temporal Relation Network head (Zhou et al. 2018, Sec. 3.2)
  over per-frame features; deterministic in eval mode (unlike the reference implementation).
"""
from __future__ import annotations

import itertools
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def window_mean(x: torch.Tensor, kernel: Sequence[int] | None) -> torch.Tensor:
    """Average-pool with ``kernel`` (stride 1, no padding), keeping the windows.

    PyTorchVideo's heads average-pool the last feature map with a fixed kernel (the training
    clip's feature size, e.g. 8 x 7 x 7), apply the projection to every window and average the
    windows. ``None`` (or a map no larger than the kernel) gives one window, the global mean.
    Where the map is smaller than the kernel (PyTorchVideo raises) the kernel is cut to the map.
    Shape: (B, C, T, H, W) -> (B, C, T-kt+1, H-kh+1, W-kw+1).
    """
    if kernel is None:
        return x.mean(dim=(2, 3, 4), keepdim=True)
    k = tuple(min(int(a), int(b)) for a, b in zip(kernel, x.shape[2:]))
    return F.avg_pool3d(x, k, stride=1)


class ClassifierHead(nn.Module):
    """Global mean -> dropout -> FC. Shape: (B, C, T, H, W) -> (B, num_classes).

    ``pool_kernel``: PyTorchVideo's windowed pooling (:func:`window_mean`); the FC is linear, so
    projecting each window and averaging equals projecting the windows' mean.
    """

    classifier = ("fc",)

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5, *,
                 pool_kernel: Sequence[int] | None = None) -> None:
        super().__init__()
        self.pool_kernel = tuple(pool_kernel) if pool_kernel is not None else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_kernel is None:
            return self.fc(self.dropout(x.mean(dim=(2, 3, 4))))
        return self.fc(self.dropout(window_mean(x, self.pool_kernel).mean(dim=(2, 3, 4))))


class TRNHead(nn.Module):
    """Multi-scale temporal relations (TRN, Zhou et al. 2018, Eq. 3-4).

    Per-frame features (spatial mean, dropout, Linear to ``feature_dim``) feed one relation MLP
    per scale s = T..2: ``ReLU -> Linear(s*feature_dim, hidden) -> ReLU -> Linear(hidden,
    classes)`` over ordered s-frame tuples; scale T uses the full tuple, the others at most
    ``tuples_per_scale`` tuples. The logits of all tuples and scales are summed.

    Tuples are drawn at random (torch RNG) in training and fixed, evenly spread over the sorted
    list of tuples, in eval, so evaluation is deterministic.
    Shape: (B, C, T, H, W) -> (B, num_classes); T must equal ``num_frames``.
    """

    classifier = ("frame_fc", "relations")

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5, *,
                 num_frames: int = 8, feature_dim: int = 256, hidden: int = 256,
                 tuples_per_scale: int = 3) -> None:
        super().__init__()
        if num_frames < 2:
            raise ValueError("TRN needs at least 2 frames")
        self.num_frames = num_frames
        self.tuples_per_scale = tuples_per_scale
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.frame_fc = nn.Linear(in_channels, feature_dim)
        self.scales = list(range(num_frames, 1, -1))
        self.relations = nn.ModuleList(
            nn.Sequential(nn.ReLU(), nn.Linear(s * feature_dim, hidden), nn.ReLU(),
                          nn.Linear(hidden, num_classes))
            for s in self.scales)
        for s in self.scales:
            combos = torch.tensor(list(itertools.combinations(range(num_frames), s)), dtype=torch.long)
            self.register_buffer(f"tuples_{s}", combos, persistent=False)

    def _tuples(self, s: int) -> torch.Tensor:
        combos: torch.Tensor = getattr(self, f"tuples_{s}")
        if s == self.num_frames or len(combos) <= self.tuples_per_scale:
            return combos
        if self.training:
            pick = torch.randperm(len(combos))[: self.tuples_per_scale]
        else:
            pick = torch.linspace(0, len(combos) - 1, self.tuples_per_scale).round().long()
        return combos[pick.to(combos.device)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, t = x.shape[:3]
        if t != self.num_frames:
            raise ValueError(f"TRN head built for {self.num_frames} frames, got {t}")
        frames = self.frame_fc(self.dropout(x.mean(dim=(3, 4)).transpose(1, 2)))  # (B, T, D)
        out = 0
        for s, mlp in zip(self.scales, self.relations):
            tuples = self._tuples(s)                                  # (m, s)
            rel = frames[:, tuples].reshape(b, len(tuples), -1)       # (B, m, s*D)
            out = out + mlp(rel).sum(dim=1)
        return out
