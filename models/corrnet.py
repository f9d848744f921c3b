"""Correlation networks (Wang, Tran, Torresani, Feiszli, "Video Modeling with Correlation Networks",
CVPR 2020) and their R2D / R(2+1)D baselines, all on :class:`vcorr.models.resnet.VideoResNet`.

* Backbone (Table 2): bottleneck ResNet, conv1 1x7x7 stride (1, 2, 2) *without* max-pool, res2
  strided spatially (112 -> 56 px), res3-res5 stride 2, temporal stride 2 in res4 and res5. The
  block's middle conv is the (2+1)D pair "3x1x1, w" then "1x3x3, w" at the block width
  (:func:`vcorr.models.layers.conv_temporal_spatial`). R2D drops the temporal convs and strides in
  time with a 3x1x1 max-pool (Sec. 6.1, :func:`vcorr.models.layers.conv_2d_tpool`).
  Table 3's FLOPs pin both readings: at 16x224x224 this layout counts 27.48 (R2D-26) and 35.95
  (R(2+1)D-26) GMACs against the printed 27.5 and 36.0, while a max-pooled stem gives 26.86 and
  the R(2+1)D paper's parameter-matched mid width 50.94 (``conv="2plus1d_matched"``).
* Correlation blocks (Sec. 4, Fig. 2) are ``after`` plug-ins: :class:`CorrelationSumBlock`
  (default) and :class:`CorrelationConcatBlock` (Table 4 ablation), after the last block of
  res2, res3, res4, plus one in the middle of res4 for CorrNet-101 (Sec. 6.3). CorrNet narrows
  conv1 to 32 filters and has no temporal convs in res2 (Sec. 6.1).

The correlation operator is :class:`vcorr.models.ops.LearnableCorrelation`; :class:`CorrNetCorrelation`
only adds its multiply-add count for :func:`vcorr.pipelines.model_info.count_gmacs`.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vcorr.models.layers import (ConvFactory, StemSpec, conv_2d, conv_2d_tpool, conv_2plus1d,
                                 conv_temporal_spatial, zero_init_bn)
from vcorr.models.ops import LearnableCorrelation
from vcorr.models.resnet import (DEPTHS, STAGE_NAMES, HeadFactory, PluginFactory, StageSpec,
                                 VideoResNet, stage_layout)

Placement = Mapping[str, Sequence[tuple[int, PluginFactory]]]

# Middle-conv kinds of the CorrNet backbones (``conv=`` of :func:`corr_resnet`).
CORR_CONVS: dict[str, ConvFactory] = {
    "2d": conv_2d_tpool,                 # R2D: 1x3x3, temporal stride by 3x1x1 max-pool
    "2plus1d": conv_temporal_spatial,    # Table 2: 3x1x1 then 1x3x3, both at the block width
    "2plus1d_matched": conv_2plus1d,     # R(2+1)D paper: 1x3x3 -> mid M -> 3x1x1 (3D param count)
}


def correlation_macs(shape: Sequence[int], kernel_size: int, num_offsets: int = 1) -> int:
    """Multiply-adds of one correlation call on an input of ``shape`` (B, C, T, H, W).

    Each output element sums ``C/G`` channel products and there are ``P*G*K*K`` output channels,
    so ``B*C*K*K*P*T*H*W`` (CorrNet Table 1 "FLOPs", DCF appendix C Eq. 2). A per-channel
    weight is folded into one operand and not counted separately, as in CorrNet Table 1.
    """
    b, c, t, h, w = shape
    return b * c * t * h * w * kernel_size * kernel_size * num_offsets


class CorrNetCorrelation(LearnableCorrelation):
    """:class:`vcorr.models.ops.LearnableCorrelation` that states its multiply-adds (``macs``).

    Shape: (B, C, T, H, W) -> (B, G*K*K, T, H, W).
    """

    def macs(self, x: torch.Tensor) -> int:
        return correlation_macs(x.shape, self.kernel_size)


def _corr_groups(channels: int, groups: int | None, group_size: int) -> int:
    """G: explicit, or ``channels / group_size`` (Sec. 5: group size g = 32), at least 1."""
    return groups if groups is not None else max(1, channels // group_size)


def _reduce_and_correlate(channels: int, reduction: int, kernel_size: int, dilation: int,
                          groups: int | None, group_size: int, num_frames: int | None,
                          share_time: bool, filtered: bool) -> tuple[nn.Module, "CorrNetCorrelation"]:
    """The front both CorrNet blocks share: 1x1x1 conv C -> C/reduction + BN + ReLU, then the
    learnable correlation on the reduced features."""
    inner = channels // reduction
    reduce = nn.Sequential(nn.Conv3d(channels, inner, 1, bias=False), nn.BatchNorm3d(inner),
                           nn.ReLU(inplace=True))
    corr = CorrNetCorrelation(inner, kernel_size, dilation, _corr_groups(inner, groups, group_size),
                              num_frames, share_time, filtered)
    return reduce, corr


class CorrelationSumBlock(nn.Module):
    """Correlation-sum block (CorrNet Sec. 4, Fig. 2a), a residual bottleneck around the operator.

    ``relu(x + BN(conv1x1(corr(relu(BN(conv1x1(x)))))))``: reduce C -> C/``reduction``, learnable
    groupwise correlation of each frame with the previous one (K x K, dilation D), restore
    G*K*K -> C. The last BN starts at gamma = 0, so a fresh block is the identity on the
    (non-negative) output of the residual block it follows.

    Args:
        channels: C.
        num_frames: T of the input (the weight is per time step, Table 1); not needed with
            ``share_time`` or ``filtered=False``.
        kernel_size, dilation: K (paper 7, Fig. 3 ablates 3-9) and D (paper 2).
        groups: G; default ``(C/reduction) / group_size``. ``groups=1`` is Table 4 "w/o grouping".
        filtered: ``False`` drops the learnable weight (Table 4 "w/o filter").
        share_time: one weight for all time steps (clip length may change).
        zero_init: the last BN's gamma starts at 0, so the block starts as the identity (our
            choice, as for the CP, non-local and DCF blocks; CorrNet gives no initialisation).
            ``False``: gamma 1, PyTorch's default.

    Shape: (B, C, T, H, W) -> (B, C, T, H, W).
    """

    identity_at_init = True   # last BN gamma = 0: relu(x + 0) = x on a ReLU output

    def __init__(self, channels: int, *, num_frames: int | None = None, kernel_size: int = 7,
                 dilation: int = 2, groups: int | None = None, group_size: int = 32,
                 filtered: bool = True, share_time: bool = False, reduction: int = 4,
                 zero_init: bool = True) -> None:
        super().__init__()
        # Per instance: --init keeps an identity block's tensors, and must not keep these.
        self.identity_at_init = zero_init
        self.reduce, self.corr = _reduce_and_correlate(channels, reduction, kernel_size, dilation,
                                                       groups, group_size, num_frames,
                                                       share_time, filtered)
        self.expand = nn.Conv3d(self.corr.out_channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm3d(channels)
        if zero_init:
            zero_init_bn(self.bn)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.bn(self.expand(self.corr(self.reduce(x)))))


class CorrelationConcatBlock(nn.Module):
    """Correlation-concat block (CorrNet Sec. 4, Fig. 2b; Table 4 ablation).

    Two branches, concatenated on channels, no shortcut: the correlation branch (reduce
    C -> C/``reduction`` + BN + ReLU -> correlation -> BN, G*K*K channels) and a 1x1x1 conv + BN
    branch giving the other C - G*K*K channels; then ReLU. The paper gives no channel counts in
    the text; this split is our reading that keeps the block's width at C. Not an identity at
    init (there is no residual path). Arguments as :class:`CorrelationSumBlock`.

    Shape: (B, C, T, H, W) -> (B, C, T, H, W).
    """

    def __init__(self, channels: int, *, num_frames: int | None = None, kernel_size: int = 7,
                 dilation: int = 2, groups: int | None = None, group_size: int = 32,
                 filtered: bool = True, share_time: bool = False, reduction: int = 4,
                 zero_init: bool = True) -> None:
        super().__init__()   # zero_init: accepted for a common signature; no residual to keep
        self.reduce, self.corr = _reduce_and_correlate(channels, reduction, kernel_size, dilation,
                                                       groups, group_size, num_frames,
                                                       share_time, filtered)
        corr_channels = self.corr.out_channels
        if corr_channels >= channels:
            raise ValueError(f"correlation-concat needs G*K*K={corr_channels} < C={channels}")
        self.corr_bn = nn.BatchNorm3d(corr_channels)
        self.proj = nn.Sequential(nn.Conv3d(channels, channels - corr_channels, 1, bias=False),
                                  nn.BatchNorm3d(channels - corr_channels))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        corr = self.corr_bn(self.corr(self.reduce(x)))
        return self.relu(torch.cat([corr, self.proj(x)], dim=1))


CORR_BLOCKS = {"sum": CorrelationSumBlock, "concat": CorrelationConcatBlock}


# --- builders --------------------------------------------------------------------------------

def stage_frames(num_frames: int, temporal_strides: Sequence[int]) -> list[int]:
    """Clip length at the output of each stage ("same" padding: ceil(T / stride))."""
    frames, out = num_frames, []
    for st in temporal_strides:
        frames = math.ceil(frames / st)
        out.append(frames)
    return out


def resnet_backbone(depth: int, *, num_classes: int, conv: Any, stem: StemSpec,
                    strides: Sequence[int] = (1, 2, 2, 2),
                    temporal_strides: Sequence[int] = (1, 1, 1, 1),
                    widths: Sequence[int] = (64, 128, 256, 512),
                    stage_blocks: Sequence[int] | None = None,
                    after: Placement | None = None, head: HeadFactory | None = None,
                    dropout: float = 0.5, in_channels: int = 3) -> VideoResNet:
    """Bottleneck/basic ResNet-``depth`` with res2..res5 as data (what :func:`vcorr.models.zoo.video_resnet`
    does, plus a free stem and res2 stride, which CorrNet's Table 2 needs).

    ``conv``: one middle-conv factory, or one per stage. ``after``: plug-ins per stage name.
    ``widths``: block widths of res2..res5; ``stage_blocks``: blocks per stage replacing the
    depth's (:func:`vcorr.models.resnet.stage_layout`).
    Shape: (B, in_channels, T, H, W) -> (B, num_classes).
    """
    block, layout = stage_layout(depth, stage_blocks)
    if len(widths) != len(STAGE_NAMES):
        raise ValueError(f"widths must give {len(STAGE_NAMES)} stage widths, got {tuple(widths)}")
    after = dict(after or {})
    unknown = set(after) - set(STAGE_NAMES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; expected {STAGE_NAMES}")
    convs = list(conv) if isinstance(conv, (list, tuple)) else [conv] * 4
    stages = [StageSpec(name, n, w, stride=s, temporal_stride=ts, block=block, conv=c,
                        after=tuple(after.get(name, ())))
              for name, n, w, s, ts, c in zip(STAGE_NAMES, layout, widths, strides,
                                              temporal_strides, convs)]
    return VideoResNet(stages, num_classes, stem=stem, in_channels=in_channels, head=head,
                       dropout=dropout)


def _resolve(conv: str | ConvFactory) -> ConvFactory:
    if isinstance(conv, str):
        if conv not in CORR_CONVS:
            raise ValueError(f"unknown conv {conv!r}; expected one of {sorted(CORR_CONVS)}")
        return CORR_CONVS[conv]
    return conv


CORRNET_TEMPORAL_STRIDES = (1, 1, 2, 2)  # Table 2: L, L, L/2, L/4


def corr_resnet(depth: int = 26, *, num_classes: int, conv: str | ConvFactory = "2plus1d",
                res2_conv: str | ConvFactory | None = None, stem_width: int = 64,
                temporal_strides: Sequence[int] = CORRNET_TEMPORAL_STRIDES,
                strides: Sequence[int] = (2, 2, 2, 2), widths: Sequence[int] = (64, 128, 256, 512),
                stage_blocks: Sequence[int] | None = None,
                after: Placement | None = None, dropout: float = 0.5,
                in_channels: int = 3) -> VideoResNet:
    """The CorrNet backbone family (Table 2): R2D (``conv="2d"``) or R(2+1)D (``"2plus1d"``).

    ``res2_conv`` overrides res2's middle conv (CorrNet: "2d", no temporal convs there).
    ``strides``, ``widths``, ``stage_blocks``: spatial strides, widths and blocks of res2..res5
    (Table 2: res2 strided too; :func:`resnet_backbone`).
    Shape: (B, in_channels, T, H, W) -> (B, num_classes).
    """
    convs = [_resolve(conv)] * 4
    if res2_conv is not None:
        convs[0] = _resolve(res2_conv)
    # conv1 1x7x7 stride (1,2,2), no max-pool: res2 takes 112 px and strides to 56 (Table 2).
    stem = StemSpec(stem_width, partial(conv_2d, k=7), (1, 2, 2), pool=False)
    return resnet_backbone(depth, num_classes=num_classes, conv=convs, stem=stem,
                           strides=strides, temporal_strides=temporal_strides, widths=widths,
                           stage_blocks=stage_blocks, after=after, dropout=dropout,
                           in_channels=in_channels)


def r2d(depth: int = 26, **kw: Any) -> VideoResNet:
    """R2D-``depth`` (CorrNet Sec. 6.1): no temporal convs, 3x1x1 max-pool for temporal strides."""
    return corr_resnet(depth, conv="2d", **kw)


def r2plus1d(depth: int = 26, **kw: Any) -> VideoResNet:
    """R(2+1)D-``depth`` of CorrNet Table 2 (``conv="2plus1d_matched"``: the R(2+1)D paper's
    parameter-matched mid width instead)."""
    kw.setdefault("conv", "2plus1d")
    return corr_resnet(depth, **kw)


def default_corr_blocks(depth: int) -> dict[str, tuple[int, ...]]:
    """After res2, res3, res4 (Sec. 4); CorrNet-101 adds one in the middle of res4 (Sec. 6.3)."""
    blocks: dict[str, tuple[int, ...]] = {"res2": (-1,), "res3": (-1,), "res4": (-1,)}
    if depth == 101:
        blocks["res4"] = (DEPTHS[depth][1][2] // 2, -1)  # after block 11 of 23
    return blocks


def corrnet(depth: int = 26, *, num_classes: int, num_frames: int = 32, block: str = "sum",
            corr_blocks: Mapping[str, Sequence[int]] | None = None, kernel_size: int = 7,
            dilation: int = 2, groups: int | None = None, group_size: int = 32,
            filtered: bool = True, share_time: bool = False, reduction: int = 4,
            stem_width: int = 32, res2_temporal: bool = False,
            conv: str | ConvFactory = "2plus1d", strides: Sequence[int] = (2, 2, 2, 2),
            widths: Sequence[int] = (64, 128, 256, 512),
            stage_blocks: Sequence[int] | None = None, dropout: float = 0.5,
            in_channels: int = 3, zero_init: bool = True) -> VideoResNet:
    """CorrNet-``depth`` (Sec. 4, 6.1, 6.3): the R(2+1)D backbone with correlation blocks.

    ``num_frames``: the clip length the per-time-step weights are made for. ``block``: "sum"
    or "concat" (Table 4). ``groups=1``: Table 4 "w/o grouping"; ``filtered=False``: "w/o
    filter"; ``kernel_size``: Fig. 3. ``stem_width=32`` and ``res2_temporal=False`` are the
    paper's FLOP-matching changes (Sec. 6.1); ``stem_width=64, res2_temporal=True`` is the plain
    backbone plus correlation blocks. ``strides``, ``widths``, ``stage_blocks``: the backbone's
    (:func:`corr_resnet`). ``zero_init``: correlation-sum blocks start as the identity (last
    BN gamma 0; the paper gives no initialisation, so this is our choice); ``False``: gamma 1.
    Shape: (B, in_channels, num_frames, H, W) -> (B, num_classes).
    """
    if block not in CORR_BLOCKS:
        raise ValueError(f"unknown correlation block {block!r}; expected one of {sorted(CORR_BLOCKS)}")
    frames = stage_frames(num_frames, CORRNET_TEMPORAL_STRIDES)
    after: dict[str, tuple[tuple[int, PluginFactory], ...]] = {}
    for stage, idx in (corr_blocks if corr_blocks is not None else default_corr_blocks(depth)).items():
        if stage not in STAGE_NAMES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGE_NAMES}")
        factory = partial(CORR_BLOCKS[block], num_frames=frames[STAGE_NAMES.index(stage)],
                          kernel_size=kernel_size, dilation=dilation, groups=groups,
                          group_size=group_size, filtered=filtered, share_time=share_time,
                          reduction=reduction, zero_init=zero_init)
        after[stage] = tuple((i, factory) for i in idx)
    return corr_resnet(depth, num_classes=num_classes, conv=conv,
                       res2_conv=None if res2_temporal else "2d", stem_width=stem_width,
                       strides=strides, widths=widths, stage_blocks=stage_blocks,
                       after=after, dropout=dropout, in_channels=in_channels)
