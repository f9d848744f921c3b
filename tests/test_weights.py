"""Pretrained weights (issue 14): every import is compared with a reference, never with itself.

* torchvision's video ResNets and PyTorchVideo's hub models (test-only dependency; skipped with
  the reason when it does not import), built by their own libraries with random weights and
  random BatchNorm statistics, give the same logits as ours after conversion (eval mode, fp32,
  max abs difference <= 1e-4) and have the same parameter count; a deliberately mis-mapped
  tensor is caught by the same comparison.
* An ImageNet torchvision ResNet (random weights, random BN statistics) inflated into every
  registered model that has it inside gives, on a clip of identical frames, the 2D network's
  features and logits on that frame (relative error <= 1e-4); each registered model is
  classified (exact / exact away from the clip ends / refused, with the reason) so that a new
  model needs a decision. The exact ones are exact in training mode too (batch statistics,
  against the 2D network in training mode) with the BNs of ``LoadReport.hold_bn`` held, and
  not without; ``vcorr train`` holds them through a resume.
* Partial loads are errors (one line, exit code 2) unless --partial-init; the report is saved.
* `vcorr weights convert` -> `vcorr eval` equals the source model on the same clips;
  `vcorr train --init` from a converted checkpoint gets a new classifier.
* Plug-ins on pretrained backbones: a PyTorchVideo X3D-S into DCF X3D-S, an R(2+1)D-50 into
  CorrNet-50: the backbone loads completely and the logits equal the backbone's.
"""
from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from vcorr import models
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.weights import (SOURCES, find_source, kinetics400_classes, load_weights,
                                     read_weights)
from vcorr.pipelines.weights.sources import TV_VIDEO_MEAN, TV_VIDEO_STD

REPO = Path(__file__).resolve().parents[1]
TOY_C2D = REPO / "examples" / "configs" / "toy_c2d.toml"
ATOL = 1e-4      # logits, source vs converted (fp32, CPU)
RTOL = 1e-4      # inflation: relative to the largest value of the 2D network's output


def randomise(net: nn.Module, example: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random weights, biases and BN affines; BN running statistics measured on ``example``
    (train mode, momentum 1), then moved by a random 10% per channel and floored, so that
    every statistic is random and a tensor in the wrong place shows, while the activations
    keep their scale through 50-100 layers. Returns the network in eval mode."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        for m in bns:
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
            m.momentum = 1.0
        net.train()
        net(example)
        for m in bns:
            m.momentum = 0.1
            m.running_mean.add_(torch.randn(m.num_features, generator=g) * 0.1
                                * m.running_var.sqrt())
            m.running_var.mul_(torch.rand(m.num_features, generator=g) * 0.2 + 0.9)
            m.running_var.add_(0.05 * m.running_var.mean() + 1e-3)
    return net.eval()


def n_params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def save_state(net: nn.Module, path: Path) -> Path:
    torch.save(net.state_dict(), path)
    return path


def convert_and_compare(src: nn.Module, ours_name: str, clip: torch.Tensor, path: Path,
                        **overrides) -> tuple[nn.Module, float]:
    """Load the saved ``src`` into ``ours_name``; assert the load is complete and exact in
    layout (nothing skipped, missing or set to identity) and the parameter counts are equal.
    Returns our model and the max abs logit difference."""
    save_state(src, path)
    wf = read_weights(path)
    ours = models.create_model(ours_name, **overrides).eval()
    report = load_weights(ours, wf, classes=wf.classes, model_name=ours_name)
    assert not report.skipped and not report.missing and not report.identity
    assert not report.kept and not report.new_classifier and not report.inflated
    assert len(report.loaded) == len(src.state_dict()) == len(ours.state_dict())
    assert n_params(ours) == n_params(src)
    with torch.no_grad():
        diff = (src(clip) - ours(clip)).abs().max().item()
    return ours, diff


# --- the data ------------------------------------------------------------------------------------

def test_kinetics400_class_list_is_the_sources_order() -> None:
    from torchvision.models.video import R3D_18_Weights

    names = kinetics400_classes()
    assert len(names) == 400 == len(set(names)) and names == sorted(names)
    assert names == list(R3D_18_Weights.KINETICS400_V1.meta["categories"])


def test_class_list_is_package_data(monkeypatch) -> None:
    """setup.py ships the class file with the package (read the arguments it passes)."""
    import runpy

    import setuptools

    seen: dict = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kw: seen.update(kw))
    monkeypatch.chdir(REPO)
    runpy.run_path(str(REPO / "setup.py"))
    assert "vcorr.pipelines.weights" in seen["packages"]
    files = seen["package_data"]["vcorr.pipelines.weights"]
    assert all((REPO / "pipelines" / "weights" / f).is_file() for f in files)
    assert "kinetics400_classes.txt" in files


