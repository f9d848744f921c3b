"""X3D (Feichtenhofer, "X3D: Expanding Architectures for Efficient Video Recognition", CVPR 2020),
the second backbone of the DCF paper (DCF appendix A, Table 7), on :class:`vcorr.models.resnet.VideoResNet`.

X3D-S and X3D-M are the same network (width 2.0x, depth 2.2x of X2D: blocks [1, 2, 5, 3] ->
[3, 5, 11, 7], stage widths 24, 48, 96, 192, bottleneck expansion 2.25) run on different clips:
13 x 160 x 160 (S) and 16 x 224 x 224 (M).

* Stem ("stage1", Table 7): 1x3x3 conv stride (1, 2, 2), 3 -> 24, then a channel-wise 3x1x1
  conv, BN, ReLU; no max-pool.
* Block (:class:`X3DBlock`): 1x1x1 -> BN -> ReLU -> channel-wise 3x3x3 (spatial stride in the
  first block of a stage) -> BN -> squeeze-excitation (ratio 1/16, every other block, starting
  with the first) -> swish -> 1x1x1 -> BN (gamma 0 at init) -> + shortcut -> ReLU.
* Head (:class:`X3DHead`): conv5 1x1x1 192 -> 432 + BN + ReLU, global average pool, fc 432 ->
  2048 (no BN) + ReLU, dropout, fc -> classes.

Stages are named res2..res5 like every backbone in :mod:`vcorr.models` (= DCF's stage2..stage5).
"""
from __future__ import annotations

from functools import partial
from typing import Mapping, Sequence

import torch
from torch import nn

from vcorr.models.heads import window_mean
from vcorr.models.layers import (ConvFactory, StemSpec, StrideLike, conv_2d, conv_depthwise,
                                 conv_temporal, zero_init_bn)
from vcorr.models.resnet import STAGE_NAMES, PluginFactory, StageSpec, VideoResNet, _shortcut

X3D_WIDTHS = (24, 48, 96, 192)   # 12 * 2.0 * (1, 2, 4, 8)
X3D_DEPTHS = (3, 5, 11, 7)       # ceil(2.2 * (1, 2, 5, 3))
X3D_BOTTLENECK = 2.25            # inner width = 2.25 x stage width (54, 108, 216, 432)


