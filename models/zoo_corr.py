"""Registered variants of the CorrNet paper (Tables 3, 4, 6) and the DCF paper (Tables 1-4,
appendix Tables 6-7). Builders: :mod:`vcorr.models.corrnet`, :mod:`vcorr.models.dcf`, :mod:`vcorr.models.x3d`.

CorrNet models default to Kinetics-400 and 32-frame clips (Sec. 6.2: "we use L = 32 frames in
all the following experiments"); pass ``num_frames=16`` (CorrNet, per-time-step weights) and a
16-frame input for Table 3's 16-frame rows. DCF models default to Something-Something v1 (174
classes) at the clip sizes of DCF Table 3/4.
"""
from __future__ import annotations

from vcorr.models.corrnet import corrnet, r2d, r2plus1d
from vcorr.models.dcf import dcf_r2plus1d, dcf_x3d, r2plus1d_dw
from vcorr.models.registry import register_model
from vcorr.models.x3d import x3d

K400_32 = dict(input_shape=(3, 32, 224, 224), num_classes=400)
SSV1 = 174

# --- CorrNet (Wang et al. 2020) ---------------------------------------------------------------
register_model("r2d_26", r2d, paper="CorrNet Table 3 (R2D-26)", depth=26, **K400_32)
for _depth in (26, 50, 101):
    register_model(f"r2plus1d_{_depth}", r2plus1d, paper=f"CorrNet Table 2 backbone, R(2+1)D-{_depth}",
                   depth=_depth, **K400_32)
register_model("corrnet_26", corrnet, paper="CorrNet Table 3 (CorrNet-26, correlation-sum, K=7, g=32)",
               depth=26, num_frames=32, **K400_32)
register_model("corrnet_50", corrnet, paper="CorrNet Table 6-7 (CorrNet-50)", depth=50,
               num_frames=32, **K400_32)
register_model("corrnet_101", corrnet, paper="CorrNet Table 6-7 (CorrNet-101, 4 correlation blocks)",
               depth=101, num_frames=32, **K400_32)
# Table 4 ablations of CorrNet-26 (one change each); K of Fig. 3 is the ``kernel_size`` override.
register_model("corrnet_26_no_filter", corrnet, paper="CorrNet Table 4 (w/o filter)", depth=26,
               num_frames=32, filtered=False, **K400_32)
register_model("corrnet_26_no_group", corrnet, paper="CorrNet Table 4 (w/o grouping, G=1)",
               depth=26, num_frames=32, groups=1, **K400_32)
register_model("corrnet_26_concat", corrnet, paper="CorrNet Table 4 (correlation-concat)",
               depth=26, num_frames=32, block="concat", **K400_32)

# --- DCF ------------------------------------------------------------------------------------
register_model("r2plus1d_dw_50", r2plus1d_dw, paper="DCF Table 3, appendix Table 6 (R(2+1)D R50)",
               depth=50, input_shape=(3, 8, 224, 224), num_classes=SSV1)
register_model("r2plus1d_dw_101", r2plus1d_dw, paper="DCF appendix A (R(2+1)D R101)",
               depth=101, input_shape=(3, 16, 224, 224), num_classes=SSV1)
register_model("dcf_r2plus1d_50", dcf_r2plus1d, paper="DCF Table 3-4 (DCF R(2+1)D R50, 8 frames)",
               depth=50, input_shape=(3, 8, 224, 224), num_classes=SSV1)
register_model("dcf_r2plus1d_101", dcf_r2plus1d, paper="DCF Table 4 (DCF R(2+1)D R101, 16 frames)",
               depth=101, input_shape=(3, 16, 224, 224), num_classes=SSV1)
register_model("x3d_s", x3d, paper="DCF Table 3, appendix Table 7 (X3D-S, 13x160x160)",
               input_shape=(3, 13, 160, 160), num_classes=SSV1)
register_model("x3d_m", x3d, paper="DCF Table 3 (X3D-M, 16x224x224)",
               input_shape=(3, 16, 224, 224), num_classes=SSV1)
register_model("dcf_x3d_s", dcf_x3d, paper="DCF Table 1-3 (DCF X3D-S)",
               input_shape=(3, 13, 160, 160), num_classes=SSV1)
register_model("dcf_x3d_m", dcf_x3d, paper="DCF Table 3-4 (DCF X3D-M)",
               input_shape=(3, 16, 224, 224), num_classes=SSV1)
# Table 1 ablations on X3D-S; Table 2's stage sets are the ``dcf_stages`` override.
register_model("dcf_x3d_s_basic", dcf_x3d, paper="DCF Table 1 (basic correlation only)",
               long_term=False, pyramid=False, input_shape=(3, 13, 160, 160), num_classes=SSV1)
register_model("dcf_x3d_s_no_pyramid", dcf_x3d, paper="DCF Table 1 (basic + long-term)",
               pyramid=False, input_shape=(3, 13, 160, 160), num_classes=SSV1)
register_model("dcf_x3d_s_no_long_term", dcf_x3d, paper="DCF Table 1 (basic + spatial pyramid)",
               long_term=False, input_shape=(3, 13, 160, 160), num_classes=SSV1)
