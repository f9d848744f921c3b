"""Convolution factories and the stem shared by every video ResNet in :mod:`vcorr.models`.

A *conv factory* is any callable ``(in_channels, out_channels, stride) -> nn.Module`` that maps
``(B, C_in, T, H, W)`` to ``(B, C_out, T', H', W')`` with "same" padding, so a stride of
``(st, s, s)`` divides T by ``st`` and H, W by ``s`` (rounded up). Kernel sizes are bound with
:func:`functools.partial` (``partial(conv_2d, k=7)``), which keeps variants declarative data.

* :func:`conv_2d`      1 x k x k  (C2D: frames are processed independently)
* :func:`conv_3d`      t x k x k  (C3D, Tran et al. 2015)
* :func:`conv_2plus1d` 1 x k x k then t x 1 x 1 with BN+ReLU in between (R(2+1)D, Tran et al.
  2018); the mid width keeps the parameter count of the t x k x k conv it replaces.
* :func:`conv_temporal_spatial` t x 1 x 1 then 1 x k x k with BN+ReLU in between, the temporal
  conv at the input width (CorrNet Table 2), optionally channel-wise (DCF appendix Table 6).
* :func:`conv_2d_tpool`  1 x k x k with temporal striding by a t x 1 x 1 max-pool (R2D-26,
  CorrNet Sec. 6.1).
* :func:`conv_depthwise` channel-wise t x k x k (X3D, Feichtenhofer 2020).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Union

import torch
from torch import nn

Triple = tuple[int, int, int]
StrideLike = Union[int, Triple]
ConvFactory = Callable[..., nn.Module]


def as_triple(stride: StrideLike) -> Triple:
    """``2 -> (2, 2, 2)``; a 3-tuple is returned unchanged (as ints)."""
    if isinstance(stride, int):
        return (stride, stride, stride)
    t, h, w = stride
    return (int(t), int(h), int(w))


def conv_2d(in_channels: int, out_channels: int, stride: StrideLike = 1, *, k: int = 3,
            dilation: int = 1, groups: int = 1) -> nn.Conv3d:
    """A 1 x k x k convolution (no bias: a BatchNorm follows). Shape: (B,Ci,T,H,W) -> (B,Co,T',H',W')."""
    st, sh, sw = as_triple(stride)
    pad = dilation * (k // 2)
    return nn.Conv3d(in_channels, out_channels, (1, k, k), stride=(st, sh, sw),
                     padding=(0, pad, pad), dilation=(1, dilation, dilation), groups=groups,
                     bias=False)


def conv_3d(in_channels: int, out_channels: int, stride: StrideLike = 1, *, k: int = 3,
            t: int = 3, groups: int = 1) -> nn.Conv3d:
    """A t x k x k convolution (no bias). Shape: (B,Ci,T,H,W) -> (B,Co,T',H',W')."""
    return nn.Conv3d(in_channels, out_channels, (t, k, k), stride=as_triple(stride),
                     padding=(t // 2, k // 2, k // 2), groups=groups, bias=False)


def conv_temporal(in_channels: int, out_channels: int, stride: StrideLike = 1, *, t: int = 3,
                  groups: int = 1) -> nn.Conv3d:
    """A t x 1 x 1 convolution (no bias); only the temporal part of ``stride`` is used."""
    st = as_triple(stride)[0]
    return nn.Conv3d(in_channels, out_channels, (t, 1, 1), stride=(st, 1, 1),
                     padding=(t // 2, 0, 0), groups=groups, bias=False)


def r2plus1d_mid_width(in_channels: int, out_channels: int, k: int = 3, t: int = 3) -> int:
    """Mid width M = floor(t k^2 Ci Co / (k^2 Ci + t Co)) (R(2+1)D paper, Sec. 3.5)."""
    return (t * k * k * in_channels * out_channels) // (k * k * in_channels + t * out_channels)


class Conv2Plus1d(nn.Sequential):
    """(2+1)D factorised conv: 1 x k x k (spatial stride) -> BN -> ReLU -> t x 1 x 1 (temporal stride).

    Shape: (B, Ci, T, H, W) -> (B, Co, T/st, H/s, W/s).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: StrideLike = 1, *, k: int = 3,
                 t: int = 3, mid: int | None = None) -> None:
        st, sh, sw = as_triple(stride)
        mid = mid or r2plus1d_mid_width(in_channels, out_channels, k, t)
        super().__init__(
            conv_2d(in_channels, mid, (1, sh, sw), k=k),
            nn.BatchNorm3d(mid),
            nn.ReLU(inplace=True),
            conv_temporal(mid, out_channels, (st, 1, 1), t=t),
        )


def conv_2plus1d(in_channels: int, out_channels: int, stride: StrideLike = 1, *, k: int = 3,
                 t: int = 3, mid: int | None = None) -> Conv2Plus1d:
    """Factory form of :class:`Conv2Plus1d`."""
    return Conv2Plus1d(in_channels, out_channels, stride, k=k, t=t, mid=mid)


class ConvTemporalSpatial(nn.Sequential):
    """t x 1 x 1 (temporal stride) -> BN -> ReLU -> 1 x k x k (spatial stride).

    The (2+1)D order and widths of CorrNet Table 2 ("3x1x1, 64" then "1x3x3, 64"): the temporal
    conv keeps the input width, no mid-width expansion. ``depthwise=True`` makes it channel-wise
    (DCF appendix A, Table 6: "depthwise temporal 1D-Conv").
    Shape: (B, Ci, T, H, W) -> (B, Co, T/st, H/s, W/s).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: StrideLike = 1, *, k: int = 3,
                 t: int = 3, depthwise: bool = False) -> None:
        st, sh, sw = as_triple(stride)
        super().__init__(
            conv_temporal(in_channels, in_channels, (st, 1, 1), t=t,
                          groups=in_channels if depthwise else 1),
            nn.BatchNorm3d(in_channels),
            nn.ReLU(inplace=True),
            conv_2d(in_channels, out_channels, (1, sh, sw), k=k),
        )


def conv_temporal_spatial(in_channels: int, out_channels: int, stride: StrideLike = 1, *,
                          k: int = 3, t: int = 3, depthwise: bool = False) -> ConvTemporalSpatial:
    """Factory form of :class:`ConvTemporalSpatial`."""
    return ConvTemporalSpatial(in_channels, out_channels, stride, k=k, t=t, depthwise=depthwise)


def conv_2d_tpool(in_channels: int, out_channels: int, stride: StrideLike = 1, *, k: int = 3,
                  t: int = 3) -> nn.Module:
    """1 x k x k conv; a temporal stride is done by a t x 1 x 1 max-pool first.

    R2D-26 of CorrNet Sec. 6.1: "removing all 1D temporal convolutions, and adding a 3x1x1 max
    pooling when we need to do temporal striding" (the pool sits where the temporal conv was).
    Shape: (B, Ci, T, H, W) -> (B, Co, T/st, H/s, W/s).
    """
    st, sh, sw = as_triple(stride)
    conv = conv_2d(in_channels, out_channels, (1, sh, sw), k=k)
    if st == 1:
        return conv
    return nn.Sequential(nn.MaxPool3d((t, 1, 1), stride=(st, 1, 1), padding=(t // 2, 0, 0)), conv)


def conv_depthwise(in_channels: int, out_channels: int, stride: StrideLike = 1, *, k: int = 3,
                   t: int = 3) -> nn.Conv3d:
    """Channel-wise t x k x k conv (no bias), X3D's middle conv. Needs ``in == out`` channels.

    Shape: (B, C, T, H, W) -> (B, C, T/st, H/s, W/s).
    """
    if in_channels != out_channels:
        raise ValueError(f"a channel-wise conv keeps the width, got {in_channels} -> {out_channels}")
    return conv_3d(in_channels, out_channels, stride, k=k, t=t, groups=in_channels)


# Names accepted wherever a conv factory is expected (``conv="3d"``).
CONV_KINDS: dict[str, ConvFactory] = {"2d": conv_2d, "3d": conv_3d, "2plus1d": conv_2plus1d}


def resolve_conv(conv: str | ConvFactory, **kw) -> ConvFactory:
    """A factory from a name in :data:`CONV_KINDS` or a callable; ``kw`` binds kernel sizes."""
    if isinstance(conv, str):
        try:
            conv = CONV_KINDS[conv]
        except KeyError:
            raise ValueError(f"unknown conv kind {conv!r}; expected one of {sorted(CONV_KINDS)}") from None
    return partial(conv, **kw) if kw else conv


@dataclass(frozen=True)
class StemSpec:
    """The stem: conv (``conv`` factory, ``stride``) -> BN -> ReLU -> optional max-pool.

    ResNet default: 1x7x7 conv, stride (1, 2, 2), 64 channels, then a 1x3x3 max-pool with stride
    (1, 2, 2): 224 px in -> 56 px into res2. ``pool=False`` suits 112 px inputs (56 px into res2).
    ``after``: plug-in factories ``(channels) -> nn.Module`` applied to the stem's output (DCF
    Table 2 places a correlation block after "stage1"). ``norm=False`` drops the BN (the toy nets).
    """

    width: int = 64
    conv: ConvFactory = field(default=partial(conv_2d, k=7))
    stride: Triple = (1, 2, 2)
    pool: bool = True
    after: tuple[Callable[[int], nn.Module], ...] = field(default=())
    norm: bool = True


class Stem(nn.Sequential):
    """Built from a :class:`StemSpec`. Shape: (B, C_in, T, H, W) -> (B, width, T/st, H/4, W/4)."""

    def __init__(self, in_channels: int, spec: StemSpec) -> None:
        layers: list[nn.Module] = [spec.conv(in_channels, spec.width, spec.stride),
                                   nn.BatchNorm3d(spec.width) if spec.norm else nn.Identity(),
                                   nn.ReLU(inplace=True)]
        if spec.pool:
            layers.append(nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)))
        layers.extend(factory(spec.width) for factory in spec.after)
        super().__init__(*layers)
        self.out_channels = spec.width


def zero_init_bn(bn: nn.BatchNorm3d | nn.BatchNorm1d) -> None:
    """gamma = 0, beta = 0: a residual branch ending in ``bn`` starts as the zero function."""
    with torch.no_grad():
        bn.weight.zero_()
        bn.bias.zero_()
    bn._vcorr_zero_init = True  # the model-wide initialiser leaves it alone
