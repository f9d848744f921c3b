"""Correspondence Proposal (CP) module of CPNet (Liu, Lee, Jin, CVPR 2019, Sec. 3; supp. B, D).

For every position i0 of a clip's feature map (B, C, T, H, W) the module

1. finds its k nearest neighbours i1..ik in feature space (squared L2) among all T*H*W
   positions, excluding every position of i0's own frame (:func:`knn_other_frames`; no
   gradient flows through the indices);
2. embeds each pair with a shared MLP on ``concat(dt, dh, dw, f_i0, f_ij)`` (2C+3 inputs; the
   relative position is that of the neighbour minus that of the query, with grid coordinates
   normalised as (t/T, h/H, w/W)); 1x1 layers with bias + BN + ReLU, ReLU also on the last;
3. max-pools over the k pairs, maps back to C channels with a 1x1 conv and a BatchNorm whose
   gamma starts at 0, and adds the result to its input.

It is inserted as a ``post_add`` plug-in so it sees a residual block's pre-ReLU output.
Optional (ResNet-101 model, supp. D): a 1x1 reduction to ``C/reduction`` (conv + BN, no ReLU)
before the k-NN, and 2x bilinear spatial downsampling before the k-NN (upsampled back after).

The first MLP layer is applied in factorised form: ``W [f_i0; f_ij; dp] = A f_i0 + B f_ij + P dp``
and ``dp = p_ij - p_i0``, so each point is projected once (``A f - P p`` and ``B f + P p``) and
only the C1-wide projections of the neighbours are gathered; the (B, 2C+3, N, k) pair tensor is
never built. :meth:`CPModule.first_layer_direct` is the literal form, kept for tests.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import zero_init_bn

# Default working-set of one k-NN chunk, in distance-matrix elements (64 MiB of float32).
DEFAULT_CHUNK_ELEMENTS = 1 << 24


def knn_chunk_rows(batch: int, n: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Query rows per chunk so that one (batch, rows, n) distance block has <= chunk_elements."""
    return max(1, min(n, chunk_elements // max(1, batch * n)))


@torch.no_grad()
def knn_other_frames(feat: torch.Tensor, k: int, frame_size: int, *,
                     chunk_rows: int | None = None) -> torch.Tensor:
    """k nearest neighbours of every position among the positions of *other* frames.

    ``feat`` is (B, C, N) with positions in (t, h, w) raster order, N = T * frame_size.
    Distance is plain squared L2, ranked via ``|b|^2 - 2 a.b`` (``|a|^2`` is the same for a whole
    query row and does not change the ranking). Queries are processed ``chunk_rows`` at a time
    with one batched matmul each, so the largest temporary is (B, chunk_rows, N), never the
    (B, N, N) matrix. Ties are broken arbitrarily (by ``torch.topk``).
    Returns (B, N, k) int64 indices, nearest first.
    """
    b, c, n = feat.shape
    if frame_size < 1 or n % frame_size:
        raise ValueError(f"N={n} positions is not a whole number of frames of {frame_size}")
    if not 1 <= k <= n - frame_size:
        raise ValueError(f"k={k} must be in 1..{n - frame_size} (positions outside the query's frame)")
    rows = chunk_rows or knn_chunk_rows(b, n)
    sq = feat.pow(2).sum(dim=1).unsqueeze(1)          # (B, 1, N)
    queries = feat.transpose(1, 2)                     # (B, N, C), a view
    out = torch.empty(b, n, k, dtype=torch.long, device=feat.device)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        dist = torch.baddbmm(sq, queries[:, start:stop], feat, alpha=-2.0)  # (B, r, N)
        # Mask the query's own frame; a chunk spans at most a few frames: one slice each.
        for t in range(start // frame_size, (stop - 1) // frame_size + 1):
            r0, r1 = max(start, t * frame_size) - start, min(stop, (t + 1) * frame_size) - start
            dist[:, r0:r1, t * frame_size:(t + 1) * frame_size] = float("inf")
        out[:, start:stop] = dist.topk(k, dim=2, largest=False, sorted=True).indices
    return out


@torch.no_grad()
def knn_other_frames_dense(feat: torch.Tensor, k: int, frame_size: int) -> torch.Tensor:
    """Reference form of :func:`knn_other_frames` holding the whole (B, N, N) distance matrix
    ``|a|^2 + |b|^2 - 2ab`` (the paper's formulation; memory O(B N^2)). Used by the benchmark."""
    b, c, n = feat.shape
    sq = feat.pow(2).sum(dim=1)
    dist = sq.unsqueeze(2) + sq.unsqueeze(1) - 2 * torch.bmm(feat.transpose(1, 2), feat)
    frame = torch.arange(n, device=feat.device) // frame_size
    dist.masked_fill_(frame.unsqueeze(1) == frame.unsqueeze(0), float("inf"))
    return dist.topk(k, dim=2, largest=False, sorted=True).indices


def grid_positions(t: int, h: int, w: int, *, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """(3, T*H*W) normalised coordinates (t/T, h/H, w/W) in raster order."""
    tt, hh, ww = torch.meshgrid(torch.arange(t, dtype=dtype, device=device) / t,
                                torch.arange(h, dtype=dtype, device=device) / h,
                                torch.arange(w, dtype=dtype, device=device) / w, indexing="ij")
    return torch.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)])


class CPModule(nn.Module):
    """Correspondence Proposal module (CPNet Sec. 3, Fig. 3; supp. B and D).

    Args:
        channels: C, channels of the block output it is added to.
        k: neighbours per position (8 on Kinetics, 12 on Something/Jester, 4 for ResNet-101).
        mlp_ratios: MLP widths as fractions of C ([C/4, C/2] for ResNet-18/34; [C/8] for
            ResNet-101 with ``reduction=8``).
        reduction: if set, a 1x1 conv + BN (no ReLU) to C/reduction before the k-NN.
        downsample: 2x bilinear spatial downsampling before the k-NN, upsampled back after.
        chunk_rows: query rows per k-NN chunk (default: from a 64 MiB working set).

    If a clip has fewer than k positions outside a frame, k is clamped to that number (tiny
    test clips); at least two frames are required.
    Shape: (B, C, T, H, W) -> (B, C, T, H, W); a freshly built module is the identity.
    """

    def __init__(self, channels: int, k: int = 8, mlp_ratios: Sequence[float] = (0.25, 0.5), *,
                 reduction: int | None = None, downsample: bool = False,
                 chunk_rows: int | None = None) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        widths = [max(1, int(round(channels * r))) for r in mlp_ratios]
        if not widths:
            raise ValueError("the CP module needs at least one MLP layer")
        self.channels, self.k, self.downsample, self.chunk_rows = channels, k, downsample, chunk_rows
        feat_dim = channels
        self.reduce: nn.Module | None = None
        if reduction:
            feat_dim = max(1, channels // reduction)
            self.reduce = nn.Sequential(nn.Conv3d(channels, feat_dim, 1, bias=False),
                                        nn.BatchNorm3d(feat_dim))
        self.feat_dim = feat_dim
        # First MLP layer on concat(dt, dh, dw, f_i0, f_ij): stored as one (C1, 3 + 2C') weight
        # so the parameters are exactly those of the direct 1x1 layer.
        c1 = widths[0]
        self.weight1 = nn.Parameter(torch.empty(c1, 3 + 2 * feat_dim))
        self.bias1 = nn.Parameter(torch.empty(c1))
        nn.init.kaiming_uniform_(self.weight1, a=5 ** 0.5)  # nn.Linear's default
        bound = 1 / (3 + 2 * feat_dim) ** 0.5
        nn.init.uniform_(self.bias1, -bound, bound)
        self.bn1 = nn.BatchNorm1d(c1)
        rest: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            rest += [nn.Linear(w_in, w_out), nn.BatchNorm1d(w_out), nn.ReLU(inplace=True)]
        self.mlp = nn.Sequential(*rest)
        self.proj = nn.Linear(widths[-1], channels)   # the 1x1 conv back to C
        self.bn_out = nn.BatchNorm3d(channels)
        zero_init_bn(self.bn_out)
        self.keep_knn = False           # set True to keep the last indices (visualisation)
        self.last_knn: torch.Tensor | None = None

    # -- pieces, exposed for tests and visualisation ------------------------------------------
    def knn_features(self, x: torch.Tensor) -> torch.Tensor:
        """The features the k-NN runs on: (optionally reduced, downsampled) x, (B, C', T, H', W')."""
        f = self.reduce(x) if self.reduce is not None else x
        if self.downsample:
            b, c, t, h, w = f.shape
            f2 = F.interpolate(f.transpose(1, 2).reshape(b * t, c, h, w),
                               size=(max(1, h // 2), max(1, w // 2)), mode="bilinear",
                               align_corners=False)
            f = f2.reshape(b, t, c, *f2.shape[-2:]).transpose(1, 2)
        return f

    def first_layer(self, f: torch.Tensor, pos: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Factorised first layer. f (B, C', N), pos (3, N), idx (B, N, k) -> (B, N, k, C1)."""
        b, c, n = f.shape
        k = idx.shape[-1]
        w_pos, w_q, w_nb = self.weight1.split([3, c, c], dim=1)
        pos_proj = (w_pos @ pos).t()                                    # (N, C1)
        ft = f.transpose(1, 2)                                          # (B, N, C')
        query = ft @ w_q.t() - pos_proj + self.bias1                    # (B, N, C1)
        neigh = ft @ w_nb.t() + pos_proj                                # (B, N, C1)
        flat = (idx + torch.arange(b, device=idx.device).view(b, 1, 1) * n).reshape(-1)
        gathered = neigh.reshape(b * n, -1).index_select(0, flat).view(b, n, k, -1)
        return query.unsqueeze(2) + gathered

    def first_layer_direct(self, f: torch.Tensor, pos: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The literal 2C'+3 form of :meth:`first_layer` (memory O(B N k C')); for tests."""
        b, c, n = f.shape
        k = idx.shape[-1]
        ft = f.transpose(1, 2)
        f_q = ft.unsqueeze(2).expand(b, n, k, c)
        f_nb = torch.stack([ft[i, idx[i]] for i in range(b)])          # (B, N, k, C')
        p = pos.t()
        dp = p[idx] - p.view(1, n, 1, 3)                                 # (B, N, k, 3)
        pair = torch.cat([dp, f_q, f_nb], dim=-1)                       # (B, N, k, 2C'+3)
        return pair @ self.weight1.t() + self.bias1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.knn_features(x)
        b, c, t, h, w = f.shape
        if t < 2:
            raise ValueError("the CP module needs at least 2 frames (neighbours come from other frames)")
        n = t * h * w
        flat = f.reshape(b, c, n)
        k = min(self.k, n - h * w)
        idx = knn_other_frames(flat.detach(), k, h * w, chunk_rows=self.chunk_rows)
        if self.keep_knn:
            self.last_knn = idx
        pos = grid_positions(t, h, w, dtype=f.dtype, device=f.device)
        e = self.first_layer(flat, pos, idx)                            # (B, N, k, C1)
        e = F.relu(self.bn1(e.reshape(-1, e.shape[-1])))
        e = self.mlp(e)
        g = e.view(b, n, k, -1).amax(dim=2)                             # max over the k pairs
        g = self.proj(g).transpose(1, 2).reshape(b, self.channels, t, h, w)
        if g.shape[-2:] != x.shape[-2:]:
            g = F.interpolate(g.transpose(1, 2).reshape(b * t, self.channels, h, w),
                              size=x.shape[-2:], mode="bilinear", align_corners=False)
            g = g.reshape(b, t, self.channels, *x.shape[-2:]).transpose(1, 2)
        return x + self.bn_out(g)