def test_known_sources_match_the_libraries_metadata() -> None:
    import torchvision.models as tvm
    from torchvision.models import video

    for tv_name, enum in (("r3d_18", video.R3D_18_Weights), ("mc3_18", video.MC3_18_Weights),
                          ("r2plus1d_18", video.R2Plus1D_18_Weights)):
        w, s = enum.KINETICS400_V1, find_source(tv_name, "torchvision")
        assert s is not None and s.url == w.url
        acc = w.meta["_metrics"]["Kinetics-400"]
        assert (s.top1, s.top5) == (acc["acc@1"], acc["acc@5"])
        assert n_params(models.create_model(s.model)) == w.meta["num_params"]
    imagenet = [s for s in SOURCES if s.dataset == "ImageNet-1k"]
    assert len(imagenet) == 8
    for s in imagenet:
        depth, tag = s.name.split(" (")
        w = getattr(getattr(tvm, f"ResNet{depth[len('resnet'):]}_Weights"), tag.rstrip(")"))
        acc = w.meta["_metrics"]["ImageNet-1K"]
        assert (s.url, s.top1, s.top5) == (w.url, acc["acc@1"], acc["acc@5"])


# --- torchvision video models --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["r3d_18", "mc3_18", "r2plus1d_18"])
def test_torchvision_video_checkpoint_gives_identical_logits(tmp_path: Path, name: str) -> None:
    from torchvision.models import video

    clip = torch.randn(2, 3, 4, 32, 32)
    src = randomise(getattr(video, name)(), clip)
    _, diff = convert_and_compare(src, f"tv_{name}", clip, tmp_path / f"{name}.pth")
    assert diff <= ATOL


def test_a_mismapped_tensor_is_caught(tmp_path: Path) -> None:
    """The comparison can fail: two BN statistics exchanged give clearly other logits."""
    from torchvision.models import video

    clip = torch.randn(2, 3, 4, 32, 32)
    src = randomise(video.r3d_18(), clip)
    state = src.state_dict()
    a, b = "layer2.0.conv1.1.running_var", "layer2.0.conv2.1.running_var"
    state[a], state[b] = state[b].clone(), state[a].clone()
    torch.save(state, tmp_path / "bad.pth")
    ours = models.create_model("tv_r3d_18").eval()
    load_weights(ours, tmp_path / "bad.pth")
    with torch.no_grad():
        assert (src(clip) - ours(clip)).abs().max().item() > 100 * ATOL


# --- PyTorchVideo ----------------------------------------------------------------------------------

def _ptv():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pytest.importorskip(
            "pytorchvideo.models.hub",
            reason="PyTorchVideo 0.1.5 (test extra) does not import here; its reference "
                   "comparisons are skipped")


def _ptv_builders():
    """(name, source model with a head pool for the tiny clip, our overrides, clip)."""
    from pytorchvideo.models import hub
    from pytorchvideo.models.csn import create_csn
    from pytorchvideo.models.resnet import create_resnet
    from pytorchvideo.models.x3d import create_x3d

    clip8 = torch.randn(2, 3, 8, 32, 32)
    clip4 = torch.randn(2, 3, 4, 64, 64)   # X3D: at 32 px res5 is 1 x 1 and its BN statistics
    # come from 8 values each, which leaves the random network ill-conditioned (fp32 vs fp64
    # of the source itself differ by 2e-4); at 64 px by 1e-5
    # Each is the hub function's own call with only the head's pooling kernel (its training
    # clip's feature size) set for the tiny clip, smaller than the map so that windows are
    # averaged; R(2+1)D and X3D without the final softmax (compared separately below).
    return {
        "c2d_r50": (lambda: hub.c2d_r50(head_pool_kernel_size=(2, 1, 1)), (2, 1, 1), clip8),
        "i3d_r50": (lambda: hub.i3d_r50(head_pool_kernel_size=(2, 1, 1)), (2, 1, 1), clip8),
        "slow_r50": (lambda: create_resnet(stem_conv_kernel_size=(1, 7, 7), model_depth=50,
                                           head_pool_kernel_size=(4, 1, 1)), (4, 1, 1), clip8),
        "r2plus1d_r50": (lambda: hub.r2plus1d_r50(head_pool_kernel_size=(1, 1, 1),
                                                  head_activation=None), (1, 1, 1), clip8),
        "csn_r101": (lambda: create_csn(model_depth=101, stem_pool=nn.MaxPool3d,
                                        head_pool_kernel_size=(1, 1, 1)), (1, 1, 1), clip8),
        "x3d_s": (lambda: create_x3d(input_clip_length=2, input_crop_size=32,
                                     head_activation=None), (2, 1, 1), clip4),
        "x3d_l": (lambda: create_x3d(input_clip_length=2, input_crop_size=32, depth_factor=5.0,
                                     head_activation=None), (2, 1, 1), clip4),
    }


PTV_NAMES = ["c2d_r50", "i3d_r50", "slow_r50", "r2plus1d_r50", "csn_r101", "x3d_s", "x3d_l"]


