"""Non-finite values never reach the weights or a checkpoint (issue 24, item A): a step whose
gradient holds NaN/inf is skipped (no update, BN statistics put back, the step still counts and
is recorded as ``skipped_steps`` in metrics.jsonl), ``train.max_nonfinite_steps`` such steps
in a row stop the run with one line naming the first bad parameter (exit code 2), and a
checkpoint with a NaN/inf tensor is refused rather than written.

The NaN is injected into one parameter's gradient right after backward (the ``backward``
fault point) at chosen global steps, so the model computes nothing unusual otherwise. The
toy run: 24 train clips at batch 4 (6 steps an epoch), 2 epochs, C2D at width 8, CPU.
"""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Iterator

import pytest
import torch
from click.testing import CliRunner

from vcorr.cli.main import cli
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.train import interrupts, load_checkpoint, load_config
from vcorr.pipelines.train import trainer as trainer_mod
from vcorr.pipelines.train.config import to_toml
from vcorr.pipelines.train.trainer import (NonFiniteCheckpoint, NonFiniteGradient,
                                           _first_nonfinite_tensor)

from test_runs import records, run  # the toy runs' helpers

REPO = Path(__file__).resolve().parents[1]
TOY_C2D = REPO / "examples" / "configs" / "toy_c2d.toml"
STEPS = 6  # optimiser steps an epoch
BAD = "conv2.0.conv.weight"  # the second convolution of the toy C2D


def cfg_for(root: Path, *sets: str) -> dict:
    """The toy C2D at width 8 with SGD + momentum and weight decay (so an update that should
    not happen always shows), a record every step."""
    base = [f"data.root={json.dumps(str(root))}", "data.workers=0", "optim.batch_size=4",
            "optim.epochs=2", "optim.warmup_epochs=0", "train.log_every=1",
            "model.args={width=8}", 'optim.optimizer="sgd"', "optim.lr=0.05"]
    return load_config(TOY_C2D, base + list(sets))


