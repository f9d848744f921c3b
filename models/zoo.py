"""Family builders (a few lines each, all on :class:`vcorr.models.resnet.VideoResNet`) and the
registered variants of the CPNet paper's comparison (CPNet main paper Tables 2-5, supp. Tables
1-3, poster toy experiment).

Parameter counts quoted as ``paper_params_m`` are in the CPNet paper's unit, 2^20 parameters.
"""
from __future__ import annotations

from functools import partial
from typing import Any, Mapping, Sequence


from vcorr.models.artnet import smart_block, smart_conv
from vcorr.models.cp import CPModule
from vcorr.models.heads import ClassifierHead, TRNHead
from vcorr.models.layers import ConvFactory, StemSpec, conv_2d, conv_3d, resolve_conv
from vcorr.models.nonlocal_block import NonLocalBlock
from vcorr.models.registry import register_model
from vcorr.models.resnet import (STAGE_NAMES, BlockFactory, Bottleneck, HeadFactory, PlainBlock,
                                 PluginFactory, StageSpec, VideoResNet, stage_layout)

Placement = Mapping[str, Sequence[tuple[int, PluginFactory]]]
BASE_WIDTHS = (64, 128, 256, 512)


def _per_stage(value: Any, n: int = 4) -> list[Any]:
    """One value per stage: a list/tuple of length n, or a single value repeated."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"expected {n} per-stage values, got {len(value)}")
        return list(value)
    return [value] * n


def place(factory: PluginFactory, blocks: Mapping[str, Sequence[int]]) -> dict[str, tuple]:
    """``{"res3": (0, 1)}`` -> ``{"res3": ((0, factory), (1, factory))}`` for post_add/after."""
    return {stage: tuple((i, factory) for i in idx) for stage, idx in blocks.items()}


def video_resnet(depth: int = 18, *, num_classes: int, conv: Any = "2d",
                 stem_conv: str | ConvFactory = "2d", stem_t: int = 3, stem_width: int = 64,
                 stem_k: int = 7, stem_stride: int = 2, stem_pool: bool = True,
                 stage_blocks: Sequence[int] | None = None, widths: Sequence[int] = BASE_WIDTHS,
                 strides: Sequence[int] = (1, 2, 2, 2),
                 temporal_strides: Sequence[int] = (1, 1, 1, 1), block: Any = None,
                 conv_a_t: Sequence[Any] = ((1,),) * 4,
                 stage_pools: Mapping[str, tuple[int, int, int]] | None = None,
                 post_add: Placement | None = None, after: Placement | None = None,
                 head: HeadFactory | None = None, head_pool: Sequence[int] | None = None,
                 dropout: float = 0.5, in_channels: int = 3) -> VideoResNet:
    """A ResNet-``depth`` video network (stages res2..res5, stem 7x7 stride 2 + max-pool).

    ``conv``: a conv kind ("2d", "3d", "2plus1d") or factory, or one per stage. ``block``: a
    block factory (or one per stage) replacing the depth's default. ``stem_conv``: "2d"
    (1 x ``stem_k`` x ``stem_k``), "3d" (``stem_t`` x ``stem_k`` x ``stem_k``) or a factory;
    ``stem_stride``: its spatial stride. ``stage_blocks``: blocks per stage replacing the depth's
    (:func:`vcorr.models.resnet.stage_layout`). ``strides``: spatial stride of each stage's first block.
    ``conv_a_t``: per stage, the cycle of temporal kernels of the blocks' first conv (bottleneck
    blocks; :class:`vcorr.models.resnet.Bottleneck`). ``stage_pools``: a max-pool after a stage
    (:class:`vcorr.models.resnet.StageSpec` ``pool``). ``head_pool``: the classifier's windowed
    pooling kernel (:class:`vcorr.models.heads.ClassifierHead`). ``post_add``/``after``: plug-ins per
    stage name.
    Shape: (B, in_channels, T, H, W) -> (B, num_classes).
    """
    default_block, layout = stage_layout(depth, stage_blocks)
    post_add, after = dict(post_add or {}), dict(after or {})
    unknown = (set(post_add) | set(after)) - set(STAGE_NAMES)
    if unknown:
        raise ValueError(f"unknown stage(s) {sorted(unknown)}; expected {STAGE_NAMES}")
    convs = [resolve_conv(c) for c in _per_stage(conv)]
    blocks: list[BlockFactory] = [b or default_block for b in _per_stage(block)]
    if isinstance(stem_conv, str):
        stem_factory = (partial(conv_3d, k=stem_k, t=stem_t) if stem_conv == "3d"
                        else resolve_conv(stem_conv, k=stem_k))
    else:
        stem_factory = stem_conv
    stage_pools = dict(stage_pools or {})
    if set(stage_pools) - set(STAGE_NAMES):
        raise ValueError(f"unknown stage(s) {sorted(set(stage_pools) - set(STAGE_NAMES))} in "
                         f"stage_pools; expected {STAGE_NAMES}")
    cycles = [tuple(c) if isinstance(c, (list, tuple)) else (int(c),) for c in _per_stage(conv_a_t)]
    for i, cycle in enumerate(cycles):
        if any(t > 1 for t in cycle):
            if blocks[i] is not Bottleneck:
                raise ValueError("conv_a_t needs bottleneck blocks (depth >= 50)")
            blocks[i] = partial(Bottleneck, conv_a_t=cycle)
    if head is None and head_pool is not None:
        head = partial(ClassifierHead, pool_kernel=tuple(head_pool))
    stages = [
        StageSpec(name, n, w, stride=s, temporal_stride=ts, block=b, conv=c,
                  post_add=tuple(post_add.get(name, ())), after=tuple(after.get(name, ())),
                  pass_index=any(t > 1 for t in cyc), pool=stage_pools.get(name))
        for name, n, w, s, ts, b, c, cyc in zip(STAGE_NAMES, layout, widths, _per_stage(strides),
                                                temporal_strides, blocks, convs, cycles)
    ]
    return VideoResNet(stages, num_classes, stem=StemSpec(stem_width, stem_factory, (1, stem_stride, stem_stride), stem_pool),
                       in_channels=in_channels, head=head, dropout=dropout)


# --- family builders ---------------------------------------------------------------------

def c2d(depth: int = 18, **kw: Any) -> VideoResNet:
    """C2D: ResNet with 1xkxk convs and no temporal pooling (CPNet Table 2, "C2D baseline")."""
    return video_resnet(depth, conv="2d", stem_conv="2d", **kw)


def c3d(depth: int = 18, **kw: Any) -> VideoResNet:
    """C3D ResNet: every kxk conv is 3xkxk, conv1 is 3x7x7 stride (1,2,2) (CPNet supp. Table 1)."""
    return video_resnet(depth, conv="3d", stem_conv="3d", **kw)


def artnet(depth: int = 18, *, smart_stages: Sequence[str] = ("res2", "res3", "res4"),
           smart_stem: bool = True, **kw: Any) -> VideoResNet:
    """ARTNet: C3D ResNet whose conv1 and the blocks of ``smart_stages`` use SMART units
    (ARTNet-ResNet-18 of Wang et al. 2018 as listed in CPNet supp. Table 1)."""
    blocks = [smart_block if name in smart_stages else None for name in STAGE_NAMES]
    stem = partial(smart_conv, k=kw.get("stem_k", 7), t=3) if smart_stem else "3d"
    return video_resnet(depth, conv="3d", stem_conv=stem, block=blocks, **kw)


def nl_net(depth: int = 18, *, nl_blocks: Mapping[str, Sequence[int]], sub_sample: bool = True,
           **kw: Any) -> VideoResNet:
    """C2D with embedded-Gaussian non-local blocks after the given blocks (Wang et al. 2018)."""
    return video_resnet(depth, conv="2d", after=place(partial(NonLocalBlock, sub_sample=sub_sample),
                                                      nl_blocks), **kw)


def cpnet(depth: int = 18, *, cp_blocks: Mapping[str, Sequence[int]], k: int = 8,
          mlp_ratios: Sequence[float] = (0.25, 0.5), reduction: int | None = None,
          downsample_stages: Sequence[str] = (), **kw: Any) -> VideoResNet:
    """CPNet: C2D with CP modules before the ReLU of the given blocks (CPNet Sec. 3-4)."""
    post = {stage: tuple((i, partial(CPModule, k=k, mlp_ratios=tuple(mlp_ratios),
                                      reduction=reduction, downsample=stage in downsample_stages))
                         for i in idx)
            for stage, idx in cp_blocks.items()}
    return video_resnet(depth, conv="2d", post_add=post, **kw)


def trn(depth: int = 18, *, num_frames: int = 8, feature_dim: int = 256, hidden: int = 256,
        tuples_per_scale: int = 3, **kw: Any) -> VideoResNet:
    """Multi-scale TRN head on a C2D backbone (Zhou et al. 2018)."""
    head = partial(TRNHead, num_frames=num_frames, feature_dim=feature_dim, hidden=hidden,
                   tuples_per_scale=tuples_per_scale)
    return video_resnet(depth, conv="2d", head=head, **kw)


def toy_net(*, num_classes: int = 4, conv: str = "2d", width: int = 16, stride: int = 1,
            module: str | None = None, head: str = "fc", num_frames: int = 3, k: int = 8,
            mlp_ratios: Sequence[float] = (0.25, 0.5), in_channels: int = 3,
            norm: bool = False, tie_break: float = 0.0) -> VideoResNet:
    """The moving-square toy models (CPNet poster): two 3x3 conv layers (conv + ReLU, stride 1,
    no bias), then the paper's module, global pooling and FC.

    ``conv``: "2d" (1x3x3), "3d" (3x3x3) or "smart" (SMART units, ARTNet). ``module``: None,
    "nl" (non-local block after the second layer) or "cp" (CP module before its ReLU).
    ``head``: "fc" or "trn" (multi-scale relations over ``num_frames`` frames). ``stride``: the
    spatial stride of the first layer (2 makes the CP module's k-NN 16x cheaper on 32x32 input).
    ``norm``: a BN after each of the two convs (SMART units keep their own BNs). The poster
    allows "two layers of 3x3 conv"; a BN over mostly black frames scales the square's few
    positions into outliers ~5 std away, whose feature terms then drown the CP MLP's
    (dt, dh, dw) input, and CPNet fits the toy for few seeds (README, toy experiment).
    ``tie_break``: see :class:`CPModule`.
    """
    factories = {"2d": partial(conv_2d, k=3), "3d": partial(conv_3d, k=3, t=3),
                 "smart": partial(smart_conv, k=3, t=3)}
    if conv not in factories:
        raise ValueError(f"unknown toy conv {conv!r}; expected one of {sorted(factories)}")
    post_add = ((0, partial(CPModule, k=k, mlp_ratios=tuple(mlp_ratios), tie_break=tie_break)),
                ) if module == "cp" else ()
    # The NL paper's phi/g sub-sampling is kept (45 vs 8.8 ms per toy clip without it). Its 2x2
    # max-pool tells even from odd positions; with BN in the toy convs that gave NL the motion
    # axis (48%), without BN NL stays at chance.
    after = ((0, NonLocalBlock),) if module == "nl" else ()
    if module not in (None, "cp", "nl"):
        raise ValueError(f"unknown toy module {module!r}; expected None, 'cp' or 'nl'")
    heads = {"fc": None, "trn": partial(TRNHead, num_frames=num_frames)}
    if head not in heads:
        raise ValueError(f"unknown toy head {head!r}; expected 'fc' or 'trn'")
    stage = StageSpec("conv2", 1, width, stride=1, block=partial(PlainBlock, norm=norm),
                      conv=factories[conv], post_add=post_add, after=after)
    return VideoResNet([stage], num_classes,
                       stem=StemSpec(width, factories[conv], (1, stride, stride), False, norm=norm),
                       in_channels=in_channels, head=heads[head], dropout=0.0)


# --- registered variants ------------------------------------------------------------------
K400 = dict(input_shape=(3, 8, 224, 224), num_classes=400)      # Kinetics, 8-frame clips
SSV2 = dict(input_shape=(3, 12, 224, 224), num_classes=174)     # Something-Something v2
TOY = dict(input_shape=(3, 3, 32, 32), num_classes=4)           # moving square, T=3
RES345_ALL = {"res3": (0, 1), "res4": (0, 1), "res5": (0, 1)}   # every block of res3-5 (ResNet-18)

register_model("c2d_r18", c2d, paper="CPNet supp. Table 1 (C2D)", paper_params_m=10.84, depth=18, **K400)
register_model("c2d_r34", c2d, paper="CPNet Table 5 (C2D Res34 baseline)", paper_params_m=20.3,
               depth=34, **SSV2)
register_model("c2d_r50", c2d, paper="C2D ResNet-50 (Non-local paper baseline)", depth=50, **K400)
register_model("c2d_r101", c2d, paper="C2D ResNet-101 (backbone of CPNet Table 4)", depth=101, **K400)
register_model("c3d_r18", c3d, paper="CPNet supp. Table 1 (C3D)", paper_params_m=31.81, depth=18, **K400)
register_model("artnet_r18", artnet, paper="CPNet supp. Table 1 (ARTNet)", paper_params_m=31.81,
               depth=18, **K400)
register_model("nl_c2d_r18", nl_net, paper="CPNet supp. Table 1 (NL C2D, 6 NL blocks)",
               paper_params_m=10.88, depth=18, nl_blocks=RES345_ALL, **K400)
register_model("trn_r18", trn, paper="TRN multi-scale head on C2D ResNet-18", depth=18,
               num_frames=8, **K400)
register_model("cpnet_r18", cpnet, paper="CPNet supp. Table 1 (6 CP modules, k=8)",
               paper_params_m=10.86, depth=18, cp_blocks=RES345_ALL, k=8, **K400)
# The paper's "Res18, 5 CP" (Table 5) cannot have the Res34 layout (res4 of ResNet-18 has 2
# blocks). Our assumption: every block of res3 and res4 plus the first of res5; the authors'
# code uses 4 modules (res3 + res4), registered as cpnet_r18_4cp.
register_model("cpnet_r18_5cp", cpnet, paper="CPNet Table 5 (Res18, 5 CP, k=12)",
               paper_params_m=11.3, depth=18, cp_blocks={"res3": (0, 1), "res4": (0, 1), "res5": (0,)},
               k=12, **SSV2)
register_model("cpnet_r18_4cp", cpnet, paper="CPNet authors' code (Res18, 4 CP, k=12)", depth=18,
               cp_blocks={"res3": (0, 1), "res4": (0, 1)}, k=12, **SSV2)
register_model("cpnet_r34", cpnet, paper="CPNet Table 5, supp. Table 3 (Res34, 5 CP, k=12)",
               paper_params_m=21.0, depth=34, cp_blocks={"res3": (-2, -1), "res4": (-3, -2, -1)},
               k=12, **SSV2)
register_model("cpnet_r101", cpnet, paper="CPNet Table 4, supp. Table 2 (Res101, 5 CP, k=4)",
               paper_params_m=42.1, depth=101, cp_blocks={"res3": (-2, -1), "res4": (-3, -2, -1)},
               k=4, mlp_ratios=(1 / 8,), reduction=8, downsample_stages=("res3",), **K400)

# CPNet supp. D as written: "[C/16, C/8]" MLP hidden widths, k = 4, and nothing else -- no 1x1
# reduction before the k-NN, no spatial downsampling in res3 (cpnet_r101 is the authors' code).
register_model("cpnet_r101_supp", cpnet, paper="CPNet supp. D text (Res101, 5 CP, k=4, MLP [C/16, C/8])",
               paper_params_m=42.1, depth=101, cp_blocks={"res3": (-2, -1), "res4": (-3, -2, -1)},
               k=4, mlp_ratios=(1 / 16, 1 / 8), **K400)
# Jester at 112x112 (CPNet supp. G times this model): the authors' scripts crop 112 of 128 px
# frames and give conv1 stride 1, so the max-pool leaves the 56/28/14/7 maps of supp. Table 3.
JESTER_112 = dict(input_shape=(3, 12, 112, 112), num_classes=27)
register_model("c2d_r34_112", c2d, paper="CPNet Table 5 (C2D Res34, Jester), supp. G input 112",
               paper_params_m=20.3, depth=34, stem_stride=1, **JESTER_112)
register_model("cpnet_r34_112", cpnet, paper="CPNet Table 5 (Res34, 5 CP, k=12, Jester), supp. G input 112",
               paper_params_m=21.0, depth=34, cp_blocks={"res3": (-2, -1), "res4": (-3, -2, -1)},
               k=12, stem_stride=1, **JESTER_112)

register_model("toy_c2d", toy_net, paper="CPNet poster toy (C2D)", conv="2d", **TOY)
register_model("toy_c3d", toy_net, paper="CPNet poster toy (C3D)", conv="3d", **TOY)
register_model("toy_artnet", toy_net, paper="CPNet poster toy (ARTNet)", conv="smart", **TOY)
register_model("toy_trn", toy_net, paper="CPNet poster toy (TRN)", conv="2d", head="trn",
               num_frames=3, **TOY)
register_model("toy_nl", toy_net, paper="CPNet poster toy (NL)", conv="2d", module="nl", **TOY)
# k-NN ties broken by space-time distance: the black background gives thousands of exactly equal
# distances, which the authors' top-k breaks by index and ours by float rounding (a background
# query's neighbour would jump across the frame). k=2: a middle-frame query has two equally good
# neighbours, one in the frame before and one after; with k=1 one of them is picked by rounding.
# A C-wide MLP. README, toy experiment, has the runs behind these choices.
register_model("toy_cpnet", toy_net, paper="CPNet poster toy (CPNet)", conv="2d", module="cp",
               k=2, mlp_ratios=(1.0, 1.0), tie_break=0.01, **TOY)