@pytest.mark.parametrize("name", PTV_NAMES)
def test_pytorchvideo_checkpoint_gives_identical_logits(tmp_path: Path, name: str) -> None:
    _ptv()
    build, pool, clip = _ptv_builders()[name]
    torch.manual_seed(0)
    src = randomise(build(), clip)
    ours, diff = convert_and_compare(src, f"ptv_{name}", clip, tmp_path / f"{name}.pyth",
                                     head_pool=pool)
    assert diff <= ATOL
    # a .pyth as published: {"model_state": ...}
    torch.save({"model_state": src.state_dict(), "epoch": 1}, tmp_path / "wrapped.pyth")
    assert read_weights(tmp_path / "wrapped.pyth").format == "pytorchvideo"


@pytest.mark.parametrize("name", ["x3d_xs", "x3d_s", "x3d_m", "x3d_l", "c2d_r50", "i3d_r50",
                                  "slow_r50", "r2plus1d_r50", "csn_r101"])
def test_registered_layouts_equal_the_hub_models(name: str) -> None:
    """The registered ptv_* model (as published, untouched) has the hub model's parameter
    count and head pooling kernel; its file name is the hub's checkpoint path."""
    hub = _ptv()
    import importlib

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = getattr(hub, name)()
    ours = models.create_model(f"ptv_{name}")
    assert n_params(ours) == n_params(src)
    pool = src.blocks[-1].pool
    kernel = (pool.pool if hasattr(pool, "pre_conv") else pool).kernel_size
    assert ours.head.pool_kernel == tuple(int(k) for k in kernel)
    module = importlib.import_module(getattr(hub, name).__module__)
    assert find_source(name, "pytorchvideo").url == module.checkpoint_paths[name]
    assert f"{find_source(name, 'pytorchvideo').top1:g}" in getattr(hub, name).__doc__


def test_pytorchvideo_softmax_output_is_softmax_of_ours(tmp_path: Path) -> None:
    """PyTorchVideo's X3D and R(2+1)D end in a softmax; on one pooling window it is ours'."""
    _ptv()
    from pytorchvideo.models.x3d import create_x3d

    clip = torch.randn(2, 3, 4, 32, 32)
    src = randomise(create_x3d(input_clip_length=4, input_crop_size=32), clip)
    save_state(src, tmp_path / "x3d.pyth")
    ours = models.create_model("ptv_x3d_s", head_pool=(4, 1, 1)).eval()
    load_weights(ours, tmp_path / "x3d.pyth")
    with torch.no_grad():
        assert (src(clip) - ours(clip).softmax(dim=1)).abs().max().item() <= 1e-5


# --- ImageNet inflation over the registry ------------------------------------------------------------

# Every registered model: what an ImageNet ResNet of its depth gives. "exact": logits and every
# frame's features equal the 2D network's; ("centre", T, c): I3D mean-inflated t x k x k convs,
# exact for output frame c of a T-frame clip (farther from the ends than the temporal reach) and
# not at the ends; "features": a new head (TRN), features exact; ("refused", text): partial or
# another function, an error naming the reason; ("none", why): no torchvision 2D counterpart.
RESNET_26 = ("none", "ResNet-26 (CorrNet): torchvision has no 2D ResNet-26")
NO_MAXPOOL = ("refused", "stem has no max-pool")
NONE_X3D = ("none", "X3D has no 2D ResNet inside")
EXPECT: dict[str, tuple] = {
    **{f"c2d_r{d}": ("exact",) for d in (18, 34, 50, 101)},
    "c3d_r18": ("centre", 35, 17),
    "artnet_r18": ("refused", "SMART unit"),
    "nl_c2d_r18": ("exact",), "trn_r18": ("features",),
    **{n: ("exact",) for n in ("cpnet_r18", "cpnet_r18_5cp", "cpnet_r18_4cp", "cpnet_r34",
                               "cpnet_r101", "cpnet_r101_supp")},
    **{n: ("refused", "stem conv strides (1, 1)") for n in ("c2d_r34_112", "cpnet_r34_112")},
    **{n: ("none", "a two-layer toy net") for n in ("toy_c2d", "toy_c3d", "toy_artnet",
                                                    "toy_trn", "toy_nl", "toy_cpnet")},
    **{n: RESNET_26 for n in ("r2d_26", "r2plus1d_26", "corrnet_26", "corrnet_26_no_filter",
                              "corrnet_26_no_group", "corrnet_26_concat")},
    **{n: NO_MAXPOOL for n in ("r2plus1d_50", "r2plus1d_101", "corrnet_50", "corrnet_101",
                               "tv_r3d_18", "tv_mc3_18", "tv_r2plus1d_18", "ptv_r2plus1d_r50")},
    **{n: ("exact",) for n in ("r2plus1d_dw_50", "r2plus1d_dw_101", "dcf_r2plus1d_50",
                               "dcf_r2plus1d_101", "ptv_c2d_r50")},
    **{n: NONE_X3D for n in ("x3d_s", "x3d_m", "dcf_x3d_s", "dcf_x3d_m", "dcf_x3d_s_basic",
                             "dcf_x3d_s_no_pyramid", "dcf_x3d_s_no_long_term", "ptv_x3d_xs",
                             "ptv_x3d_s", "ptv_x3d_m", "ptv_x3d_l")},
    "ptv_i3d_r50": ("centre", 40, 10),
    "ptv_slow_r50": ("centre", 19, 9),
    "ptv_csn_r101": ("refused", "64x1x3x3x3 in the model"),   # channel-wise 3x3x3 convs
    **{n: ("none", "CPU-size variant: no ImageNet 2D ResNet of its widths") for n in (
        "c2d_tiny", "c3d_tiny", "artnet_tiny", "nl_c2d_tiny", "cpnet_tiny", "r2plus1d_tiny",
        "corrnet_tiny", "r2plus1d_dw_tiny", "dcf_tiny", "x3d_tiny", "dcf_x3d_tiny")},
}


