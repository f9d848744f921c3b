"""Non-local block, embedded-Gaussian form (Wang, Girshick, Gupta, He, CVPR 2018, Sec. 3.2-3.3).

``z = x + BN(W_z y)``, ``y_i = sum_j softmax_j(theta(x_i) . phi(x_j) / sqrt(C'))  g(x_j)`` with
theta/phi/g 1x1x1 convs to C' = C/2, phi and g max-pooled by (1, 2, 2) ("sub-sampling", Sec. 3.3),
and the output BatchNorm's gamma initialised to 0 so a fresh block is the identity (Sec. 4.1).
Inserted with ``after=[(block_index, NonLocalBlock)]`` (after a residual block).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vcorr.models.layers import zero_init_bn


class NonLocalBlock(nn.Module):
    """Embedded-Gaussian non-local block. Shape: (B, C, T, H, W) -> (B, C, T, H, W)."""

    identity_at_init = True   # output BN gamma = 0 (Sec. 4.1)

    def __init__(self, channels: int, inner: int | None = None, *, sub_sample: bool = True) -> None:
        super().__init__()
        inner = inner or max(1, channels // 2)
        self.inner = inner
        self.theta = nn.Conv3d(channels, inner, 1)
        self.phi = nn.Conv3d(channels, inner, 1)
        self.g = nn.Conv3d(channels, inner, 1)
        # ceil_mode keeps a 1-pixel map non-empty on tiny clips.
        self.pool = (nn.MaxPool3d((1, 2, 2), stride=(1, 2, 2), ceil_mode=True)
                     if sub_sample else nn.Identity())
        self.out = nn.Conv3d(inner, channels, 1)
        self.bn = nn.BatchNorm3d(channels)
        zero_init_bn(self.bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        # softmax(theta phi^T / sqrt(C')) g is scaled dot-product attention; torch's fused kernel
        # never stores the (N, M) matrix, which dominates time and memory on long clips. It
        # needs channel-last contiguous inputs, else torch falls back to the materialising path.
        theta = self.theta(x).flatten(2).transpose(1, 2).contiguous()         # (B, N, C')
        phi = self.pool(self.phi(x)).flatten(2).transpose(1, 2).contiguous()  # (B, M, C')
        g = self.pool(self.g(x)).flatten(2).transpose(1, 2).contiguous()      # (B, M, C')
        y = F.scaled_dot_product_attention(theta, phi, g)                     # (B, N, C')
        y = y.transpose(1, 2).reshape(b, self.inner, t, h, w)
        return x + self.bn(self.out(y))
