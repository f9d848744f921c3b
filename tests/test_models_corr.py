"""CorrNet, DCF and X3D models (issue 4): paper numbers, structure, forward/backward, identity at
init, the DCF pyramid hand-off and the ``vcorr models`` listing.

Parameters and multiply-adds are counted on the meta device (nothing is allocated); forward and
backward passes run on tiny clips (2 x 3 x 4 x 32 x 32) in one thread.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from vcorr import models
from vcorr.models.corrnet import (CorrelationConcatBlock, CorrelationSumBlock, CorrNetCorrelation,
                                  correlation_macs)
from vcorr.models.dcf import CorrelationPyramid, DCFBlock, DCFCorrelation
from vcorr.models.layers import ConvTemporalSpatial
from vcorr.models.ops import DenseCorrelation, LearnableCorrelation, dcf_offsets
from vcorr.models.x3d import SqueezeExcite, X3DBlock
from vcorr.pipelines.model_info import count_gmacs

NEW_MODELS = [
    "r2d_26", "r2plus1d_26", "r2plus1d_50", "r2plus1d_101",
    "corrnet_26", "corrnet_50", "corrnet_101",
    "corrnet_26_no_filter", "corrnet_26_no_group", "corrnet_26_concat",
    "r2plus1d_dw_50", "r2plus1d_dw_101", "dcf_r2plus1d_50", "dcf_r2plus1d_101",
    "x3d_s", "x3d_m", "dcf_x3d_s", "dcf_x3d_m",
    "dcf_x3d_s_basic", "dcf_x3d_s_no_pyramid", "dcf_x3d_s_no_long_term",
]
TINY = (2, 3, 4, 32, 32)


def tiny_model(name: str, **kw) -> nn.Module:
    if name.startswith("corrnet"):
        kw.setdefault("num_frames", TINY[2])  # per-time-step correlation weights
    return models.create_model(name, num_classes=5, **kw)


def meta_counts(name: str, input_shape, **kw) -> tuple[float, float]:
    """(parameters in 1e6, GMACs) of a registered model, built on the meta device."""
    with torch.device("meta"):
        model = models.create_model(name, **kw)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    return params, count_gmacs(model, input_shape)


# --- paper numbers ----------------------------------------------------------------------------
C16, C32 = (3, 16, 224, 224), (3, 32, 224, 224)
XS, XM = (3, 13, 160, 160), (3, 16, 224, 224)
D8, D16 = (3, 8, 224, 224), (3, 16, 224, 224)

CORRNET_26_16 = ("CorrNet-26 at 16x224^2: backbone (R(2+1)D-26 with conv1 32 and a 2D res2) 31.10 "
                 "+ 3 correlation-sum blocks 5.46 (1x1x1 convs 5.20, correlation op 0.26) = 36.56 "
                 "GMACs vs 37.4 (-2.2%). The same layout reproduces Table 3's R2D-26 (27.48) and "
                 "R(2+1)D-26 (35.95) and Table 6's CorrNet-50 (115.05 vs 115) and CorrNet-101 "
                 "(187.05 vs 187) to the printed digit; no single layer accounts for the 0.84 gap, "
                 "so we keep the paper's stated design")
CORRNET_26_32 = ("CorrNet-26 at 32x224^2: backbone 62.21 + blocks 10.92 (correlation op 0.51) = "
                 "73.13 GMACs vs 74.8 (-2.2%); see the 16-frame row")
DCF_X3D_S = ("DCF X3D-S at 13x160^2: X3D-S 1.958 (paper 2.0) + DCF 0.190 (reduce convs 0.018, "
             "fuse convs 0.131, correlation op 0.041) = 2.148, printed 2.1 vs 2.2 (-2.4%); the "
             "paper's DCF X3D-M also moves by 0.1 between its tables (5.2 in Table 3, 5.1 in "
             "Table 4; ours 5.18)")

DCF_R50_16 = ("DCF R(2+1)D R50 at 16x224^2: exactly twice our 8-frame count (2 x 35.923 = 71.846), "
              "printed 71.8 vs 71.9 (-0.08%); the paper's 8-frame 35.9 matches")

# (id, model, overrides, input, paper params in 1e6 or None, paper GMACs, known difference)
PAPER_ROWS = [
    ("corrnet-t3-r2d26-16", "r2d_26", {}, C16, None, "27.5", None),
    ("corrnet-t3-r2d26-32", "r2d_26", {}, C32, None, "55.0", None),
    ("corrnet-t3-r2plus1d26-16", "r2plus1d_26", {}, C16, None, "36.0", None),
    ("corrnet-t3-r2plus1d26-32", "r2plus1d_26", {}, C32, None, "71.9", None),
    ("corrnet-t3-corrnet26-16", "corrnet_26", {"num_frames": 16}, C16, None, "37.4", CORRNET_26_16),
    ("corrnet-t3-corrnet26-32", "corrnet_26", {}, C32, None, "74.8", CORRNET_26_32),
    ("corrnet-t6-corrnet50", "corrnet_50", {}, C32, None, "115", None),
    ("corrnet-t6-corrnet101", "corrnet_101", {}, C32, None, "187", None),
    ("dcf-t3-x3d_s", "x3d_s", {}, XS, "3.3", "2.0", None),
    ("dcf-t3-dcf_x3d_s", "dcf_x3d_s", {}, XS, "3.4", "2.2", DCF_X3D_S),
    ("dcf-t3-x3d_m", "x3d_m", {}, XM, "3.3", "4.7", None),
    ("dcf-t3-dcf_x3d_m", "dcf_x3d_m", {}, XM, "3.4", "5.2", None),
    ("dcf-t3-r2plus1d_r50", "r2plus1d_dw_50", {}, D8, "23.9", "32.7", None),
    ("dcf-t3-dcf_r2plus1d_r50", "dcf_r2plus1d_50", {}, D8, "24.6", "35.9", None),
    ("dcf-t4-dcf_r2plus1d_r50-16", "dcf_r2plus1d_50", {}, D16, None, "71.9", DCF_R50_16),
    ("dcf-t4-dcf_r2plus1d_r101-16", "dcf_r2plus1d_101", {}, D16, None, "131.3", None),
    # DCF Table 2: which stages get a block ("stem" = stage1); stages 2-4 is the default row.
    ("dcf-t2-stages-1-3", "dcf_x3d_s", {"dcf_stages": ("stem", "res3")}, XS, None, "2.4", None),
    ("dcf-t2-stages-2-4", "dcf_x3d_s", {"dcf_stages": ("res2", "res4")}, XS, None, "2.1", None),
    ("dcf-t2-stages-1-2-3", "dcf_x3d_s", {"dcf_stages": ("stem", "res2", "res3")}, XS, None,
     "2.5", None),
]


@pytest.fixture(scope="module")
def paper_counts() -> dict[str, tuple[float, float]]:
    """Counts of every PAPER_ROWS entry, computed once for both checks below."""
    return {row[0]: meta_counts(row[1], row[3], **row[2]) for row in PAPER_ROWS}


def _half_unit(printed: str) -> float:
    """Half a unit of the last printed digit ("35.9" -> 0.05, "115" -> 0.5)."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return 0.5 * 10 ** -decimals + 1e-9


