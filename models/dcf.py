"""Dense Correlation Fields (DCF, "Dense Correlation Fields for Motion Modeling in Action
Recognition", Sec. 3, Algorithm 1, Fig. 3) as plug-ins on R(2+1)D ResNets and X3D.

A DCF block (:class:`DCFBlock`) sits after the last block of a stage (default stage2, stage3,
stage4 = res2, res3, res4; Sec. 3.3) and computes (Algorithm 1)::

    x = ReLU(BN1(Conv1(F)))                      # 1x1x1 reduce: C/4 (R(2+1)D), C/2 (X3D)
    C = corr_op(x)                               # K x K (K=5), 2L frames (L=2; 1 in res4)
    P = concat(C, C_in)                          # C_in: volumes of the shallower blocks
    F' = ReLU(F + BN2(Conv2(P)))                 # BN2 gamma = 0 at init: identity
    C_out = [avg_pool_2x(C), avg_pool_2x^2(C), ...]   # for the deeper blocks

The spatial pyramid passes state between blocks in *different stages*. Each block is an
ordinary ``after`` plug-in that keeps the (B, C, T, H, W) shape; the hand-off goes through one
:class:`CorrelationPyramid` per model, made by the builder and bound to every block together
with the block's level (0 = shallowest). Per forward pass, level 0 opens the pyramid, every
block ``put``s its own volume and ``take``s the shallower ones pooled 2x per halving of the
spatial size (pooling is cached, so each volume is pooled once per step, as Algorithm 1 does),
and the deepest level closes it, so no activations outlive the pass.

The R(2+1)D backbone (appendix Table 6) is ResNet-50/101 whose middle conv is a channel-wise
3x1x1 temporal conv then the 1x3x3 conv (:func:`vcorr.models.layers.conv_temporal_spatial` with
``depthwise=True``), with no temporal downsampling; the stem keeps its max-pool.
"""
from __future__ import annotations

import math
import threading
from functools import partial
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vcorr.models.corrnet import correlation_macs, resnet_backbone
from vcorr.models.layers import StemSpec, conv_2d, conv_temporal_spatial, zero_init_bn
from vcorr.models.ops import correlation, dcf_offsets
from vcorr.models.resnet import STAGE_NAMES, PluginFactory, VideoResNet
from vcorr.models.x3d import X3D_DEPTHS, X3D_WIDTHS, x3d

DCF_STAGES = ("res2", "res3", "res4")                       # Sec. 3.3: stage2, stage3, stage4
PLACES = ("stem",) + STAGE_NAMES                            # "stem" = DCF's stage1 (Table 2)
TEMPORAL_RANGE = {"stem": 2, "res2": 2, "res3": 2, "res4": 1, "res5": 1}  # Sec. 3.3: L=2, 1 last


class DCFCorrelation(nn.Module):
    """DCF's parameter-free correlation volume (Sec. 3.1-3.2, Eq. 1, Fig. 3a-b).

    Frame t is matched with frames t + tau for each ``offsets`` entry on a K x K grid whose
    dilation grows with |tau|; dot products are scaled by 1/sqrt(C); partners outside the clip
    are zero frames. ``offsets=dcf_offsets(L)`` (-L..-1, +1..+L, "long-term") equals
    :class:`vcorr.models.ops.DenseCorrelation`; ``offsets=(1,)`` is the "basic" single-pair
    correlation of Table 1.

    Shape: (B, C, T, H, W) -> (B, len(offsets)*K*K, T, H, W).
    """

    def __init__(self, kernel_size: int = 5, offsets: Sequence[int] = (-2, -1, 1, 2),
                 dilation: int = 1) -> None:
        super().__init__()
        self.kernel_size, self.offsets, self.dilation = kernel_size, tuple(offsets), dilation
        self.out_channels = len(self.offsets) * kernel_size * kernel_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return correlation(x, None, kernel_size=self.kernel_size, groups=1, offsets=self.offsets,
                           dilations=tuple(self.dilation * abs(o) for o in self.offsets),
                           clip_ends="zero", scale=1.0 / math.sqrt(x.shape[1]))

    def macs(self, x: torch.Tensor) -> int:
        return correlation_macs(x.shape, self.kernel_size, len(self.offsets))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, offsets={self.offsets}, dilation={self.dilation}"


