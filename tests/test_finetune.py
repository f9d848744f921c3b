"""Fine-tuning keys (issue 26): ``train.freeze`` keeps modules' parameters and BatchNorm
statistics bit-identical through training; ``optim.pretrained_lr_mult`` gives the parameters
an ``--init`` loaded a multiple of the new ones' learning rate, visible in the optimiser's
groups and kept across a resume; ``data.class_balance`` weighs the loss or the sampling
against class imbalance, checked against hand-computed weights and drawn frequencies.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vcorr.pipelines.errors import UserError
from vcorr.pipelines.train import load_checkpoint, load_config, train
from vcorr.pipelines.train import trainer as trainer_mod
from vcorr.pipelines.train.distributed import EpochSampler

REPO = Path(__file__).resolve().parents[1]
TOY_C2D = REPO / "examples" / "configs" / "toy_c2d.toml"
# A ResNet-18 C2D at width 8 (stem, res2..res5, BatchNorms) on the toy clips.
SMALL = ['model.name="c2d_r18"', "model.args={widths=[8, 8, 8, 8], stem_width=8}",
         "data.crop=28", "data.workers=0", "optim.batch_size=4", "optim.epochs=1",
         "optim.warmup_epochs=0", "train.val_every=0", 'optim.optimizer="sgd"', "optim.lr=0.1"]


def _cfg(root: Path, *sets: str) -> dict:
    return load_config(TOY_C2D, [f"data.root={json.dumps(str(root))}", *SMALL, *sets])


def _initial_state(cfg: dict) -> dict[str, torch.Tensor]:
    torch.manual_seed(cfg["seed"])  # what train() builds the model from
    return trainer_mod.build_model(cfg, 4, cfg["data"]["frames"]).state_dict()


def test_frozen_modules_keep_weights_and_bn_statistics(tmp_path: Path,
                                                       toy_train_prepared: Path) -> None:
    cfg = _cfg(toy_train_prepared, 'train.freeze=["stem", "res2"]')
    torch.manual_seed(5)   # weights to fine-tune: not the run's own initial values
    start = trainer_mod.build_model(cfg, 4, cfg["data"]["frames"]).state_dict()
    torch.save(start, tmp_path / "start.pt")
    before = start
    train(cfg, tmp_path / "run", init=tmp_path / "start.pt", progress=False, device="cpu")
    after = load_checkpoint(tmp_path / "run" / "last.pt")["model"]
    frozen = [k for k in before if k.startswith(("stem.", "res2."))]
    assert any(k.endswith("running_mean") for k in frozen) and len(frozen) > 10
    for k in frozen:
        assert torch.equal(before[k], after[k]), k          # weights and BN statistics
    trained = [k for k in before if k.startswith("res3.") and k.endswith("weight")]
    assert trained and all(not torch.equal(before[k], after[k]) for k in trained)
    assert not torch.equal(before["res3.0.bn1.running_mean"], after["res3.0.bn1.running_mean"])
    with pytest.raises(UserError, match=r"'res9' is not a module of the model; its top-level "
                                        r"modules are stem, res2"):
        train(_cfg(toy_train_prepared, 'train.freeze=["res9"]'), tmp_path / "bad",
              init=tmp_path / "start.pt", progress=False, device="cpu")
    assert not (tmp_path / "bad").exists()
    # without --init there is nothing to fine-tune: frozen layers would stay random
    for key in ('train.freeze=["stem"]', "optim.pretrained_lr_mult=0.1"):
        with pytest.raises(UserError, match="fine-tune weights loaded with --init, and none "
                                            "was given"):
            train(_cfg(toy_train_prepared, key), tmp_path / "none", progress=False,
                  device="cpu")
        assert not (tmp_path / "none").exists()


def test_pretrained_parameters_get_a_fraction_of_the_learning_rate(
        tmp_path: Path, toy_train_prepared: Path) -> None:
    cfg = _cfg(toy_train_prepared, "optim.pretrained_lr_mult=0.1", "optim.epochs=2")
    backbone = {k: v for k, v in _initial_state(cfg).items() if not k.startswith("head.")}
    torch.save(backbone, tmp_path / "backbone.pt")        # a file without the classifier
    run = tmp_path / "run"
    train(cfg, run, init=tmp_path / "backbone.pt", progress=False, device="cpu",
          stop_after_steps=3)
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["new_params"] == ["head.fc.bias", "head.fc.weight"]
    groups = ckpt["optimizer"]["param_groups"]
    mults = sorted({g["lr_mult"] for g in groups})
    assert mults == [0.1, 1.0]
    new = [g for g in groups if g["lr_mult"] == 1.0]
    old = [g for g in groups if g["lr_mult"] == 0.1]
    assert sum(len(g["params"]) for g in new) == 2               # the classifier only
    assert all(g["lr"] == pytest.approx(0.1 * new[0]["lr"]) for g in old)
    # the resumed run keeps the groups (and so the optimiser state loads into them)
    summary = train(cfg, run, resume=True, progress=False, device="cpu")
    assert summary["finished"]
    groups = load_checkpoint(run / "last.pt")["optimizer"]["param_groups"]
    assert sorted({g["lr_mult"] for g in groups}) == [0.1, 1.0]


def test_class_balance_weights_match_their_definition() -> None:
    labels = [0] * 6 + [1] * 3 + [2] * 1          # and class 3 has no video
    b = trainer_mod.class_balance("loss", labels, 4, torch.device("cpu"))
    # n / (K' n_c) with n = 10, K' = 3 classes with videos
    assert torch.allclose(b.loss_weight, torch.tensor([10 / 18, 10 / 9, 10 / 3, 0.0]))
    s = trainer_mod.class_balance("sampler", labels, 4, torch.device("cpu"))
    np.testing.assert_allclose(s.sample_weights, [1 / 6] * 6 + [1 / 3] * 3 + [1.0])
    assert trainer_mod.class_balance("off", labels, 4, torch.device("cpu")).loss_weight is None


def test_balanced_sampling_draws_every_class_equally_often() -> None:
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    w = trainer_mod.class_balance("sampler", labels, 3, torch.device("cpu")).sample_weights
    draws = np.concatenate([EpochSampler(100, seed=0, epoch=e, weights=w).rank_indices()
                            for e in range(200)])
    freq = np.bincount(labels[draws], minlength=3) / len(draws)
    np.testing.assert_allclose(freq, [1 / 3] * 3, atol=0.02)     # 20,000 draws
    a = EpochSampler(100, seed=0, epoch=3, weights=w, world_size=2, rank=1, skip=5)
    b = EpochSampler(100, seed=0, epoch=3, weights=w, world_size=2, rank=1)
    assert list(a) == b.rank_indices()[5:]                      # resumable, as unweighted
    plain = np.bincount(labels[EpochSampler(100, seed=0, epoch=0).rank_indices()])
    assert list(plain) == [90, 9, 1]                             # without weights: each once


def test_class_balance_trains(tmp_path: Path, toy_train_prepared: Path) -> None:
    for mode in ("loss", "sampler"):
        summary = train(_cfg(toy_train_prepared, f'data.class_balance="{mode}"'),
                        tmp_path / mode, progress=False, device="cpu")
        assert summary["finished"], mode


def test_the_small_data_template_fine_tunes_a_kinetics_file(tmp_path: Path,
                                                            toy_train_prepared: Path) -> None:
    """examples/configs/small_finetune_r2plus1d_18.toml with torchvision's R(2+1)D-18 file
    (random weights here; the toy's 4 classes get a new classifier): the frozen stem and
    res2 keep the file's values, the loaded layers train at a tenth of the classifier's rate,
    the loss is class-weighted. Clips cut down to 4 frames of 32 px for the CPU."""
    from torchvision.models import video

    torch.manual_seed(0)
    src = video.r2plus1d_18()
    torch.save(src.state_dict(), tmp_path / "r2plus1d_18-91a641e6.pth")
    cfg = load_config(REPO / "examples" / "configs" / "small_finetune_r2plus1d_18.toml", [
        f"data.root={json.dumps(str(toy_train_prepared))}", "data.frames=4", "data.crop=32",
        "data.short_side=0", "data.test_short_side=0", "data.workers=0", "optim.batch_size=4",
        "optim.epochs=1", "train.max_steps_per_epoch=2", "train.val_every=0"])
    train(cfg, tmp_path / "run", init=tmp_path / "r2plus1d_18-91a641e6.pth", progress=False,
          device="cpu")
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["new_params"] == ["head.fc.bias", "head.fc.weight"]
    assert sorted({g["lr_mult"] for g in ckpt["optimizer"]["param_groups"]}) == [0.1, 1.0]
    # our stem.0.0 is torchvision's stem.0 (its first conv): frozen, the file's values
    tv = src.state_dict()
    assert torch.equal(ckpt["model"]["stem.0.0.weight"], tv["stem.0.weight"])
    assert torch.equal(ckpt["model"]["stem.0.1.running_mean"], tv["stem.1.running_mean"])
    assert not torch.equal(ckpt["model"]["res5.0.conv1.0.weight"],
                           tv["layer4.0.conv1.0.0.weight"])


def test_freezing_works_under_ddp(tmp_path: Path, toy_train_prepared: Path) -> None:
    """Two processes (torchrun, gloo): frozen parameters must be frozen before DDP wraps the
    model, or its reducer waits for gradients that never come. The frozen stem keeps its
    values and both ranks train the rest."""
    import os
    import subprocess
    import sys

    cfg_dict = load_config(TOY_C2D, [f"data.root={json.dumps(str(toy_train_prepared))}",
                                     "model.args={width=8}"])
    before = _initial_state(cfg_dict)
    torch.save(before, tmp_path / "start.pt")
    cfg = ["train", str(TOY_C2D), "--data", str(toy_train_prepared), "--out",
           str(tmp_path / "run"), "--init", str(tmp_path / "start.pt"), "--device", "cpu",
           "--no-progress", "--set", "data.workers=0",
           "--set", "optim.batch_size=8", "--set", "optim.epochs=1", "--set",
           "model.args={width=8}", "--set", 'train.freeze=["stem"]', "--set",
           "train.val_every=0"]
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "-m", "vcorr.cli", *cfg], cwd=tmp_path,
                       env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True,
                       text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    ckpt = load_checkpoint(tmp_path / "run" / "last.pt")
    assert ckpt["position"]["global_step"] == 3
    for k, v in before.items():
        assert torch.equal(v, ckpt["model"][k]) == k.startswith("stem."), k