def test_every_registered_model_is_classified() -> None:
    assert set(EXPECT) == set(models.list_models())


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """``imagenet(depth)`` -> (torchvision resnet, saved state dict path), random weights and
    random BN statistics, built once per depth."""
    import torchvision

    cache: dict[int, tuple[nn.Module, Path]] = {}
    folder = tmp_path_factory.mktemp("imagenet")

    def get(depth: int) -> tuple[nn.Module, Path]:
        if depth not in cache:
            torch.manual_seed(depth)
            net = randomise(getattr(torchvision.models, f"resnet{depth}")(weights=None),
                            torch.rand(4, 3, 64, 64) * 2 - 1, seed=depth)
            cache[depth] = (net, save_state(net, folder / f"resnet{depth}.pth"))
        return cache[depth]

    return get


def _features_2d(net: nn.Module, frame: torch.Tensor) -> torch.Tensor:
    x = net.maxpool(net.relu(net.bn1(net.conv1(frame))))
    return net.layer4(net.layer3(net.layer2(net.layer1(x))))


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return (got - want).abs().max().item() / want.abs().max().item()


INFLATABLE = sorted(n for n, e in EXPECT.items() if e[0] != "none")


@pytest.mark.parametrize("name", INFLATABLE)
def test_imagenet_resnet_inflates_exactly_or_is_refused(name: str, imagenet) -> None:
    expect = EXPECT[name]
    depth = models.get_model_entry(name).defaults["depth"]
    net, path = imagenet(depth)
    extra = {"num_frames": 4} if name == "trn_r18" else {}
    torch.manual_seed(1)
    model = models.create_model(name, num_classes=1000, **extra).eval()
    if expect[0] == "refused":
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(UserError) as exc:
            load_weights(model, path, model_name=name)
        msg = str(exc.value)
        assert expect[1] in msg and str(path) in msg and "--partial-init" in msg
        assert "\n" not in msg
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        return
    report = load_weights(model, path, model_name=name)
    assert not report.problems and not report.skipped.keys() - report.allowed_skips
    if model.head.__class__.__name__ == "ClassifierHead":
        assert report.new_classifier == []
    T, centre = (expect[1], expect[2]) if expect[0] == "centre" else (4, None)
    frame = torch.rand(1, 3, 32, 32) * 2 - 1
    clip = frame[:, :, None].repeat(1, 1, T, 1, 1)
    with torch.no_grad():
        want_feat, want_logits = _features_2d(net, frame), net(frame)
        feats = model.forward_features(clip)
        if centre is None:
            for t in range(feats.shape[2]):
                assert rel_err(feats[:, :, t], want_feat) <= RTOL, (name, t)
            if expect[0] == "exact":
                assert rel_err(model(clip), want_logits) <= RTOL
        else:
            assert rel_err(feats[:, :, centre], want_feat) <= RTOL
            assert rel_err(model.head(feats[:, :, centre:centre + 1]), want_logits) <= RTOL
            assert rel_err(feats[:, :, 0], want_feat) > 1e-3  # the zero padding reaches the ends


@pytest.mark.parametrize("depth,exact", [(50, True), (18, False)])
def test_2plus1d_paper_layout_inflates_exactly_when_mid_is_wide_enough(depth: int, exact: bool,
                                                                       imagenet) -> None:
    """R(2+1)D paper order (1 x 3 x 3 to M, BN, ReLU, 3 x 1 x 1): exact through the ReLU when
    M >= 2 C_out (bottlenecks: M = 2.25 C); ResNet-18's first block of a stage has M = 1.8 C."""
    net, path = imagenet(depth)
    model = models.video_resnet(depth, num_classes=1000, conv="2plus1d").eval()
    if not exact:
        with pytest.raises(UserError, match="mid width"):
            load_weights(model, path)
        return
    report = load_weights(model, path)
    assert report.identity and not report.problems
    frame = torch.rand(1, 3, 32, 32) * 2 - 1
    clip = frame[:, :, None].repeat(1, 1, 4, 1, 1)
    with torch.no_grad():
        assert rel_err(model(clip), net(frame)) <= RTOL



# Training mode (issue 23, item 4): every family that inflates exactly in eval mode, against the
# 2D network in training mode on the same frames. A BN in training mode normalises with its
# batch's statistics; on a clip of identical frames those equal the 2D network's over the frames.
TRAIN_EXACT = sorted(n for n, e in EXPECT.items() if e[0] == "exact")


