"""Exact layouts of the Kinetics-400 video models that torchvision and PyTorchVideo publish
weights for, as registered variants of the generic video ResNet and X3D builders, so that their
checkpoints load tensor for tensor (:mod:`vcorr.pipelines.weights` converts the names).

Every entry is data on :func:`vcorr.models.zoo.video_resnet` or :func:`vcorr.models.x3d.x3d`; the layouts
follow the libraries' model builders (torchvision 0.29 ``torchvision.models.video.resnet``,
PyTorchVideo 0.1.5 ``pytorchvideo.models.hub``), the parameter counts match theirs.

* ``tv_r3d_18``, ``tv_mc3_18``, ``tv_r2plus1d_18``: torchvision's video ResNet-18s (Tran et al.
  2018): stem without max-pool, stride 2 in time and space in res3-res5 (MC3: 3D convs in res2
  only, no temporal stride); R(2+1)D's stem is 1x7x7 (45 filters) then 3x1x1, and both convs of a
  block use the mid width of the block's first conv.
* ``ptv_c2d_r50``, ``ptv_i3d_r50``, ``ptv_slow_r50``: 1x7x7 (I3D: 5x7x7) stem with max-pool;
  C2D and I3D max-pool time 2x after res2; I3D and Slow inflate the first 1x1x1 conv of some
  blocks to 3x1x1.
* ``ptv_r2plus1d_r50``: the CorrNet Table 2 layout at R50 (3x1x1 then 1x3x3 at the block width,
  no stem max-pool, res2 strided, temporal stride 2 in res4 and res5).
* ``ptv_csn_r101``: ir-CSN-101 (Tran et al. 2019): channel-wise 3x3x3 middle conv, 3x7x7 stem with
  max-pool, temporal stride 2 in res3-res5.
* ``ptv_x3d_xs/s/m/l``: X3D with a 5-tap stem temporal conv and no BN on res2's stride-only
  shortcut; XS, S and M share one network, L is deeper (depth factor 5: 5, 10, 25, 15 blocks).

PyTorchVideo's heads average-pool with a fixed kernel (stride 1), project every window and
average (``head_pool``; :func:`vcorr.models.heads.window_mean`); their X3D and R(2+1)D hub models
then apply a softmax per window, ours return logits.
"""
from __future__ import annotations

from functools import partial

from torch import nn

from vcorr.models.layers import StrideLike, conv_2plus1d, conv_depthwise, conv_temporal_spatial, r2plus1d_mid_width
from vcorr.models.registry import register_model
from vcorr.models.resnet import BasicBlock
from vcorr.models.x3d import x3d
from vcorr.models.zoo import video_resnet


def shared_mid_block(in_channels: int, width: int, stride: StrideLike = 1, *,
                     conv=conv_2plus1d, post_add: nn.Module | None = None) -> BasicBlock:
    """Basic block of (2+1)D convs that both use the mid width of the first one,
    ``r2plus1d_mid_width(in_channels, width)`` (torchvision's R(2+1)D-18 computes it once per
    block). Shape: (B, C_in, T, H, W) -> (B, width, T/st, H/s, W/s)."""
    mid = r2plus1d_mid_width(in_channels, width)
    return BasicBlock(in_channels, width, stride, conv=partial(conv, mid=mid), post_add=post_add)


shared_mid_block.expansion = 1  # type: ignore[attr-defined]

TV = dict(input_shape=(3, 16, 112, 112), num_classes=400)        # torchvision: 16 x 112 x 112
TV_STEM = dict(stem_conv="3d", stem_t=3, stem_pool=False, dropout=0.0)

register_model("tv_r3d_18", video_resnet, paper="torchvision r3d_18 (R3D-18, Tran et al. 2018)",
               depth=18, conv="3d", temporal_strides=(1, 2, 2, 2), **TV_STEM, **TV)
register_model("tv_mc3_18", video_resnet, paper="torchvision mc3_18 (MC3-18, Tran et al. 2018)",
               depth=18, conv=("3d", "2d", "2d", "2d"), **TV_STEM, **TV)
register_model("tv_r2plus1d_18", video_resnet,
               paper="torchvision r2plus1d_18 (R(2+1)D-18, Tran et al. 2018)", depth=18,
               conv="2plus1d", block=shared_mid_block, temporal_strides=(1, 2, 2, 2),
               stem_conv=partial(conv_2plus1d, k=7, t=3, mid=45), stem_pool=False, dropout=0.0,
               **TV)

# PyTorchVideo's ResNets: head pool = the training clip's res5 size (T/8 or T/4 x 7 x 7).
register_model("ptv_c2d_r50", video_resnet, paper="PyTorchVideo c2d_r50 (C2D R50, 8x8)",
               depth=50, stage_pools={"res2": (2, 1, 1)}, head_pool=(4, 7, 7),
               input_shape=(3, 8, 224, 224), num_classes=400)
register_model("ptv_i3d_r50", video_resnet, paper="PyTorchVideo i3d_r50 (I3D R50, 8x8)",
               depth=50, stem_conv="3d", stem_t=5, conv_a_t=((3,), (3, 1), (3, 1), (1, 3)),
               stage_pools={"res2": (2, 1, 1)}, head_pool=(4, 7, 7),
               input_shape=(3, 8, 224, 224), num_classes=400)
register_model("ptv_slow_r50", video_resnet, paper="PyTorchVideo slow_r50 (Slow R50, 8x8)",
               depth=50, conv_a_t=((1,), (1,), (3,), (3,)), head_pool=(8, 7, 7),
               input_shape=(3, 8, 224, 224), num_classes=400)
register_model("ptv_r2plus1d_r50", video_resnet,
               paper="PyTorchVideo r2plus1d_r50 (R(2+1)D R50, 16x4)", depth=50,
               conv=conv_temporal_spatial, stem_pool=False, strides=(2, 2, 2, 2),
               temporal_strides=(1, 1, 2, 2), head_pool=(4, 7, 7),
               input_shape=(3, 16, 224, 224), num_classes=400)
register_model("ptv_csn_r101", video_resnet, paper="PyTorchVideo csn_r101 (ir-CSN-101, 32x2)",
               depth=101, conv=conv_depthwise, stem_conv="3d", stem_t=3,
               temporal_strides=(1, 2, 2, 2), head_pool=(4, 7, 7), dropout=0.0,
               input_shape=(3, 32, 224, 224), num_classes=400)

PTV_X3D = dict(stem_t=5, shortcut_norm="widening")
register_model("ptv_x3d_xs", x3d, paper="PyTorchVideo x3d_xs (X3D-XS, 4x12)", head_pool=(4, 5, 5),
               input_shape=(3, 4, 160, 160), num_classes=400, **PTV_X3D)
register_model("ptv_x3d_s", x3d, paper="PyTorchVideo x3d_s (X3D-S, 13x6)", head_pool=(13, 5, 5),
               input_shape=(3, 13, 160, 160), num_classes=400, **PTV_X3D)
register_model("ptv_x3d_m", x3d, paper="PyTorchVideo x3d_m (X3D-M, 16x5)", head_pool=(16, 7, 7),
               input_shape=(3, 16, 224, 224), num_classes=400, **PTV_X3D)
register_model("ptv_x3d_l", x3d, paper="PyTorchVideo x3d_l (X3D-L, 16x5)", depths=(5, 10, 25, 15),
               head_pool=(16, 10, 10), input_shape=(3, 16, 312, 312), num_classes=400, **PTV_X3D)