def se_width(channels: int, ratio: float = 1 / 16, divisor: int = 8) -> int:
    """Squeeze width: ``channels * ratio`` rounded to a multiple of ``divisor`` (X3D's rule,
    never below ``divisor`` nor 10% under the exact value). 54 -> 8, 108 -> 8, 216 -> 16, 432 -> 32."""
    exact = channels * ratio
    width = max(divisor, int(exact + divisor / 2) // divisor * divisor)
    return width + divisor if width < 0.9 * exact else width


class SqueezeExcite(nn.Module):
    """Channel gating by the clip-global mean (Hu et al. 2018), 1x1x1 convs with bias.

    Shape: (B, C, T, H, W) -> (B, C, T, H, W).
    """

    def __init__(self, channels: int, squeeze: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv3d(channels, squeeze, 1)
        self.fc2 = nn.Conv3d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3, 4), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class X3DBlock(nn.Module):
    """X3D residual block (X3D Sec. 3, Table 1; DCF Table 7). ``width`` is the block's output
    width (``expansion = 1``); the inner width is ``bottleneck * width``. ``index`` (the block's
    position in its stage) puts squeeze-excitation on even blocks. ``conv``: the middle conv
    factory (channel-wise 3x3x3).

    Shape: (B, C_in, T, H, W) -> (B, width, T, H/s, W/s).
    """

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: StrideLike = 1, *,
                 conv: ConvFactory = conv_depthwise, post_add: nn.Module | None = None, index: int = 0,
                 bottleneck: float = X3D_BOTTLENECK, se_ratio: float = 1 / 16,
                 shortcut_norm: str = "always") -> None:
        super().__init__()
        inner = int(bottleneck * width)
        self.out_channels = width
        self.conv1 = nn.Conv3d(in_channels, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(inner)
        self.conv2 = conv(inner, inner, stride)
        self.bn2 = nn.BatchNorm3d(inner)
        self.se = (SqueezeExcite(inner, se_width(inner, se_ratio)) if se_ratio and index % 2 == 0
                   else nn.Identity())
        self.swish = nn.SiLU(inplace=True)
        self.conv3 = nn.Conv3d(inner, width, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(width)
        zero_init_bn(self.bn3)  # X3D's configurations zero-init each block's final BN
        if shortcut_norm not in ("always", "widening"):
            raise ValueError(f"shortcut_norm must be 'always' or 'widening', got {shortcut_norm!r}")
        self.shortcut = _shortcut(in_channels, width, stride,
                                  norm=shortcut_norm == "always" or in_channels != width)
        self.post_add = post_add if post_add is not None else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.swish(self.se(self.bn2(self.conv2(out))))
        out = self.bn3(self.conv3(out)) + self.shortcut(x)
        return self.relu(self.post_add(out))


def x3d_stem_conv(in_channels: int, out_channels: int, stride: StrideLike = (1, 2, 2), *,
                  t: int = 3) -> nn.Sequential:
    """1x3x3 spatial conv (stride) then channel-wise tx1x1 temporal conv (DCF Table 7 "stage1";
    the X3D code uses t = 5). Shape: (B, Ci, T, H, W) -> (B, Co, T, H/2, W/2)."""
    return nn.Sequential(conv_2d(in_channels, out_channels, stride, k=3),
                         conv_temporal(out_channels, out_channels, 1, t=t, groups=out_channels))


class X3DHead(nn.Module):
    """conv5 (C -> ``inner``) + BN + ReLU -> global mean -> fc (``inner`` -> ``hidden``, no bias)
    + ReLU -> dropout -> fc (X3D Table 1 "conv5, pool5, fc1, fc2").

    ``pool_kernel``: PyTorchVideo's form, an average pool with a fixed kernel (stride 1), fc1 +
    ReLU on every window, then the windows' mean (:func:`vcorr.models.heads.window_mean`); equal to
    the global form when the map is no larger than the kernel.
    Shape: (B, C, T, H, W) -> (B, num_classes).
    """

    classifier = ("fc",)

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.5, *,
                 inner: int = 432, hidden: int = 2048,
                 pool_kernel: Sequence[int] | None = None) -> None:
        super().__init__()
        self.pool_kernel = tuple(pool_kernel) if pool_kernel is not None else None
        self.conv5 = nn.Sequential(nn.Conv3d(in_channels, inner, 1, bias=False),
                                   nn.BatchNorm3d(inner), nn.ReLU(inplace=True))
        self.fc1 = nn.Linear(inner, hidden, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_kernel is None:
            x = self.conv5(x).mean(dim=(2, 3, 4))
            return self.fc(self.dropout(self.relu(self.fc1(x))))
        windows = window_mean(self.conv5(x), self.pool_kernel).flatten(2).transpose(1, 2)
        x = self.relu(self.fc1(windows)).mean(dim=1)   # (B, windows, hidden) -> (B, hidden)
        return self.fc(self.dropout(x))


def x3d(*, num_classes: int, widths: Sequence[int] = X3D_WIDTHS,
        depths: Sequence[int] = X3D_DEPTHS, bottleneck: float = X3D_BOTTLENECK,
        stem_width: int = 24, stem_t: int = 3, se_ratio: float = 1 / 16, head_hidden: int = 2048,
        shortcut_norm: str = "always", head_pool: Sequence[int] | None = None,
        after: Mapping[str, Sequence[tuple[int, PluginFactory]]] | None = None,
        stem_after: Sequence[PluginFactory] = (), strides: Sequence[int] = (2, 2, 2, 2),
        dropout: float = 0.5, in_channels: int = 3) -> VideoResNet:
    """X3D-S/M (clip size picks the variant). ``after``: plug-ins per stage (res2..res5);
    ``stem_after``: plug-ins after the stem (DCF's "stage1"). ``stem_t`` (the stem's temporal
    kernel), ``shortcut_norm`` (:class:`X3DBlock`) and ``head_pool`` (:class:`X3DHead`'s
    ``pool_kernel``) also express PyTorchVideo's X3D (5, "widening", the training clip's size).
    ``strides``: spatial stride of each stage's first block (X3D: 2 everywhere).

    Shape: (B, in_channels, T, H, W) -> (B, num_classes).
    """
    after = dict(after or {})
    unknown = set(after) - set(STAGE_NAMES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; expected {STAGE_NAMES}")
    block = partial(X3DBlock, bottleneck=bottleneck, se_ratio=se_ratio, shortcut_norm=shortcut_norm)
    if not len(widths) == len(depths) == len(strides) == len(STAGE_NAMES):
        raise ValueError(f"widths, depths and strides need {len(STAGE_NAMES)} values each "
                         f"(res2..res5), got {tuple(widths)}, {tuple(depths)}, {tuple(strides)}")
    stages = [StageSpec(name, n, w, stride=s, block=block, conv=conv_depthwise,
                        after=tuple(after.get(name, ())), pass_index=True)
              for name, n, w, s in zip(STAGE_NAMES, depths, widths, strides)]
    stem = StemSpec(stem_width, partial(x3d_stem_conv, t=stem_t), (1, 2, 2), pool=False,
                    after=tuple(stem_after))
    head = partial(X3DHead, inner=int(bottleneck * widths[-1]), hidden=head_hidden,
                   pool_kernel=head_pool)
    return VideoResNet(stages, num_classes, stem=stem, in_channels=in_channels, head=head,
                       dropout=dropout)