def _train_mode_pair(name_or_model, net: nn.Module, path: Path, hold: bool):
    """(video features, 2D features) in training mode on 4 static clips of 4 frames (every
    output frame), with the report's BNs held (``vcorr train``'s default) or not. Features,
    not logits: the heads' dropout is random in training mode."""
    import copy

    from vcorr.pipelines.train.trainer import hold_bns

    torch.manual_seed(1)
    model = (models.create_model(name_or_model, num_classes=1000)
             if isinstance(name_or_model, str) else name_or_model)
    report = load_weights(model, path)
    model.train()
    if hold:
        hold_bns(model, report.hold_bn)
    net2d = copy.deepcopy(net).train()
    frames = torch.rand(4, 3, 64, 64) * 2 - 1   # res5 BN statistics over 16 values a channel
    clip = frames[:, :, None].repeat(1, 1, 4, 1, 1)
    with torch.no_grad():
        feats, want = model.forward_features(clip), _features_2d(net2d, frames)
    return feats.permute(0, 2, 1, 3, 4).flatten(0, 1), want.repeat_interleave(feats.shape[2], 0), report


@pytest.mark.parametrize("name", TRAIN_EXACT)
def test_imagenet_start_is_exact_in_training_mode(name: str, imagenet) -> None:
    net, path = imagenet(models.get_model_entry(name).defaults["depth"])
    got, want, report = _train_mode_pair(name, net, path, hold=True)
    assert rel_err(got, want) <= RTOL, name
    if report.hold_bn:   # the BNs between factorised convs: batch statistics break the start
        got, want, _ = _train_mode_pair(name, net, path, hold=False)
        assert rel_err(got, want) > 0.05, name


def test_2plus1d_paper_layout_is_exact_in_training_mode_without_a_hold(imagenet) -> None:
    """Its mid BN standardises W x and -W x alike; the next BN undoes that affine map."""
    net, path = imagenet(50)
    model = models.video_resnet(50, num_classes=1000, conv="2plus1d")
    got, want, report = _train_mode_pair(model, net, path, hold=False)
    assert report.hold_bn == [] and report.identity
    assert rel_err(got, want) <= 1e-3


def test_partial_load_is_allowed_when_asked(imagenet) -> None:
    _, path = imagenet(18)
    model = models.create_model("artnet_r18", num_classes=1000)
    report = load_weights(model, path, partial=True, model_name="artnet_r18")
    assert report.partial and report.problems
    assert "stem.0.appearance.0.weight" in report.missing
    assert "SMART" in report.skipped["res2.0.conv2.weight"]
    assert report.loaded  # the rest did load


def test_classifier_for_other_classes_is_a_new_head_and_reordered_when_the_same(tmp_path: Path) -> None:
    src = models.create_model("c2d_r18", num_classes=3)
    classes = ["a", "b", "c"]
    path = tmp_path / "ckpt.pt"
    from vcorr.pipelines.train.checkpoint import save_checkpoint

    save_checkpoint(path, {"model": src.state_dict(), "classes": classes})
    same = models.create_model("c2d_r18", num_classes=3)
    load_weights(same, path, classes=["c", "a", "b"])          # same names, other order
    assert torch.equal(same.head.fc.weight, src.head.fc.weight[[2, 0, 1]])
    other = models.create_model("c2d_r18", num_classes=3)
    report = load_weights(other, path, classes=["x", "y", "z"])
    assert set(report.new_classifier) == {"head.fc.weight", "head.fc.bias"}
    assert not report.problems and not torch.equal(other.head.fc.weight, src.head.fc.weight)


# --- CLI: refusals, reports --------------------------------------------------------------------------

def _train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", str(TOY_C2D), "--data", str(data), "--out", str(out), "--no-progress",
            "--device", "cpu", "--set", "data.workers=0", "--set", "optim.batch_size=4",
            "--set", "optim.epochs=1", "--set", "train.max_steps_per_epoch=1",
            "--set", "train.val_every=0", *extra]


def test_cli_refuses_a_partial_init_in_one_line_and_reports_an_allowed_one(
        tmp_path: Path, toy_train_prepared: Path, imagenet) -> None:
    from vcorr.cli.main import cli

    _, path = imagenet(18)
    args = _train_args(toy_train_prepared, tmp_path / "run", "--set", 'model.name="artnet_r18"',
                       "--set", "data.frames=4", "--init", str(path))
    r = CliRunner().invoke(cli, args, prog_name="vcorr")
    assert r.exit_code == 2, r.output
    # one error line (the checks before the first step may print notes on stdout)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]
    assert all(ln.startswith("note: ") for ln in r.stdout.splitlines() if ln.strip())
    assert "stem.0.weight" in lines[0] and "SMART" in lines[0] and "Traceback" not in r.output
    r = CliRunner().invoke(cli, args + ["--partial-init"], prog_name="vcorr")
    assert r.exit_code == 0, r.output + repr(r.exception)
    rep = json.loads((tmp_path / "run" / "init_report.json").read_text())
    assert rep["partial"] and rep["counts"]["missing"] > 0 and rep["model"] == "artnet_r18"
    assert "set to identity" in r.output and "missing (model)" in r.output   # printed table
    # nothing matches at all: a clear error too
    r = CliRunner().invoke(cli, _train_args(toy_train_prepared, tmp_path / "toy", "--init",
                                            str(path)), prog_name="vcorr")
    assert r.exit_code == 2 and "no tensor matches" in r.output