@pytest.mark.parametrize("row", PAPER_ROWS, ids=[r[0] for r in PAPER_ROWS])
def test_paper_numbers_within_5_percent(row, paper_counts):
    key, name, _, _, paper_params, paper_gmacs, _ = row
    params, gmacs = paper_counts[key]
    assert gmacs == pytest.approx(float(paper_gmacs), rel=0.05), (name, gmacs)
    if paper_params is not None:
        assert params == pytest.approx(float(paper_params), rel=0.05), (name, params)


def _printed_rows():
    for row in PAPER_ROWS:
        marks = [pytest.mark.xfail(strict=True, reason=row[6])] if row[6] else []
        yield pytest.param(row, id=row[0], marks=marks)


@pytest.mark.parametrize("row", list(_printed_rows()))
def test_paper_numbers_to_the_printed_digit(row, paper_counts):
    """Tighter: our count rounds to the paper's printed number; known differences are xfail."""
    key, name, _, _, paper_params, paper_gmacs, _ = row
    params, gmacs = paper_counts[key]
    assert abs(gmacs - float(paper_gmacs)) <= _half_unit(paper_gmacs), (name, gmacs)
    if paper_params is not None:
        assert abs(params - float(paper_params)) <= _half_unit(paper_params), (name, params)


def test_macs_of_the_correlation_replace_what_the_counter_sees():
    """The weighted operator's batched mat-vec is visible to FlopCounterMode, the unweighted one
    is not; both count C*K*K*T*H*W per offset through the ``macs`` hook, and only once."""
    shape = (1, 64, 8, 14, 14)
    conv_macs = 64 * 64 * 8 * 14 * 14
    for filtered in (True, False):
        with torch.device("meta"):
            model = nn.Sequential(nn.Conv3d(64, 64, 1, bias=False),
                                  CorrNetCorrelation(64, 7, 2, 2, num_frames=8, filtered=filtered))
        expected = conv_macs + correlation_macs((1,) + shape[1:], 7)
        assert count_gmacs(model, shape[1:]) * 1e9 == pytest.approx(expected, rel=1e-9)
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv3d(64, 64, 1, bias=False), DCFCorrelation(5, dcf_offsets(2)))
    expected = conv_macs + 64 * 25 * 4 * 8 * 14 * 14
    assert count_gmacs(model, shape[1:]) * 1e9 == pytest.approx(expected, rel=1e-9)