def _halve(volume: torch.Tensor) -> torch.Tensor:
    """Average-pool 2x in space (Algorithm 1 line 13); ceil mode matches the backbone's
    "same"-padded strides on odd sizes."""
    return F.avg_pool3d(volume, (1, 2, 2), (1, 2, 2), ceil_mode=True)


def _pass_key() -> int:
    """The key of the pass in flight: the thread's id, or 0 inside ``torch.compile``."""
    return 0 if torch.compiler.is_compiling() else threading.get_ident()


class CorrelationPyramid:
    """The top-down hand-off of correlation volumes between the DCF blocks of one model.

    ``channels[k]`` is the volume width of level k. Not an ``nn.Module``: it holds no
    parameters and nothing that belongs in a state dict, only the volumes of the pass in flight,
    keyed by thread so DataParallel replicas (threads sharing this object) do not mix. Under
    ``torch.compile`` (which cannot trace ``threading.get_ident``) every pass has the same key:
    a compiled model must not run in several threads at once.
    """

    def __init__(self, channels: Sequence[int]) -> None:
        self.channels = tuple(channels)
        self._passes: dict[int, list[torch.Tensor | None]] = {}

    @property
    def levels(self) -> int:
        return len(self.channels)

    def incoming_channels(self, level: int) -> int:
        """Channels a level-``level`` block receives from the shallower levels."""
        return sum(self.channels[:level])

    def put(self, level: int, volume: torch.Tensor) -> None:
        """Store the level's volume; level 0 starts a new pass."""
        key = _pass_key()
        if level == 0:
            self._passes[key] = [None] * self.levels
        volumes = self._passes.get(key)
        if volumes is None or any(v is None for v in volumes[:level]):
            raise RuntimeError(f"DCF block of level {level} ran before the shallower levels of "
                               "its pyramid (run the whole model, not a part of it)")
        volumes[level] = volume

    def take(self, level: int, like: torch.Tensor) -> list[torch.Tensor]:
        """The shallower levels' volumes pooled to ``like``'s (T, H, W); the deepest level
        ends the pass."""
        key = _pass_key()
        volumes = self._passes[key]
        size = like.shape[2:]
        out = []
        for j in range(level):
            v = volumes[j]
            while v.shape[3:] != size[1:] and v.shape[3] > size[1]:
                v = _halve(v)
            if v.shape[2:] != size:
                raise ValueError(f"cannot pool a correlation volume of size {tuple(volumes[j].shape[2:])} "
                                 f"to {tuple(size)}: DCF needs no temporal downsampling and "
                                 "stages 2x apart in space")
            volumes[j] = v  # cache: the next level pools from here (Algorithm 1 lines 12-14)
            out.append(v)
        if level == self.levels - 1:
            del self._passes[key]
        return out