# --- weights convert -> eval / train --init -------------------------------------------------------

@pytest.fixture(scope="module")
def k400_prepared(tmp_path_factory, toy_dataset) -> Path:
    """The toy videos relabelled with four Kinetics-400 classes and prepared with the full
    400-name class list (what `vcorr prepare --labels` does with the package's list)."""
    from vcorr.pipelines.data.prepare import PrepareOptions, prepare

    src = toy_dataset["root"]
    names = kinetics400_classes()
    pick = {c: names[i] for c, i in zip(["0", "1", "2", "3"], (0, 57, 233, 399))}
    rows = list(csv.DictReader(open(toy_dataset["annotations"], newline="")))
    labels = sorted({r["label"] for r in rows})
    relabel = dict(zip(labels, pick.values()))
    folder = tmp_path_factory.mktemp("k400_src")
    with open(folder / "annotations.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({**r, "label": relabel[r["label"]]})
    (folder / "classes.txt").write_text("\n".join(names) + "\n")
    out = tmp_path_factory.mktemp("k400") / "k400"
    prepare(PrepareOptions(format="list", annotations=[str(folder / "annotations.csv")],
                           root=str(src), out=str(out), labels=str(folder / "classes.txt"),
                           short_side=0, progress=False))
    return out


def test_convert_then_eval_equals_the_source_model(tmp_path: Path, k400_prepared: Path) -> None:
    from torchvision.models import video

    from vcorr.pipelines.data.dataset import VideoClipDataset
    from vcorr.pipelines.data.inspect import read_classes
    from vcorr.pipelines.data.samplers import DenseSampler
    from vcorr.pipelines.data.transforms import test_transform
    from vcorr.cli.main import cli

    assert read_classes(k400_prepared) == kinetics400_classes()
    # The val clips as torchvision's model takes them: 16 frames, normalised with its mean/std.
    ds = VideoClipDataset(k400_prepared, "val", DenseSampler(16, 1),
                          test_transform(None, None, mean=TV_VIDEO_MEAN, std=TV_VIDEO_STD),
                          train=False, num_clips=1)
    clips = torch.stack([ds[i][0] for i in range(len(ds))])
    src = randomise(video.r2plus1d_18(), clips)   # BN statistics of these clips: logits O(1)
    path = save_state(src, tmp_path / "r2plus1d_18-91a641e6.pth")
    ckpt = tmp_path / "conv" / "r2p1d.pt"
    r = CliRunner().invoke(cli, ["weights", "convert", str(path), "--from", "torchvision",
                                 "--out", str(ckpt)], prog_name="vcorr")
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "tv_r2plus1d_18" in r.output and "67.463" in r.output
    # the wrong library, and an ImageNet file, are one-line errors
    r2 = CliRunner().invoke(cli, ["weights", "convert", str(path), "--from", "pytorchvideo",
                                  "--out", str(tmp_path / "x.pt")], prog_name="vcorr")
    assert r2.exit_code == 2 and "not a pytorchvideo checkpoint" in r2.output
    assert not (tmp_path / "x.pt").exists()

    out = tmp_path / "eval"
    r = CliRunner().invoke(cli, ["eval", str(ckpt), "--data", str(k400_prepared), "--clips", "1",
                                 "--full-frame", "--short-side", "0", "--average", "logits",
                                 "--workers", "0", "--device", "cpu", "--out", str(out),
                                 "--no-progress"], prog_name="vcorr")
    assert r.exit_code == 0, r.output + repr(r.exception)
    m = json.loads((out / "metrics.json").read_text())
    assert m["model_name"] == "tv_r2plus1d_18" and m["frames"] == 16
    z = np.load(out / "scores.npz")
    ids = [v["id"] for v in ds.videos]
    with torch.no_grad():
        want = src(clips).numpy()
    order = [ids.index(i) for i in z["ids"]]
    assert np.abs(z["scores"] - want[order]).max() <= ATOL
    assert np.abs(want).max() > 1.0                      # not a vacuous comparison


def test_train_init_from_converted_and_from_source_files(tmp_path: Path, toy_train_prepared: Path,
                                                         k400_prepared: Path) -> None:
    from torchvision.models import video

    from vcorr.pipelines.weights.export import convert_weights
    from vcorr.cli.main import cli

    src = randomise(video.r3d_18(), torch.randn(2, 3, 4, 32, 32))
    path = save_state(src, tmp_path / "r3d_18.pth")
    ckpt = tmp_path / "r3d.pt"
    convert_weights(path, "torchvision", ckpt)
    run = tmp_path / "run"
    r = CliRunner().invoke(cli, _train_args(toy_train_prepared, run, "--set",
                                            'model.name="tv_r3d_18"', "--set", "data.frames=4",
                                            "--init", str(ckpt)), prog_name="vcorr")
    assert r.exit_code == 0, r.output + repr(r.exception)
    rep = json.loads((run / "init_report.json").read_text())
    assert rep["new_classifier"] == ["head.fc.weight", "head.fc.bias"]   # 4 toy classes
    assert rep["counts"]["missing"] == 0 and not rep["partial"]
    assert {s["name"] for s in rep["skipped"]} == {"head.fc.weight", "head.fc.bias"}
    assert all(s["allowed"] for s in rep["skipped"])
    # the source file itself, and the converted checkpoint, give the same weights
    a, b = models.create_model("tv_r3d_18"), models.create_model("tv_r3d_18")
    ra = load_weights(a, path, classes=kinetics400_classes())
    load_weights(b, ckpt, classes=kinetics400_classes())
    assert ra.source_format == "torchvision-video" and len(ra.loaded) == len(a.state_dict())
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())