# --- every model runs, learns, and starts as its backbone ----------------------------------

@pytest.mark.parametrize("name", NEW_MODELS)
def test_forward_backward_reaches_every_parameter(name):
    torch.manual_seed(0)
    model = tiny_model(name).train()
    # Residual BNs start at gamma = 0, which stops the gradient of everything before them; give
    # them a value so that "reaches every parameter" is a real check.
    for m in model.modules():
        if getattr(m, "_vcorr_zero_init", False):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
    out = model(torch.randn(TINY))
    assert out.shape == (TINY[0], 5) and torch.isfinite(out).all()
    (out * torch.randn_like(out)).sum().backward()
    bad = [n for n, p in model.named_parameters()
           if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.abs().sum() > 0]
    assert not bad, f"{name}: no gradient for {bad[:5]}"


@pytest.mark.parametrize("name, backbone, backbone_kw", [
    ("corrnet_26", "corrnet_26", {"corr_blocks": {}}),
    ("corrnet_101", "corrnet_101", {"corr_blocks": {}}),
    ("dcf_r2plus1d_50", "r2plus1d_dw_50", {}),
    ("dcf_x3d_s", "x3d_s", {}),
    ("dcf_x3d_s_basic", "x3d_s", {}),
])
def test_fresh_model_equals_its_backbone(name, backbone, backbone_kw):
    """Zero-initialised last BN of every correlation block: a fresh model computes exactly what
    its backbone computes with the same weights."""
    torch.manual_seed(1)
    full = tiny_model(name).eval()
    base = tiny_model(backbone, **backbone_kw).eval()
    missing, unexpected = base.load_state_dict(full.state_dict(), strict=False)
    assert not missing and unexpected
    x = torch.randn(TINY)
    with torch.no_grad():
        torch.testing.assert_close(full(x), base(x), rtol=0, atol=0)


def test_fresh_blocks_are_identity_in_training_mode():
    x = torch.randn(2, 64, 4, 6, 5).relu()  # blocks follow a ReLU: non-negative input
    for block in (CorrelationSumBlock(64, num_frames=4, kernel_size=3),
                  DCFBlock(64, reduction=4, kernel_size=3, offsets=dcf_offsets(2))):
        torch.testing.assert_close(block.train()(x), x, rtol=0, atol=0)


# --- CorrNet ---------------------------------------------------------------------------------

def _after_blocks(model: nn.Module, kind=nn.Module) -> dict[str, nn.Module]:
    return {f"{stage}.{name}": m for stage in model.stage_names
            for name, m in getattr(model, stage).named_children()
            if "_after" in name and isinstance(m, kind)}


def test_corrnet_26_layout():
    model = tiny_model("corrnet_26", num_frames=8)
    blocks = _after_blocks(model)
    assert list(blocks) == ["res2.1_after0", "res3.1_after0", "res4.1_after0"]
    assert all(isinstance(b, CorrelationSumBlock) for b in blocks.values())
    # Sec. 6.1: conv1 with 32 filters and no max-pool; no temporal conv in res2 (Table 2 elsewhere).
    assert model.stem[0].out_channels == 32 and not any(
        isinstance(m, nn.MaxPool3d) for m in model.stem)
    assert isinstance(model.res2[0].conv2, nn.Conv3d) and model.res2[0].conv2.kernel_size == (1, 3, 3)
    assert isinstance(model.res3[0].conv2, ConvTemporalSpatial)
    # group size 32 on C/4 channels; weights per time step: T, T, T/2 (temporal stride in res4)
    corr = [b.corr for b in blocks.values()]
    assert [c.groups for c in corr] == [2, 4, 8]
    assert [tuple(c.weight.shape) for c in corr] == [(64, 8, 7, 7), (128, 8, 7, 7), (256, 4, 7, 7)]
    assert [b.expand.in_channels for b in blocks.values()] == [98, 196, 392]
    assert model.forward_features(torch.randn(1, 3, 8, 32, 32)).shape == (1, 2048, 2, 1, 1)


