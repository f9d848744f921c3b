"""SMART units of ARTNet (Wang, Li, Li, Van Gool, CVPR 2018, Sec. 3.2) and the ARTNet block factory.

A SMART unit replaces a t x k x k convolution (it is a *conv factory*, usable in a stem or in a
block): an appearance branch (1 x k x k conv + BN) and a relation branch (t x k x k conv + BN ->
square -> fixed cross-channel pooling that averages channel pairs, C -> C/2 -> BN) are
concatenated, passed through a ReLU and reduced back to C by a 1x1x1 conv. The enclosing block
applies its own BN (+ ReLU) afterwards, as after any conv.

:func:`smart_block` is the ARTNet-ResNet-18 residual block: [t x k x k conv, SMART] (CPNet supp.
Table 1 and the authors' ARTNet model: the SMART unit is the block's second layer).
"""
from __future__ import annotations

from functools import partial

import torch
from torch import nn

from vcorr.models.layers import ConvFactory, StrideLike, as_triple, conv_2d, conv_3d
from vcorr.models.resnet import BasicBlock


class SmartConv(nn.Module):
    """SMART unit. Shape: (B, C_in, T, H, W) -> (B, C_out, T/st, H/s, W/s)."""

    def __init__(self, in_channels: int, out_channels: int, stride: StrideLike = 1, *,
                 k: int = 3, t: int = 3) -> None:
        super().__init__()
        if out_channels % 2:
            raise ValueError(f"SMART needs an even channel count for pair pooling, got {out_channels}")
        stride = as_triple(stride)
        self.appearance = nn.Sequential(conv_2d(in_channels, out_channels, stride, k=k),
                                        nn.BatchNorm3d(out_channels))
        self.relation = nn.Sequential(conv_3d(in_channels, out_channels, stride, k=k, t=t),
                                      nn.BatchNorm3d(out_channels))
        self.relation_bn = nn.BatchNorm3d(out_channels // 2)
        self.relu = nn.ReLU(inplace=True)
        self.reduce = nn.Conv3d(out_channels + out_channels // 2, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.appearance(x)
        r = self.relation(x).square()
        # Fixed (non-learnt) cross-channel pooling: the mean of channels (2i, 2i+1).
        b, c, t, h, w = r.shape
        r = self.relation_bn(r.view(b, c // 2, 2, t, h, w).mean(dim=2))
        return self.reduce(self.relu(torch.cat([a, r], dim=1)))


def smart_conv(in_channels: int, out_channels: int, stride: StrideLike = 1, *, k: int = 3,
               t: int = 3) -> SmartConv:
    """Conv-factory form of :class:`SmartConv`."""
    return SmartConv(in_channels, out_channels, stride, k=k, t=t)


def smart_block(in_channels: int, width: int, stride: StrideLike = 1, *,
                conv: ConvFactory = conv_3d, post_add: nn.Module | None = None,
                k: int = 3, t: int = 3) -> BasicBlock:
    """Block factory: a basic block whose second conv is a SMART unit (ARTNet-ResNet-18)."""
    return BasicBlock(in_channels, width, stride, conv=conv,
                      conv_b=partial(smart_conv, k=k, t=t), post_add=post_add)


smart_block.expansion = 1  # type: ignore[attr-defined]