@pytest.mark.parametrize("init_bn", ["hold", "batch"])
def test_train_holds_the_neutral_bns_of_an_imagenet_start_across_a_resume(
        tmp_path: Path, toy_train_prepared: Path, imagenet, init_bn: str) -> None:
    """Training from an ImageNet start keeps the BNs of LoadReport.hold_bn on their neutral
    running statistics (eval mode) through training and a resume, while every other BN learns
    its statistics; ``train.init_bn = "batch"`` lets them learn too."""
    from vcorr.pipelines.train import load_config, train
    from vcorr.pipelines.train.checkpoint import load_checkpoint

    net, path = imagenet(18)
    cfg = load_config(TOY_C2D, [f"data.root={json.dumps(str(toy_train_prepared))}",
                                "data.workers=0", "optim.batch_size=4", "optim.epochs=1",
                                "train.val_every=0", 'model.name="r2plus1d_dw_50"',
                                "model.args={depth=18}", "data.frames=4",
                                f'train.init_bn="{init_bn}"'])
    run = tmp_path / "run"
    train(cfg, run, init=path, progress=False, device="cpu", stop_after_steps=2)
    held = json.loads((run / "init_report.json").read_text())["hold_bn"]
    assert len(held) == 16 and all(n.endswith((".conv1.1", ".conv2.1")) for n in held)
    assert load_checkpoint(run / "last.pt")["position"]["global_step"] == 2
    train(cfg, run, resume=True, progress=False, device="cpu", stop_after_steps=2)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["position"]["global_step"] == 4
    assert ckpt["hold_bn"] == (held if init_bn == "hold" else [])
    state = ckpt["model"]
    for name in held:
        mean, var = state[f"{name}.running_mean"], state[f"{name}.running_var"]
        neutral = torch.equal(mean, torch.zeros_like(mean)) and torch.equal(
            var, torch.full_like(var, 1 - 1e-5))
        assert neutral == (init_bn == "hold"), name
    # the 2D network's own BNs learn their statistics on the new data in both modes
    assert not torch.allclose(state["res2.0.bn1.running_mean"], net.layer1[0].bn1.running_mean)

# --- plug-ins on pretrained backbones ----------------------------------------------------------------

def test_pytorchvideo_x3d_s_into_dcf_x3d_s(tmp_path: Path) -> None:
    _ptv()
    from pytorchvideo.models.x3d import create_x3d

    from vcorr.pipelines.weights.export import convert_weights

    clip = torch.randn(2, 3, 8, 64, 64)
    src = randomise(create_x3d(input_clip_length=8, input_crop_size=64, head_activation=None), clip)
    path = save_state(src, tmp_path / "X3D_S.pyth")
    ckpt = tmp_path / "x3d_s.pt"
    summary, _ = convert_weights(path, "pytorchvideo", ckpt)
    assert summary["model"] == "ptv_x3d_s"             # the published file name settles S
    backbone = models.create_model("ptv_x3d_s").eval()
    load_weights(backbone, ckpt)
    k400 = kinetics400_classes()
    with pytest.raises(UserError, match="temporal kernel 5 vs 3"):
        load_weights(models.create_model("dcf_x3d_s", num_classes=400), ckpt, classes=k400)
    dcf = models.create_model("dcf_x3d_s", num_classes=400, stem_t=5).eval()
    report = load_weights(dcf, ckpt, classes=k400)
    assert not report.problems and report.kept and not report.new_classifier
    assert all(k.startswith("res2.0.shortcut.1.") for k in report.identity)  # neutral BN
    assert {k.split(".")[1] for k in report.kept} == {"2_after0", "4_after0", "10_after0"}
    with torch.no_grad():
        want = backbone(clip)
        assert (dcf(clip) - want).abs().max().item() <= ATOL
        assert (src(clip) - want).abs().max().item() <= ATOL
    # Training mode (dropout off): the neutral shortcut BN must stay on its running statistics.
    from vcorr.pipelines.train.trainer import hold_bns

    assert report.hold_bn == ["res2.0.shortcut.1"]
    for m in (src, dcf):
        m.train()
        for d in m.modules():
            if isinstance(d, nn.Dropout):
                d.eval()
    with torch.no_grad():
        want = src(clip)
        hold_bns(dcf, report.hold_bn)
        assert (dcf(clip) - want).abs().max().item() <= 1e-3 * want.abs().max().item()
        dcf.get_submodule("res2.0.shortcut.1").train()   # batch statistics: another function
        assert (dcf(clip) - want).abs().max().item() > 1e-2 * want.abs().max().item()