def test_corrnet_101_has_a_fourth_block_in_the_middle_of_res4():
    with torch.device("meta"):
        model = models.create_model("corrnet_101")
    assert list(_after_blocks(model)) == ["res2.2_after0", "res3.3_after0", "res4.11_after0",
                                          "res4.22_after0"]


def test_corrnet_ablation_switches():
    with torch.device("meta"):
        no_filter = models.create_model("corrnet_26_no_filter")
        no_group = models.create_model("corrnet_26_no_group")
        concat = models.create_model("corrnet_26_concat")
        k5 = models.create_model("corrnet_26", kernel_size=5)
        shared = models.create_model("corrnet_26", share_time=True)
    assert all(b.corr.weight is None for b in _after_blocks(no_filter).values())
    assert [b.corr.out_channels for b in _after_blocks(no_group).values()] == [49] * 3
    assert all(isinstance(b, CorrelationConcatBlock) for b in _after_blocks(concat).values())
    assert [b.corr.out_channels for b in _after_blocks(k5).values()] == [50, 100, 200]
    assert [b.corr.weight.shape[1] for b in _after_blocks(shared).values()] == [1, 1, 1]
    with pytest.raises(ValueError, match="correlation block"):
        models.create_model("corrnet_26", block="product")


def test_corrnet_correlation_is_the_library_operator():
    x = torch.randn(1, 64, 3, 6, 6)
    ours = CorrNetCorrelation(64, 5, 2, 2, num_frames=3)
    lib = LearnableCorrelation(64, 5, 2, 2, num_frames=3)
    torch.testing.assert_close(ours(x), lib(x), rtol=0, atol=0)
    assert ours.macs(x) == 64 * 3 * 36 * 25


def test_r2d_and_r2plus1d_26_layouts():
    r2d = tiny_model("r2d_26")
    kernels = [m.kernel_size for m in r2d.modules() if isinstance(m, nn.Conv3d)]
    assert all(k[0] == 1 for k in kernels)  # no temporal conv at all
    pools = [m for m in r2d.modules() if isinstance(m, nn.MaxPool3d)]
    assert [p.kernel_size for p in pools] == [(3, 1, 1)] * 2  # first blocks of res4 and res5
    assert r2d.forward_features(torch.randn(1, 3, 8, 32, 32)).shape == (1, 2048, 2, 1, 1)
    r21d = tiny_model("r2plus1d_26")
    conv = r21d.res2[0].conv2  # Table 2: "3x1x1, 64" then "1x3x3, 64", no mid-width expansion
    assert (conv[0].kernel_size, conv[0].in_channels, conv[0].out_channels) == ((3, 1, 1), 64, 64)
    assert (conv[3].kernel_size, conv[3].out_channels) == ((1, 3, 3), 64)
    assert r21d.res4[0].conv2[0].stride == (2, 1, 1) and r21d.res4[0].conv2[3].stride == (1, 2, 2)


# --- DCF ---------------------------------------------------------------------------------------

def _dcf_blocks(model: nn.Module) -> list[DCFBlock]:
    return [m for m in model.modules() if isinstance(m, DCFBlock)]


def test_dcf_r2plus1d_layout():
    model = tiny_model("dcf_r2plus1d_50")
    blocks = _dcf_blocks(model)
    assert [b.reduce[0].out_channels for b in blocks] == [64, 128, 256]  # 1/4 on R(2+1)D
    assert [b.corr.offsets for b in blocks] == [(-2, -1, 1, 2), (-2, -1, 1, 2), (-1, 1)]
    assert [b.fuse.in_channels for b in blocks] == [100, 200, 250]  # own + pyramid volumes
    assert list(_after_blocks(model)) == ["res2.2_after0", "res3.3_after0", "res4.5_after0"]
    temporal = model.res3[0].conv2[0]  # Table 6: depthwise 3x1x1, no temporal downsampling
    assert temporal.kernel_size == (3, 1, 1) and temporal.groups == temporal.in_channels == 128
    assert model.forward_features(torch.randn(1, 3, 4, 32, 32)).shape == (1, 2048, 4, 1, 1)