class DCFBlock(nn.Module):
    """One DCF block (Algorithm 1, Fig. 3c, appendix B) as an ``after`` plug-in.

    Args:
        channels: C of the feature map.
        reduction: C -> C/``reduction`` before the correlation (4 on R(2+1)D, 2 on X3D).
        kernel_size: K (paper 5).
        offsets: temporal offsets (``dcf_offsets(L)``: long-term; ``(1,)``: basic, Table 1).
        pyramid, level: the model's :class:`CorrelationPyramid` and this block's level in it;
            ``pyramid=None``: no spatial pyramid (Table 1 ablation).

    Shape: (B, C, T, H, W) -> (B, C, T, H, W).
    """

    identity_at_init = True   # fuse BN gamma = 0: relu(F + 0) = F on a ReLU output (Sec. 3.2)

    def __init__(self, channels: int, *, reduction: int = 4, kernel_size: int = 5,
                 offsets: Sequence[int] = (-2, -1, 1, 2), dilation: int = 1,
                 pyramid: CorrelationPyramid | None = None, level: int = 0) -> None:
        super().__init__()
        inner = max(1, channels // reduction)
        self.reduce = nn.Sequential(nn.Conv3d(channels, inner, 1, bias=False),
                                    nn.BatchNorm3d(inner), nn.ReLU(inplace=True))
        self.corr = DCFCorrelation(kernel_size, offsets, dilation)
        incoming = 0
        if pyramid is not None:
            if pyramid.channels[level] != self.corr.out_channels:
                raise ValueError(f"pyramid level {level} expects {pyramid.channels[level]} "
                                 f"volume channels, this block makes {self.corr.out_channels}")
            incoming = pyramid.incoming_channels(level)
        # A plain attribute, not a submodule: the pyramid is shared and holds no parameters.
        self.pyramid, self.level = pyramid, level
        self.fuse = nn.Conv3d(self.corr.out_channels + incoming, channels, 1, bias=False)
        self.bn = nn.BatchNorm3d(channels)
        zero_init_bn(self.bn)  # "without breaking its initial behavior" (Sec. 3.2)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        volume = self.corr(self.reduce(x))
        stacked = volume
        if self.pyramid is not None:
            self.pyramid.put(self.level, volume)
            stacked = torch.cat([volume, *self.pyramid.take(self.level, volume)], dim=1)
        return self.relu(x + self.bn(self.fuse(stacked)))

    def extra_repr(self) -> str:
        return f"level={self.level}, pyramid={self.pyramid is not None}"


def dcf_plugins(stages: Sequence[str] = DCF_STAGES, *, reduction: int, kernel_size: int = 5,
                temporal_ranges: Mapping[str, int] | None = None, long_term: bool = True,
                pyramid: bool = True, dilation: int = 1) -> dict[str, PluginFactory]:
    """One DCF block factory per place (``"stem"``, ``"res2"``..``"res5"``), sharing one
    :class:`CorrelationPyramid` (levels in network order). ``long_term=False``: only the next
    frame (basic correlation); ``pyramid=False``: no cross-stage volumes (Table 1 ablations)."""
    unknown = set(stages) - set(PLACES)
    if unknown:
        raise ValueError(f"unknown DCF place(s) {sorted(unknown)}; expected some of {PLACES}")
    ranges = {**TEMPORAL_RANGE, **dict(temporal_ranges or {})}
    ordered = [p for p in PLACES if p in stages]
    offsets = {p: dcf_offsets(ranges[p]) if long_term else (1,) for p in ordered}
    shared = (CorrelationPyramid([len(offsets[p]) * kernel_size ** 2 for p in ordered])
              if pyramid and ordered else None)
    return {p: partial(DCFBlock, reduction=reduction, kernel_size=kernel_size, offsets=offsets[p],
                       dilation=dilation, pyramid=shared, level=level)
            for level, p in enumerate(ordered)}


# --- builders ------------------------------------------------------------------------------

def r2plus1d_dw(depth: int = 50, *, num_classes: int,
                after: Mapping[str, Sequence[tuple[int, PluginFactory]]] | None = None,
                stem_after: Sequence[PluginFactory] = (), stem_width: int = 64,
                stem_pool: bool = True, widths: Sequence[int] = (64, 128, 256, 512),
                stage_blocks: Sequence[int] | None = None, dropout: float = 0.5,
                in_channels: int = 3) -> VideoResNet:
    """DCF's R(2+1)D ResNet-``depth`` (appendix Table 6): channel-wise 3x1x1 + 1x3x3 middle conv,
    no temporal downsampling, 1x7x7 stem with max-pool. ``stem_width``, ``stem_pool``,
    ``widths``, ``stage_blocks``: smaller backbones (:func:`vcorr.models.corrnet.resnet_backbone`).
    Shape: (B, in_channels, T, H, W) -> (B, num_classes)."""
    stem = StemSpec(stem_width, partial(conv_2d, k=7), (1, 2, 2), pool=stem_pool,
                    after=tuple(stem_after))
    return resnet_backbone(depth, num_classes=num_classes,
                           conv=partial(conv_temporal_spatial, depthwise=True), stem=stem,
                           widths=widths, stage_blocks=stage_blocks, after=after,
                           dropout=dropout, in_channels=in_channels)


def _split(plugins: Mapping[str, PluginFactory]) -> dict[str, Any]:
    """Plug-in factories -> ``stem_after`` and ``after`` (last block of each stage) arguments."""
    return {"stem_after": tuple(f for p, f in plugins.items() if p == "stem"),
            "after": {p: ((-1, f),) for p, f in plugins.items() if p != "stem"}}


def dcf_r2plus1d(depth: int = 50, *, num_classes: int, dcf_stages: Sequence[str] = DCF_STAGES,
                 reduction: int = 4, kernel_size: int = 5,
                 temporal_ranges: Mapping[str, int] | None = None, long_term: bool = True,
                 pyramid: bool = True, stem_width: int = 64, stem_pool: bool = True,
                 widths: Sequence[int] = (64, 128, 256, 512),
                 stage_blocks: Sequence[int] | None = None, dropout: float = 0.5,
                 in_channels: int = 3) -> VideoResNet:
    """DCF on R(2+1)D-``depth`` (Sec. 3.3, Table 3-5); switches as :func:`dcf_plugins`, backbone
    sizes as :func:`r2plus1d_dw`.
    Shape: (B, in_channels, T, H, W) -> (B, num_classes)."""
    plugins = dcf_plugins(dcf_stages, reduction=reduction, kernel_size=kernel_size,
                          temporal_ranges=temporal_ranges, long_term=long_term, pyramid=pyramid)
    return r2plus1d_dw(depth, num_classes=num_classes, stem_width=stem_width, stem_pool=stem_pool,
                       widths=widths, stage_blocks=stage_blocks, dropout=dropout,
                       in_channels=in_channels, **_split(plugins))


def dcf_x3d(*, num_classes: int, dcf_stages: Sequence[str] = DCF_STAGES, reduction: int = 2,
            kernel_size: int = 5, temporal_ranges: Mapping[str, int] | None = None,
            long_term: bool = True, pyramid: bool = True, dropout: float = 0.5,
            stem_t: int = 3, shortcut_norm: str = "always", stem_width: int = 24,
            widths: Sequence[int] = X3D_WIDTHS, depths: Sequence[int] = X3D_DEPTHS,
            strides: Sequence[int] = (2, 2, 2, 2), head_hidden: int = 2048,
            in_channels: int = 3) -> VideoResNet:
    """DCF on X3D (Sec. 3.3, Tables 1-4); switches as :func:`dcf_plugins`. ``stem_t``,
    ``shortcut_norm`` and the backbone sizes (``stem_width``, ``widths``, ``depths``,
    ``strides``, ``head_hidden``) as :func:`vcorr.models.x3d.x3d` (``stem_t=5`` takes a
    PyTorchVideo X3D backbone).
    Shape: (B, in_channels, T, H, W) -> (B, num_classes)."""
    plugins = dcf_plugins(dcf_stages, reduction=reduction, kernel_size=kernel_size,
                          temporal_ranges=temporal_ranges, long_term=long_term, pyramid=pyramid)
    return x3d(num_classes=num_classes, dropout=dropout, in_channels=in_channels, stem_t=stem_t,
               shortcut_norm=shortcut_norm, stem_width=stem_width, widths=widths, depths=depths,
               strides=strides, head_hidden=head_hidden, **_split(plugins))