def test_pytorchvideo_r2plus1d_r50_into_corrnet_50(tmp_path: Path) -> None:
    _ptv()
    from pytorchvideo.models import hub

    clip = torch.randn(2, 3, 8, 32, 32)
    src = randomise(hub.r2plus1d_r50(head_pool_kernel_size=(2, 1, 1), head_activation=None), clip)
    path = save_state(src, tmp_path / "R2PLUS1D_16x4_R50.pyth")
    k400 = kinetics400_classes()
    with pytest.raises(UserError, match="stem.0.weight"):   # CorrNet-50 narrows conv1 to 32
        load_weights(models.create_model("corrnet_50", num_classes=400, num_frames=8), path,
                     classes=k400)
    corr = models.create_model("corrnet_50", num_classes=400, num_frames=8, stem_width=64,
                               res2_temporal=True).eval()
    report = load_weights(corr, path, classes=k400)
    assert not report.problems and report.kept
    assert len(report.loaded) == len(src.state_dict())
    with torch.no_grad():
        # the source's pooling window covers the whole (2, 1, 1) map: its windowed head and
        # CorrNet's global mean are the same function here
        assert (corr(clip) - src(clip)).abs().max().item() <= ATOL
    # Correlation blocks that do not start as the identity (model.args.zero_init = false) are
    # not kept as if they did: their tensors are missing, a partial load.
    random_blocks = models.create_model("corrnet_50", num_classes=400, num_frames=8,
                                        stem_width=64, res2_temporal=True, zero_init=False)
    with pytest.raises(UserError, match=r"partial load.*res2\.\d+_after0\..*not in the file"):
        load_weights(random_blocks, path, classes=k400)


def test_weights_list_classes_and_convert_errors(tmp_path: Path) -> None:
    from vcorr.cli.main import cli

    r = CliRunner().invoke(cli, ["weights", "list", "--json"], prog_name="vcorr")
    assert r.exit_code == 0
    listed = json.loads(r.output)
    kinetics = [s for s in listed["sources"] if s["dataset"] == "Kinetics-400"]
    assert {s["model"] for s in kinetics} == set(models.list_models("tv_*") + models.list_models("ptv_*"))
    assert all(s["top1"] > 50 and s["url"].endswith(s["file_name"]) for s in listed["sources"])
    assert any("slowfast" in k for k in listed["not_imported"])
    r = CliRunner().invoke(cli, ["weights", "classes"], prog_name="vcorr")
    assert r.output.splitlines() == kinetics400_classes()
    missing = tmp_path / "none.pth"
    r = CliRunner().invoke(cli, ["weights", "convert", str(missing), "--from", "torchvision",
                                 "--out", str(tmp_path / "o.pt")], prog_name="vcorr")
    assert r.exit_code == 2 and r.output.strip() == f"error: {missing}: weights file not found"
    torch.save(models.create_model("c2d_r18").state_dict(), tmp_path / "ours.pth")
    r = CliRunner().invoke(cli, ["weights", "convert", str(tmp_path / "ours.pth"), "--from",
                                 "torchvision", "--out", str(tmp_path / "o.pt")], prog_name="vcorr")
    assert r.exit_code == 2 and "not a torchvision checkpoint" in r.output
    _ptv()
    from pytorchvideo.models.x3d import create_x3d

    torch.save(create_x3d().state_dict(), tmp_path / "renamed.pyth")   # X3D-XS, -S, -M share it
    r = CliRunner().invoke(cli, ["weights", "convert", str(tmp_path / "renamed.pyth"), "--from",
                                 "pytorchvideo", "--out", str(tmp_path / "o.pt")], prog_name="vcorr")
    assert r.exit_code == 2 and "ptv_x3d_xs, ptv_x3d_s, ptv_x3d_m" in r.output and "--model" in r.output
    r = CliRunner().invoke(cli, ["weights", "convert", str(tmp_path / "renamed.pyth"), "--from",
                                 "pytorchvideo", "--model", "ptv_x3d_m", "--out",
                                 str(tmp_path / "o.pt")], prog_name="vcorr")
    assert r.exit_code == 0, r.output
    ckpt = torch.load(tmp_path / "o.pt", weights_only=True)
    assert ckpt["model_name"] == "ptv_x3d_m" and ckpt["config"]["data"]["frames"] == 16
    assert ckpt["config"]["data"]["mean"] == [0.45] * 3 and ckpt["classes"] == kinetics400_classes()