def equal_tree(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(equal_tree(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(equal_tree(x, y) for x, y in zip(a, b))
    return a == b


def all_finite(ckpt: dict) -> bool:
    return _first_nonfinite_tensor({"model": ckpt["model"],
                                    "optimizer": ckpt["optimizer"]}) is None


@contextlib.contextmanager
def nan_gradient(monkeypatch: pytest.MonkeyPatch, steps: set[int], done: int = 0,
                 param: str = BAD) -> Iterator[None]:
    """NaN in one element of ``param``'s gradient after the backward pass of these global
    steps (1-based; ``done``: steps the checkpoint a run resumes from has done)."""
    holder: dict = {}
    real_build = trainer_mod.build_model

    def build(*args, **kw):
        holder["model"] = real_build(*args, **kw)
        assert param in dict(holder["model"].named_parameters())
        return holder["model"]

    count = {"step": done}

    def hook(point: str) -> None:
        if point == "backward":  # one micro-batch a step
            count["step"] += 1
            if count["step"] in steps:
                grad = dict(holder["model"].named_parameters())[param].grad
                grad.view(-1)[1] = float("nan")

    with monkeypatch.context() as mp:
        mp.setattr(trainer_mod, "build_model", build)
        interrupts.set_fault_hook(hook)
        try:
            yield
        finally:
            interrupts.set_fault_hook(None)


def test_the_toy_model_has_the_parameter(toy_train_prepared: Path) -> None:
    model = trainer_mod.build_model(cfg_for(toy_train_prepared), 4, 3)
    names = [n for n, _ in model.named_parameters()]
    assert BAD in names and names.index(BAD) > 0  # not the first: the name is the bad one's


# BatchNorm (whose running statistics the skipped step's forward must not keep), dropout and
# random crops and flips (RNG that the skipped step still draws).
BN_MODEL = ['model.name="c2d_r18"', "model.args={widths=[8, 8, 8, 8], stem_width=8, dropout=0.5}",
            "data.short_side=[32, 40]", "data.crop=28", "data.test_short_side=32",
            'data.flip="on"']
BN_BAD = "res3.0.conv2.weight"


def test_a_nan_gradient_skips_the_step_and_the_run_resumes_exactly(
        tmp_path: Path, toy_train_prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = cfg_for(toy_train_prepared, *BN_MODEL)
    bad_step = 3
    # The whole run with the bad step: it finishes, finite, and says so.
    with nan_gradient(monkeypatch, {bad_step}, param=BN_BAD):
        summary = run(cfg, tmp_path / "full")
    assert summary["finished"] and summary["skipped_steps"] == 1
    full = load_checkpoint(tmp_path / "full" / "last.pt")
    assert all_finite(full) and full["nonfinite"] == {"skipped": 1, "streak": 0, "first": []}
    train_recs = [r for r in records(tmp_path / "full") if r["split"] == "train"]
    assert [r["skipped_steps"] for r in train_recs] == [int(r["step"] == bad_step)
                                                        for r in train_recs]
    assert all(math.isfinite(r["loss"]) for r in train_recs)

    # The bad step changed nothing a checkpoint holds but the position: the state after it
    # is the state after the step before it (weights, BN statistics, optimiser), bit for bit.
    with nan_gradient(monkeypatch, {bad_step}, param=BN_BAD):
        run(cfg, tmp_path / "cut", stop_after_steps=bad_step)
    run(cfg, tmp_path / "before", stop_after_steps=bad_step - 1)
    cut = load_checkpoint(tmp_path / "cut" / "last.pt")
    before = load_checkpoint(tmp_path / "before" / "last.pt")
    assert cut["position"]["global_step"] == bad_step
    assert any(k.endswith("running_mean") for k in cut["model"])
    assert int(cut["model"]["stem.1.num_batches_tracked"]) == bad_step - 1
    assert equal_tree(cut["model"], before["model"])
    assert equal_tree(cut["optimizer"]["state"], before["optimizer"]["state"])
    # ... and the clean run's step 3 does change them
    clean = run(cfg, tmp_path / "clean", stop_after_steps=bad_step)
    assert not equal_tree(load_checkpoint(tmp_path / "clean" / "last.pt")["model"],
                          before["model"])
    assert clean["skipped_steps"] == 0

    # Resumed after the skipped step: the same run, bit for bit, records included.
    with nan_gradient(monkeypatch, {bad_step}, done=bad_step, param=BN_BAD):
        run(cfg, tmp_path / "cut", resume=True)
    resumed = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert equal_tree(resumed["model"], full["model"])
    assert equal_tree(resumed["optimizer"], full["optimizer"])
    assert resumed["nonfinite"] == full["nonfinite"]
    assert records(tmp_path / "cut") == records(tmp_path / "full")


def test_nonfinite_steps_in_a_row_stop_the_run_naming_the_parameter(
        tmp_path: Path, toy_train_prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three in a row (the default) in epoch 2, through the CLI: one error line naming the
    parameter and the first bad step, exit code 2; last.pt is the end of epoch 1 and finite;
    the two skipped steps before the stop are recorded."""
    cfg = cfg_for(toy_train_prepared)
    assert cfg["train"]["max_nonfinite_steps"] == 3
    config = tmp_path / "cfg.toml"
    config.write_text(to_toml(cfg))
    out = tmp_path / "run"
    with nan_gradient(monkeypatch, {8, 9, 10, 11}):
        r = CliRunner().invoke(cli, ["train", str(config), "--out", str(out), "--device",
                                     "cpu", "--no-progress"], prog_name="vcorr")
    assert r.exit_code == 2, r.output
    error = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1, r.output
    assert ("gradient not finite for 3 steps in a row" in error[0] and "from step 8" in error[0]
            and f"parameter {BAD};" in error[0] and "last checkpoint is the last good one"
            in error[0]), error[0]
    assert "Traceback" not in r.output
    # one warning at the start of the streak
    assert sum("step skipped" in line for line in r.output.splitlines()) == 1
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["position"]["global_step"] == STEPS and all_finite(ckpt)
    recs = [r for r in records(out) if r["split"] == "train"]
    assert [(r["step"], r["skipped_steps"]) for r in recs[-3:]] == [(7, 0), (8, 1), (9, 1)]


def test_the_streak_survives_a_resume(tmp_path: Path, toy_train_prepared: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Steps 5 and 6 bad with max_nonfinite_steps = 2, the run stopped after step 5: the
    resumed run stops at step 6, naming step 5 and the parameter, as the whole run does."""
    cfg = cfg_for(toy_train_prepared, "train.max_nonfinite_steps=2")
    with nan_gradient(monkeypatch, {5, 6}):
        with pytest.raises(NonFiniteGradient) as whole:
            run(cfg, tmp_path / "whole")
    with nan_gradient(monkeypatch, {5, 6}):
        run(cfg, tmp_path / "part", stop_after_steps=5)
    part = load_checkpoint(tmp_path / "part" / "last.pt")
    assert part["nonfinite"] == {"skipped": 1, "streak": 1, "first": [5, BAD]}
    with nan_gradient(monkeypatch, {5, 6}, done=5):
        with pytest.raises(NonFiniteGradient) as resumed:
            run(cfg, tmp_path / "part", resume=True)
    assert isinstance(resumed.value, UserError)
    assert str(resumed.value) == str(whole.value)
    assert "2 steps in a row" in str(whole.value) and "from step 5" in str(whole.value)


def test_zero_never_stops_and_one_stops_at_once(tmp_path: Path, toy_train_prepared: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = cfg_for(toy_train_prepared, "train.max_nonfinite_steps=0", "optim.epochs=1")
    with nan_gradient(monkeypatch, {2, 3, 4, 5}):
        summary = run(cfg, tmp_path / "never")
    assert summary["finished"] and summary["skipped_steps"] == 4
    assert all_finite(load_checkpoint(tmp_path / "never" / "last.pt"))
    cfg = cfg_for(toy_train_prepared, "train.max_nonfinite_steps=1", "optim.epochs=1")
    with nan_gradient(monkeypatch, {2}):
        with pytest.raises(NonFiniteGradient, match="for 1 steps in a row.*from step 2"):
            run(cfg, tmp_path / "once")
    recs = records(tmp_path / "once")
    assert [r["step"] for r in recs] == [1] and recs[0]["skipped_steps"] == 0
    with pytest.raises(UserError, match="max_nonfinite_steps must be 0"):
        cfg_for(toy_train_prepared, "train.max_nonfinite_steps=-1")


# ============================================================================ checkpoints

def test_a_checkpoint_with_nan_is_refused_and_the_last_good_one_kept(
        tmp_path: Path, toy_train_prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A NaN weight after the last step of epoch 2 (as a bad update would leave it): the
    end-of-epoch last.pt is not written, the error names the tensor, last.pt stays epoch 1's."""
    cfg = cfg_for(toy_train_prepared, "train.val_every=0")
    holder: dict = {}
    real_build = trainer_mod.build_model

    def build(*args, **kw):
        holder["model"] = real_build(*args, **kw)
        return holder["model"]

    count = {"n": 0}

    def hook(point: str) -> None:
        if point == "optimizer":
            count["n"] += 1
            if count["n"] == 2 * STEPS:
                with torch.no_grad():
                    dict(holder["model"].named_parameters())[BAD].view(-1)[0] = float("inf")

    out = tmp_path / "run"
    monkeypatch.setattr(trainer_mod, "build_model", build)
    interrupts.set_fault_hook(hook)
    try:
        with pytest.raises(NonFiniteCheckpoint) as exc:
            run(cfg, out)
    finally:
        interrupts.set_fault_hook(None)
    assert isinstance(exc.value, UserError)
    msg = str(exc.value)
    assert f"{out / 'last.pt'}: not written, model.{BAD} holds NaN/inf" in msg
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt["position"]["global_step"] == STEPS and all_finite(ckpt)
    assert not list(out.glob(".*.tmp"))


def test_first_nonfinite_tensor_names_nested_state() -> None:
    good = {"model": {"w": torch.ones(3), "n": torch.tensor(5)},
            "optimizer": {"state": {0: {"momentum_buffer": torch.zeros(2)}}, "param_groups": []}}
    assert _first_nonfinite_tensor(good) is None
    good["optimizer"]["state"][0]["momentum_buffer"][1] = float("nan")
    assert _first_nonfinite_tensor(good) == "optimizer.state.0.momentum_buffer"
    good["model"]["w"][0] = -float("inf")
    assert _first_nonfinite_tensor(good) == "model.w"
    assert _first_nonfinite_tensor({"rng": torch.zeros(4, dtype=torch.uint8)}) is None
