"""CPU-size variants of every model family (issue 22): the papers' modules at the papers'
places on a shrunken backbone, for 3 x 8 x 64 x 64 clips (56 x 56 crops work too).

Only the backbone shrinks: fewer channels, fewer blocks, a smaller input. Each paper's
module (CP module, non-local block, correlation-sum block, DCF block, SMART unit) is the
full-size class with the paper's arguments, inserted where the paper inserts it, and every
architecture is data on the generic builders (:func:`vcorr.models.zoo.video_resnet`,
:func:`vcorr.models.corrnet.corrnet`, :func:`vcorr.models.dcf.dcf_r2plus1d`,
:func:`vcorr.models.x3d.x3d`).

Spatial strides. The papers' backbones reduce 224 px by 4 before res2 (stride-2 stem + max-pool,
or a stride-2 stem and a strided res2), so res2..res5 see strides 4, 8, 16, 32. On a 64 px clip
that would leave 16 x 16 at res2 and 2 x 2 at res5, and a motion of 1-3 px per frame would be
a quarter to three quarters of a cell at res2 and far below one cell at res3-res4, where CP
modules and correlation blocks work. Every tiny backbone therefore reduces by 2 only before
res2 (a stride-2 stem, no max-pool, res2 not strided): res2..res5 see strides 2, 4, 8, 16,
i.e. 32, 16, 8, 4 px on a 64 px clip (28, 14, 7, 4 on 56 px), the same map sizes relative to
the papers' 56, 28, 14, 7 at 224 px. A 1-3 px motion is then 0.5-1.5 cells per frame at res2
and 0.25-0.75 at res3 (1-3 cells over four frames, which the CP module's k-NN over all frames
and DCF's long-term offsets reach). A stride-1 stem would quadruple the cost of everything
after it (the k-NN of a CP module in res3 grows with the square of its positions).

Sizes: every width is 1/4 of the paper model's (X3D, already a thin network: 1/2), one block
per stage (X3D: 1, 2, 3, 2 instead of X3D-S's 3, 5, 11, 7), 16 classes by default, and no
dropout before the classifier (the papers' 0.5 suits their 512-2048 features, not these).

* ``c2d_tiny``: C2D ResNet-10 (basic blocks, widths 16, 32, 64, 128), 1x7x7 stem. No temporal
  conv, stride or pooling other than the head's global mean: its output is invariant to the
  order of the frames, so it cannot tell a clip from its time reversal (the baseline the
  motion models must beat).
* ``c3d_tiny``, ``artnet_tiny``, ``nl_c2d_tiny``, ``cpnet_tiny``: the same backbone with 3x3x3 convs
  (3x7x7 stem), SMART units (conv1 and the second conv of every block of res2-res4, CPNet supp.
  Table 1), non-local blocks after every block of res3-res5 (supp. Table 1's 6 NL blocks on
  ResNet-18), CP modules in every block of res3 and res4 (the authors' 4-CP ResNet-18; k = 8,
  MLP [C/4, C/2]).
* ``r2plus1d_tiny`` and ``corrnet_tiny``: CorrNet Table 2's bottleneck R(2+1)D (3x1x1 then 1x3x3
  at the block width, temporal stride 2 in res4 and res5; 1x7x7 stem, 16 filters), block widths
  16, 32, 64, 128 (outputs 64..512). CorrNet adds a correlation-sum block after res2, res3 and
  res4 (Sec. 4) with the paper's FLOP-matching changes (conv1 halved to 8 filters, no temporal
  convs in res2; Sec. 6.1). K = 7 as in the paper; dilation 1 instead of 2, so
  the window covers the same share of the frame: the paper's 13 cells at stride 4 are 52 px of
  224 (23%), ours, 7 cells at stride 2, are 14 px of 64 (22%); group size 8 instead of 32, so the
  number of groups stays the paper's 2, 4, 8 on reduced widths 16, 32, 64.
* ``r2plus1d_dw_tiny`` and ``dcf_tiny``: DCF appendix Table 6's R(2+1)D (bottleneck, channel-wise
  3x1x1 then 1x3x3, no temporal downsampling), same widths and stem. ``dcf_tiny`` is DCF on
  this R(2+1)D: a DCF block after the last block of res2, res3 and res4 (Sec. 3.3; K = 5, L = 2,
  2, 1, C/4 reduction, spatial pyramid), all of the paper's settings.
* ``x3d_tiny`` and ``dcf_x3d_tiny``: X3D (DCF appendix Table 7) with widths 12, 24, 48, 96, head
  216 -> 512 (X3D: 432 -> 2048); DCF X3D adds DCF blocks after res2, res3, res4 with the C/2
  reduction of the paper's X3D variant. On a CPU X3D's channel-wise 3x3x3 convs are slow
  (their backward especially), so these two are the slowest tiny models per step.

The clip length is free except for CorrNet, whose correlation weights are per time step
(8 frames; ``num_frames=...`` with ``share_time=True`` lifts that).
"""
from __future__ import annotations

