"""One generic video ResNet (He et al. 2016) that every architecture in :mod:`vcorr.models` is built on.

A network is ``stem -> stages -> head``; each stage is described by a :class:`StageSpec` (number
of blocks, width, spatial and temporal stride of its first block, a *block factory*, a *conv
factory* and the plug-ins to insert). Papers differ only in these data:

* C2D / C3D / R(2+1)D: the conv factory (1xkxk, txkxk, (2+1)D; :mod:`vcorr.models.layers`).
* ARTNet: a block factory whose second conv is a SMART unit (:mod:`vcorr.models.artnet`).
* Non-local nets: ``after=[(block_index, factory)]``: a module applied to the block's output.
* CPNet: ``post_add=[(block_index, factory)]``: a module applied *inside* the block to the sum
  ``residual + shortcut``, before the block's final ReLU (CPNet supp. Sec. B, Fig. 1).

A *plug-in factory* is ``(channels) -> nn.Module`` (bind other arguments with
:func:`functools.partial`); the module must map ``(B, C, T, H, W)`` to the same shape. Block
indices may be negative (``-1`` = the stage's last block).

A *block factory* is ``(in_channels, width, stride, *, conv, post_add) -> nn.Module`` whose
module has an ``out_channels`` attribute. A *head factory* is
``(in_channels, num_classes, dropout) -> nn.Module`` applied to the last feature map.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Sequence

import torch
from torch import nn

from vcorr.models.ops.precision import float32_convs_on_cpu
from vcorr.models.layers import (ConvFactory, StemSpec, Stem, StrideLike, Triple, as_triple, conv_2d,
                                 conv_temporal)

PluginFactory = Callable[[int], nn.Module]
BlockFactory = Callable[..., nn.Module]
HeadFactory = Callable[..., nn.Module]


def _shortcut(in_channels: int, out_channels: int, stride: StrideLike, *,
              norm: bool = True) -> nn.Module:
    """Projection shortcut (1x1x1 conv + BN, ResNet "option B") when shape changes, else identity.

    ``norm=False`` leaves the BN out (PyTorchVideo's X3D has none where only the stride changes).
    """
    stride = as_triple(stride)
    if in_channels == out_channels and stride == (1, 1, 1):
        return nn.Identity()
    conv = nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm3d(out_channels)) if norm else nn.Sequential(conv)


class BasicBlock(nn.Module):
    """Two-conv residual block (ResNet-18/34).

    ``relu(post_add(bn2(conv_b(relu(bn1(conv(x))))) + shortcut(x)))``; ``conv`` carries the
    stride. ``conv_b`` (default: ``conv``) lets ARTNet put a SMART unit second.
    Shape: (B, C_in, T, H, W) -> (B, width, T/st, H/s, W/s).
    """

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: StrideLike = 1, *,
                 conv: ConvFactory = conv_2d, conv_b: ConvFactory | None = None,
                 post_add: nn.Module | None = None) -> None:
        super().__init__()
        self.out_channels = width
        self.conv1 = conv(in_channels, width, stride)
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = (conv_b or conv)(width, width, 1)
        self.bn2 = nn.BatchNorm3d(width)
        self.shortcut = _shortcut(in_channels, width, stride)
        self.post_add = post_add if post_add is not None else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + self.shortcut(x)
        # The plug-in sees the pre-activation sum (what CPNet's k-NN runs on).
        return self.relu(self.post_add(out))


class Bottleneck(nn.Module):
    """1x1x1 -> ``conv`` (stride here, ResNet v1.5) -> 1x1x1 x ``expansion`` residual block.

    ``conv_a`` replaces the first 1x1x1 conv (e.g. an inflated 3x1x1 one). ``conv_a_t`` does so
    by data: the temporal kernel of the first conv of block ``index`` is
    ``conv_a_t[index % len(conv_a_t)]`` (t x 1 x 1; the Slow and I3D ResNets of Feichtenhofer et
    al. 2019 and Carreira and Zisserman 2017 as PyTorchVideo lays them out, e.g. ``(3, 1)``
    alternates); the stage needs ``pass_index=True``.
    Shape: (B, C_in, T, H, W) -> (B, width * expansion, T/st, H/s, W/s).
    """

    expansion = 4

    def __init__(self, in_channels: int, width: int, stride: StrideLike = 1, *,
                 conv: ConvFactory = conv_2d, conv_a: ConvFactory | None = None,
                 post_add: nn.Module | None = None, expansion: int | None = None,
                 index: int = 0, conv_a_t: Sequence[int] = (1,)) -> None:
        super().__init__()
        expansion = expansion or self.expansion
        out_channels = width * expansion
        self.out_channels = out_channels
        t_a = conv_a_t[index % len(conv_a_t)]
        if conv_a is None and t_a > 1:
            conv_a = partial(conv_temporal, t=t_a)
        self.conv1 = (conv_a(in_channels, width, 1) if conv_a is not None
                      else nn.Conv3d(in_channels, width, 1, bias=False))
        self.bn1 = nn.BatchNorm3d(width)
        self.conv2 = conv(width, width, stride)
        self.bn2 = nn.BatchNorm3d(width)
        self.conv3 = nn.Conv3d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride)
        self.post_add = post_add if post_add is not None else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out)) + self.shortcut(x)
        return self.relu(self.post_add(out))


class PlainBlock(nn.Module):
    """One conv -> BN -> [post_add] -> ReLU, no residual (the toy nets' second conv layer);
    ``norm=False`` drops the BN.

    Shape: (B, C_in, T, H, W) -> (B, width, T/st, H/s, W/s).
    """

    expansion = 1

    def __init__(self, in_channels: int, width: int, stride: StrideLike = 1, *,
                 conv: ConvFactory = conv_2d, post_add: nn.Module | None = None,
                 norm: bool = True) -> None:
        super().__init__()
        self.out_channels = width
        self.conv = conv(in_channels, width, stride)
        self.bn = nn.BatchNorm3d(width) if norm else nn.Identity()
        self.post_add = post_add if post_add is not None else nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.post_add(self.bn(self.conv(x))))


@dataclass(frozen=True)
class StageSpec:
    """One residual stage ("res2".."res5").

    ``width`` is the block width (output channels of a basic block, inner width of a
    bottleneck). ``stride``/``temporal_stride`` apply to the first block. ``post_add`` and
    ``after`` are ``(block_index, plug-in factory)`` pairs; see the module docstring.
    ``pass_index=True`` also passes ``index=i`` (the block's position in the stage) to the block
    factory, for blocks that alternate within a stage (X3D's squeeze-excitation every other block).
    ``pool``: a max-pool (kernel = stride, no padding) after the stage's last block and its
    plug-ins, e.g. ``(2, 1, 1)`` halves T (the C2D and I3D ResNet-50 of PyTorchVideo pool time
    after res2); the stage's child ``"pool"``.
    """

    name: str
    blocks: int
    width: int
    stride: int = 2
    temporal_stride: int = 1
    block: BlockFactory = BasicBlock
    conv: ConvFactory = conv_2d
    post_add: tuple[tuple[int, PluginFactory], ...] = field(default=())
    after: tuple[tuple[int, PluginFactory], ...] = field(default=())
    pass_index: bool = False
    pool: Triple | None = None


def block_expansion(factory: BlockFactory) -> int:
    """``expansion`` of a block class, also through ``functools.partial`` wrappers."""
    while isinstance(factory, partial):
        if "expansion" in factory.keywords and factory.keywords["expansion"] is not None:
            return int(factory.keywords["expansion"])
        factory = factory.func
    return int(getattr(factory, "expansion", 1))


def _resolve_index(spec: StageSpec, index: int, what: str) -> int:
    if not -spec.blocks <= index < spec.blocks:
        raise ValueError(f"{what} block index {index} is out of range for stage {spec.name} "
                         f"with {spec.blocks} blocks")
    return index % spec.blocks


def build_stage(spec: StageSpec, in_channels: int) -> tuple[nn.Sequential, int]:
    """The stage as ``nn.Sequential`` (children ``"0", "1", ...`` and plug-ins ``"<i>_after<j>"``)."""
    post: dict[int, list[PluginFactory]] = {}
    for index, factory in spec.post_add:
        post.setdefault(_resolve_index(spec, index, "post_add"), []).append(factory)
    after: dict[int, list[PluginFactory]] = {}
    for index, factory in spec.after:
        after.setdefault(_resolve_index(spec, index, "after"), []).append(factory)

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = in_channels
    for i in range(spec.blocks):
        stride = (spec.temporal_stride, spec.stride, spec.stride) if i == 0 else (1, 1, 1)
        # Plug-ins are built before the block, so its output width is derived from the factory.
        out_channels = spec.width * block_expansion(spec.block)
        plugins = [f(out_channels) for f in post.get(i, [])]
        post_add = None if not plugins else plugins[0] if len(plugins) == 1 else nn.Sequential(*plugins)
        extra = {"index": i} if spec.pass_index else {}
        block = spec.block(channels, spec.width, stride, conv=spec.conv, post_add=post_add, **extra)
        if block.out_channels != out_channels:
            raise ValueError(f"block factory of {spec.name} built {block.out_channels} channels, "
                             f"expected width * expansion = {out_channels}")
        channels = block.out_channels
        layers[str(i)] = block
        for j, factory in enumerate(after.get(i, [])):
            layers[f"{i}_after{j}"] = factory(channels)
    if spec.pool is not None:
        layers["pool"] = nn.MaxPool3d(spec.pool, stride=spec.pool)
    return nn.Sequential(layers), channels


class VideoResNet(nn.Module):
    """stem -> stages -> head, configured entirely by data (:class:`StemSpec`, :class:`StageSpec`).

    Shape: (B, C_in, T, H, W) -> (B, num_classes); :meth:`forward_features` returns the last
    feature map (B, C, T', H', W').
    """

    def __init__(self, stages: Sequence[StageSpec], num_classes: int, *,
                 stem: StemSpec = StemSpec(), in_channels: int = 3,
                 head: HeadFactory | None = None, dropout: float = 0.5) -> None:
        super().__init__()
        from vcorr.models.heads import ClassifierHead  # local: heads import nothing from here

        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.in_channels = in_channels
        self.stem = Stem(in_channels, stem)
        channels = self.stem.out_channels
        self.stage_names: list[str] = []
        for spec in stages:
            stage, channels = build_stage(spec, channels)
            self.add_module(spec.name, stage)
            self.stage_names.append(spec.name)
        self.feature_channels = channels
        self.head = (head or ClassifierHead)(channels, num_classes, dropout)
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected a clip of shape (B, {self.in_channels}, T, H, W), "
                             f"got {tuple(x.shape)}")
        # Under CPU autocast the convolutions run in float32 (exact gradients on every CPU).
        with float32_convs_on_cpu():
            x = self.stem(x)
            for name in self.stage_names:
                x = getattr(self, name)(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        with float32_convs_on_cpu():  # heads with convolutions (X3D's conv5)
            return self.head(x)


def init_weights(model: nn.Module) -> None:
    """He-normal (fan-out) convs; BN gamma=1, beta=0 except zero-initialised residual BNs."""
    for m in model.modules():
        if isinstance(m, nn.Conv3d) and m.weight.requires_grad:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm3d, nn.BatchNorm1d)) and not getattr(m, "_vcorr_zero_init", False):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


# Stage layouts of the standard depths: (block factory, blocks per stage).
DEPTHS: dict[int, tuple[BlockFactory, tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    26: (Bottleneck, (2, 2, 2, 2)),   # R(2+1)D-26 of the CorrNet paper (Table 2)
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
STAGE_NAMES = ("res2", "res3", "res4", "res5")


def stage_layout(depth: int, stage_blocks: Sequence[int] | None = None
                 ) -> tuple[BlockFactory, tuple[int, int, int, int]]:
    """The block factory and blocks per stage (res2..res5) of ResNet-``depth``.

    ``stage_blocks`` replaces the depth's blocks per stage and keeps its block kind (basic for
    18/34, bottleneck from 26 up), e.g. ``(1, 1, 1, 1)`` for the CPU-size variants of
    :mod:`vcorr.models.zoo_tiny`. Raises ``ValueError`` for an unknown depth or a layout that is
    not four positive counts.
    """
    if depth not in DEPTHS:
        raise ValueError(f"unsupported depth {depth}; expected one of {sorted(DEPTHS)}")
    block, layout = DEPTHS[depth]
    if stage_blocks is None:
        return block, layout
    counts = tuple(int(n) for n in stage_blocks)
    if len(counts) != len(STAGE_NAMES) or min(counts) < 1:
        raise ValueError(f"stage_blocks must be {len(STAGE_NAMES)} positive block counts "
                         f"(res2..res5), got {tuple(stage_blocks)}")
    return block, counts  # type: ignore[return-value]