def test_x3d_layout():
    model = tiny_model("x3d_s")
    blocks = {s: list(getattr(model, s)) for s in model.stage_names}
    assert [len(b) for b in blocks.values()] == [3, 5, 11, 7]
    assert [b[0].out_channels for b in blocks.values()] == [24, 48, 96, 192]
    assert [b[0].conv2.out_channels for b in blocks.values()] == [54, 108, 216, 432]
    assert all(b.conv2.groups == b.conv2.in_channels and b.conv2.kernel_size == (3, 3, 3)
               for s in blocks.values() for b in s)
    se = [[isinstance(b.se, SqueezeExcite) for b in s] for s in blocks.values()]
    assert se[1] == [True, False, True, False, True]  # every other block, from the first
    assert [s[0].se.fc1.out_channels for s in blocks.values()] == [8, 8, 16, 32]
    assert all(isinstance(b, X3DBlock) for s in blocks.values() for b in s)
    stem = model.stem[0]  # 1x3x3 stride 2 then channel-wise 3x1x1 (Table 7 "stage1")
    assert stem[0].kernel_size == (1, 3, 3) and stem[0].stride == (1, 2, 2)
    assert stem[1].kernel_size == (3, 1, 1) and stem[1].groups == 24
    assert (model.head.conv5[0].out_channels, model.head.fc1.out_features) == (432, 2048)
    assert model.forward_features(torch.randn(1, 3, 4, 64, 64)).shape == (1, 192, 4, 2, 2)
    dcf = _dcf_blocks(tiny_model("dcf_x3d_s"))
    assert [b.reduce[0].out_channels for b in dcf] == [12, 24, 48]  # 1/2 on X3D


def test_dcf_pyramid_hands_pooled_volumes_down():
    """Algorithm 1: level k concatenates its volume with the shallower ones, avg-pooled 2x per
    stage; the pyramid holds nothing after the pass."""
    torch.manual_seed(2)
    model = tiny_model("dcf_x3d_s").eval()
    blocks = _dcf_blocks(model)
    assert [b.level for b in blocks] == [0, 1, 2] and blocks[0].pyramid is blocks[2].pyramid
    volumes, fused = [], []
    for b in blocks:
        b.corr.register_forward_hook(lambda m, i, o: volumes.append(o))
        b.fuse.register_forward_pre_hook(lambda m, i: fused.append(i[0]))
    with torch.no_grad():
        model(torch.randn(1, 3, 4, 32, 32))

    def pool(v):
        return F.avg_pool3d(v, (1, 2, 2))

    assert [tuple(v.shape[1:]) for v in volumes] == [(100, 4, 8, 8), (100, 4, 4, 4), (50, 4, 2, 2)]
    torch.testing.assert_close(fused[0], volumes[0])
    torch.testing.assert_close(fused[1], torch.cat([volumes[1], pool(volumes[0])], 1))
    torch.testing.assert_close(
        fused[2], torch.cat([volumes[2], pool(pool(volumes[0])), pool(volumes[1])], 1))
    assert blocks[0].pyramid._passes == {}