from vcorr.models.corrnet import corrnet, r2plus1d
from vcorr.models.dcf import dcf_r2plus1d, dcf_x3d, r2plus1d_dw
from vcorr.models.registry import register_model
from vcorr.models.x3d import x3d
from vcorr.models.zoo import artnet, c2d, c3d, cpnet, nl_net

# No dropout before the classifier: the papers' 0.5 is for 512-2048 features; on these 128-512
# it held C2D at chance for 300 steps of the motion benchmark (test top-1 7% with 0.5, 15% and
# rising without; README "Does it learn motion?").
TINY = {"input_shape": (3, 8, 64, 64), "num_classes": 16, "dropout": 0.0}
ONE_BLOCK = (1, 1, 1, 1)
# Basic-block backbones (C2D family): widths 1/4 of ResNet-18's, res2 not strided.
BASIC = {"depth": 18, "stage_blocks": ONE_BLOCK, "widths": (16, 32, 64, 128), "stem_width": 16,
         "stem_pool": False, "strides": (1, 2, 2, 2)}
# Bottleneck backbones (CorrNet's and DCF's R(2+1)D): block widths 16..128, outputs 64..512.
BOTTLENECK = {"stage_blocks": ONE_BLOCK, "widths": (16, 32, 64, 128)}
R2PLUS1D = {"depth": 26, "strides": (1, 2, 2, 2), **BOTTLENECK}
CORRNET = {"num_frames": 8, "kernel_size": 7, "dilation": 1, "group_size": 8, **R2PLUS1D}
DCF_R2PLUS1D = {"depth": 50, "stem_width": 16, "stem_pool": False, **BOTTLENECK}
X3D = {"stem_width": 12, "widths": (12, 24, 48, 96), "depths": (1, 2, 3, 2),
       "strides": (1, 2, 2, 2), "head_hidden": 512}

register_model("c2d_tiny", c2d, paper="CPU-size variant of C2D ResNet-18 (CPNet supp. Table 1)",
               **BASIC, **TINY)
register_model("c3d_tiny", c3d, paper="CPU-size variant of C3D ResNet-18 (CPNet supp. Table 1)",
               stem_t=3, **BASIC, **TINY)
register_model("artnet_tiny", artnet,
               paper="CPU-size variant of ARTNet ResNet-18 (CPNet supp. Table 1; SMART conv1, res2-res4)",
               **BASIC, **TINY)
register_model("nl_c2d_tiny", nl_net,
               paper="CPU-size variant of NL C2D ResNet-18 (CPNet supp. Table 1; NL after every "
                     "block of res3-res5)",
               nl_blocks={"res3": (0,), "res4": (0,), "res5": (0,)}, **BASIC, **TINY)
register_model("cpnet_tiny", cpnet,
               paper="CPU-size variant of CPNet ResNet-18 (authors' code: CP in every block of "
                     "res3-res4, k=8)",
               cp_blocks={"res3": (0,), "res4": (0,)}, k=8, **BASIC, **TINY)

register_model("r2plus1d_tiny", r2plus1d,
               paper="CPU-size variant of R(2+1)D-26 (CorrNet Table 2)", stem_width=16,
               **R2PLUS1D, **TINY)
register_model("corrnet_tiny", corrnet,
               paper="CPU-size variant of CorrNet-26 (CorrNet Sec. 4, 6.1: correlation-sum after "
                     "res2, res3, res4)",
               stem_width=8, **CORRNET, **TINY)

register_model("r2plus1d_dw_tiny", r2plus1d_dw,
               paper="CPU-size variant of DCF's R(2+1)D R50 (DCF appendix Table 6)",
               **DCF_R2PLUS1D, **TINY)
register_model("dcf_tiny", dcf_r2plus1d,
               paper="CPU-size variant of DCF R(2+1)D R50 (DCF Sec. 3.3: DCF blocks after res2, "
                     "res3, res4)",
               **DCF_R2PLUS1D, **TINY)
register_model("x3d_tiny", x3d, paper="CPU-size variant of X3D-S (DCF appendix Table 7)",
               **X3D, **TINY)
register_model("dcf_x3d_tiny", dcf_x3d,
               paper="CPU-size variant of DCF X3D-S (DCF Sec. 3.3, Table 1-3)", **X3D, **TINY)
