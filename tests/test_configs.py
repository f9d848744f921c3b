"""Every example config (``examples/configs/*.toml``) is usable as shipped.

For each file: it loads with :func:`vcorr.pipelines.train.config.load_config`, names a registered
model, the trainer's :func:`vcorr.pipelines.train.trainer.build_model` builds that model with the
config's ``[model.args]`` and the dataset's class count (on the meta device: no memory, no
forward pass), and its phases fit the model: positive clip lengths, and for models with
per-time-step weights (CorrNet's correlation filters, TRN heads) every phase's clip length is
the one the weights were built for.
"""
from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
from torch import nn

from vcorr import models
from vcorr.pipelines.data.swaps import DEFAULT_MAP
from vcorr.pipelines.train.config import load_config, phases, to_toml
from vcorr.pipelines.train.trainer import build_model

CONFIG_DIR = Path(__file__).resolve().parents[1] / "examples" / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.toml"))

# Class count by file-name prefix (the dataset the config trains on).
NUM_CLASSES = {"toy": 4, "k400": 400, "ssv1": 174, "ssv2": 174, "jester": 27, "diving48": 48,
               "sports1m": 487, "small": 10,  # small_*: templates for your own dataset
               "motion": 16}  # motion_bench: the motion benchmark's recipe (`vcorr bench learn`)
NETWORK_STRIDE = 32  # every non-toy backbone here downsamples 32x in space


def _dataset(path: Path) -> str:
    prefix = path.stem.split("_")[0]
    assert prefix in NUM_CLASSES, (
        f"{path.name}: name the config <dataset>_<model>...toml with a dataset prefix in "
        f"{sorted(NUM_CLASSES)}")
    return prefix


def _frame_dependent(model: nn.Module) -> list[tuple[str, int]]:
    """(module name, clip length) of every module whose weights are made for one clip length."""
    return [(name, m.num_frames) for name, m in model.named_modules()
            if isinstance(getattr(m, "num_frames", None), int)]


def _num_outputs(model: nn.Module) -> int:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears, "no classifier layer found"
    return linears[-1].out_features


def test_configs_present() -> None:
    names = {p.stem for p in CONFIGS}
    # The papers' headline experiments (a sample; every file is checked below).
    for name in ("k400_cpnet_r18", "k400_cpnet_r18_rate4", "k400_c2d_r18", "k400_c3d_r18",
                 "k400_artnet_r18", "k400_nl_c2d_r18", "k400_cpnet_r101", "ssv2_cpnet_r34",
                 "jester_cpnet_r34", "k400_corrnet_26", "k400_r2plus1d_26", "k400_r2d_26",
                 "k400_corrnet_50", "k400_corrnet_101", "ssv1_dcf_x3d_s", "ssv1_dcf_x3d_m",
                 "ssv1_dcf_r2plus1d_50", "ssv2_dcf_x3d_m", "ssv2_dcf_r2plus1d_50"):
        assert name in names, f"examples/configs/{name}.toml is missing"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_loads_and_builds(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    # The run folder's resolved config.toml (what --resume reads back) gives the same config.
    resolved = tmp_path / "config.toml"
    resolved.write_text(to_toml(cfg), encoding="utf-8")
    assert load_config(resolved) == cfg
    dataset = _dataset(path)
    num_classes = NUM_CLASSES[dataset]
    name, args = cfg["model"]["name"], dict(cfg["model"]["args"])
    entry = models.get_model_entry(name)  # a registered name, else UnknownModelError

    plan = phases(cfg)
    assert plan
    for i, p in enumerate(plan):
        assert p["frames"] > 0 and p["epochs"] > 0 and p["lr"] > 0, f"phase {i}: {p}"
        assert p["batch_size"] % cfg["optim"]["accumulate"] == 0, (
            f"phase {i}: batch_size {p['batch_size']} not a multiple of optim.accumulate")

    with torch.device("meta"):
        model = build_model(cfg, num_classes, plan[0]["frames"])  # UserError on bad model.args
        assert _num_outputs(model) == num_classes
        built_for = _frame_dependent(model)
        if "num_frames" in inspect.signature(entry.builder).parameters:
            for i, p in enumerate(plan):
                if not built_for:
                    break  # e.g. CorrNet without filters or with share_time: any clip length
                ref = models.create_model(name, num_classes=num_classes,
                                          **{**args, "num_frames": p["frames"]})
                assert _frame_dependent(ref) == built_for, (
                    f"phase {i} feeds {p['frames']}-frame clips, but {name}'s per-time-step "
                    f"weights are built for {built_for[0][1]} frames at {built_for[0][0]} "
                    "(set model.args.num_frames or keep every phase at one clip length)")
        else:
            assert not built_for, f"{name} has clip-length-bound modules {built_for}"

    d = cfg["data"]
    # The small-data templates use 112 px (the CPNet authors' training size): C2D and CPNet
    # take any size (res5 is 4x4 there); the correlation models need multiples of 32.
    # The motion benchmark's CPU-size models stride 16 and take 56 px crops (models/zoo_tiny.py).
    # The 112 px Jester models stride 16 (a stride-1 conv1): 112 = 7 x 16.
    stride = NETWORK_STRIDE // 2 if name.endswith("_112") else NETWORK_STRIDE
    # torchvision's video ResNets (no stem max-pool) stride 16 too.
    if name.startswith("tv_"):
        stride = NETWORK_STRIDE // 2
    assert d["crop"] % stride == 0 or dataset in ("toy", "motion") or (
        dataset == "small" and name in ("c2d_r18", "cpnet_r18")), (
        f"crop {d['crop']} is not a multiple of the network stride {NETWORK_STRIDE}")
    if d["flip"] == "swap":
        assert dataset in DEFAULT_MAP or d["swap_map"], (
            f"flip = 'swap' needs a label-swap map; none for {dataset}")


@pytest.mark.parametrize("path", [p for p in CONFIGS if not p.stem.startswith("toy_")],
                         ids=lambda p: p.stem)
def test_config_header(path: Path) -> None:
    """The header names the paper table, the data and the command line that runs the file."""
    text = path.read_text(encoding="utf-8")
    header = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    joined = "\n".join(header)
    # Not a paper experiment: the motion benchmark's recipe names its README section instead.
    assert "Table" in joined or "Does it learn motion?" in joined, (
        f"{path.name}: the header names no paper table")
    assert f"vcorr train examples/configs/{path.name} --data data/" in joined, (
        f"{path.name}: the header lacks its own `vcorr train ... --data` command")
    assert "vcorr prepare" in joined, f"{path.name}: the header does not say how the data is made"


@pytest.mark.parametrize("line", ["mean = [0.5, 0.5]", "std = [0.2, 0.0, 0.2]",
                                  "mean = [0.5, true, 0.5]"])
def test_bad_mean_or_std_is_one_line_naming_the_file(tmp_path: Path, line: str) -> None:
    from vcorr.pipelines.errors import UserError

    path = tmp_path / "bad.toml"
    path.write_text(f'[model]\nname = "toy_c2d"\n[data]\n{line}\n')
    with pytest.raises(UserError, match=rf"^{path}: data\.(mean|std) must be 3 numbers"):
        load_config(path)