def test_dcf_pyramid_is_not_state_and_survives_deepcopy():
    """The pyramid holds no parameters or buffers; a copied model gets its own shared pyramid."""
    model = tiny_model("dcf_x3d_s")
    assert not any("pyramid" in k for k in model.state_dict())
    twin = copy.deepcopy(model)
    ours, theirs = _dcf_blocks(model), _dcf_blocks(twin)
    assert len({id(b.pyramid) for b in theirs}) == 1 and theirs[0].pyramid is not ours[0].pyramid
    x = torch.randn(TINY)
    with torch.no_grad():
        torch.testing.assert_close(twin.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_dcf_pyramid_needs_the_shallower_levels():
    pyramid = CorrelationPyramid([25, 25])
    deep = DCFBlock(16, kernel_size=5, offsets=(1,), pyramid=pyramid, level=1)
    with pytest.raises(RuntimeError, match="shallower levels"):
        deep(torch.randn(1, 16, 2, 4, 4))
    with pytest.raises(ValueError, match="volume channels"):
        DCFBlock(16, kernel_size=3, offsets=(1,), pyramid=pyramid, level=0)
    first = DCFBlock(16, kernel_size=5, offsets=(1,), pyramid=pyramid, level=0)
    first(torch.randn(1, 16, 2, 8, 8))
    with pytest.raises(ValueError, match="cannot pool"):  # 3 frames after 2: not the same clip
        deep(torch.randn(1, 16, 3, 4, 4))


def test_dcf_ablation_switches():
    def layout(name, **kw):
        blocks = _dcf_blocks(tiny_model(name, **kw))
        return ([b.corr.offsets for b in blocks], [b.fuse.in_channels for b in blocks],
                [b.pyramid is not None for b in blocks])

    assert layout("dcf_x3d_s_basic") == ([(1,)] * 3, [25] * 3, [False] * 3)
    assert layout("dcf_x3d_s_no_pyramid") == (
        [(-2, -1, 1, 2), (-2, -1, 1, 2), (-1, 1)], [100, 100, 50], [False] * 3)
    assert layout("dcf_x3d_s_no_long_term") == ([(1,)] * 3, [25, 50, 75], [True] * 3)
    assert layout("dcf_x3d_s", temporal_ranges={"res4": 2})[1] == [100, 200, 300]
    model = tiny_model("dcf_x3d_s", dcf_stages=("stem", "res3"))
    assert isinstance(model.stem[-1], DCFBlock) and model.stem[-1].level == 0
    assert [b.fuse.in_channels for b in _dcf_blocks(model)] == [100, 200]
    out = model(torch.randn(TINY))  # stage1 (16 px) -> res3 (4 px): pooled twice
    assert out.shape == (2, 5)
    with pytest.raises(ValueError, match="unknown DCF place"):
        tiny_model("dcf_x3d_s", dcf_stages=("stage2",))


def test_dcf_correlation_is_the_library_operator():
    x = torch.randn(2, 8, 5, 7, 6)
    for L in (1, 2):
        torch.testing.assert_close(DCFCorrelation(5, dcf_offsets(L))(x),
                                   DenseCorrelation(5, L)(x), rtol=0, atol=0)
    assert DCFCorrelation(5, (1,))(x).shape == (2, 25, 5, 7, 6)


# --- registry and CLI -------------------------------------------------------------------------

def test_cli_lists_the_corrnet_models():
    from vcorr.cli.main import cli

    result = CliRunner().invoke(cli, ["models", "corrnet_*", "--json", "--no-flops"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert {"corrnet_26", "corrnet_50", "corrnet_101"} <= set(rows)
    assert all(r["gmacs"] is None and r["params"] > 0 for r in rows.values())
    assert set(models.list_models("*")) >= set(NEW_MODELS)


def test_corrnet_block_initialisation_is_an_option() -> None:
    """The paper gives no initialisation for the correlation-sum block's output: by default its
    last BN starts at gamma 0 (the block is the identity on its ReLU input, as a fresh CP,
    non-local or DCF block); ``zero_init=False`` starts it at gamma 1 (PyTorch's default)."""
    x = torch.relu(torch.randn(2, 64, 4, 8, 8))
    for zero, gamma in ((True, 0.0), (False, 1.0)):
        torch.manual_seed(0)
        model = tiny_model("corrnet_26", zero_init=zero).eval()
        blocks = [m for m in model.modules() if isinstance(m, CorrelationSumBlock)]
        assert len(blocks) == 3
        assert all(torch.all(b.bn.weight == gamma) for b in blocks)
        assert all(b.identity_at_init is zero for b in blocks)
        block = CorrelationSumBlock(64, num_frames=4, zero_init=zero).eval()
        with torch.no_grad():
            assert torch.equal(block(x), x) is zero


def test_dcf_last_stage_range_follows_temporal_ranges() -> None:
    """DCF Sec. 3.3 "L = 2 (L = 1 for the last stage)": the default gives res4 L = 1; for the
    Table 2 rows whose last block is res3, ``temporal_ranges={"res3": 1}`` is the other reading
    (the configs' headers say which they use)."""
    def offsets(**kw):
        return [b.corr.offsets for b in tiny_model("dcf_x3d_s", **kw).modules()
                if isinstance(b, DCFBlock)]

    assert offsets(dcf_stages=("stem", "res3")) == [(-2, -1, 1, 2), (-2, -1, 1, 2)]
    assert offsets(dcf_stages=("stem", "res3"), temporal_ranges={"res3": 1}) == [
        (-2, -1, 1, 2), (-1, 1)]
