"""Training (issue 5): configs and overrides, the loop end to end (function and CLI), exact
resume, progressive phases with frozen BN, 2-process DDP on CPU (gloo), the non-finite-loss
stop, safe checkpoint loading, torchvision ResNet inflation, and the learning-rate schedule.

Every run is tiny: the toy moving-square dataset (24 train / 8 val clips of 3 frames at
32x32, fixture ``toy_train_prepared``), models of width 8, batch 4, 1-2 epochs, data loading
in the main process unless a test is about workers, one torch thread (two busy cores shared
with other jobs make intra-op threading 10x slower, not faster).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from vcorr import models
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.train import (DEFAULTS, EpochSampler, NonFiniteLoss, apply_set, load_checkpoint,
                                   load_config, load_weights, lr_at, phases, save_checkpoint, to_toml,
                                   train)
from vcorr.pipelines.train import trainer as trainer_mod
from vcorr.pipelines.train.checkpoint import FORMAT
from vcorr.pipelines.train.distributed import DistEnv

REPO = Path(__file__).resolve().parents[1]
TOY_C2D = REPO / "examples" / "configs" / "toy_c2d.toml"
TRAIN_VIDEOS, VAL_VIDEOS = 24, 8
STEPS = TRAIN_VIDEOS // 4  # optimiser steps per epoch at batch 4
TIMING_KEYS = ("clips_per_s", "data_wait", "peak_mem_mib", "seconds")  # measured, not computed

# A model with dropout (the global RNG), random scale + crop and flips (the per-item RNG):
# c2d_r18 at width 8 on 28 px crops of 32-40 px rescaled frames.
RNG_HEAVY = ['model.name="c2d_r18"',
             "model.args={widths=[8, 8, 8, 8], stem_width=8, dropout=0.5}",
             "data.short_side=[32, 40]", "data.crop=28", "data.test_short_side=32",
             'data.flip="on"', "data.color_jitter=0.2", "data.normalize=true"]


def toy_cfg(root: Path, *sets: str) -> dict:
    """The example toy C2D config made tiny: width 8, batch 4, 2 epochs, no warmup, no loader
    workers (tests that need a warmup set it themselves)."""
    base = [f"data.root={json.dumps(str(root))}", "data.workers=0", "optim.batch_size=4",
            "optim.epochs=2", "optim.warmup_epochs=0", "train.log_every=1",
            "model.args={width=8}"]
    return load_config(TOY_C2D, base + list(sets))


def run(cfg: dict, out: Path, **kw) -> dict:
    return train(cfg, out, progress=False, device="cpu", **kw)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in recs]


def state_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor],
                      tol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for key in a:
        diff = (a[key].double() - b[key].double()).abs().max().item() if a[key].numel() else 0.0
        assert diff <= tol, f"{key} differs by {diff}"


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].numel())


# ============================================================================ config

def test_defaults_load_and_every_example_config_is_valid() -> None:
    cfg = load_config()
    assert cfg == DEFAULTS and cfg is not DEFAULTS
    cfg["data"]["frames"] = 99  # a deep copy: the defaults stay untouched
    assert DEFAULTS["data"]["frames"] == 8
    examples = sorted((REPO / "examples" / "configs").glob("*.toml"))
    assert examples
    for path in examples:
        cfg = load_config(path)
        models.get_model_entry(cfg["model"]["name"])  # a registered model


def test_unknown_key_in_file_names_the_file_and_lists_valid_keys(tmp_path: Path) -> None:
    nested = tmp_path / "nested.toml"
    nested.write_text("[optim]\nlrr = 0.1\n")
    with pytest.raises(UserError) as exc:
        load_config(nested)
    msg = str(exc.value)
    assert str(nested) in msg and "optim.lrr" in msg
    valid = msg.split("valid keys")[1]
    for key in DEFAULTS["optim"]:
        assert key in valid

    top = tmp_path / "top.toml"
    top.write_text("[trian]\nlog_every = 5\n")
    with pytest.raises(UserError) as exc:
        load_config(top)
    msg = str(exc.value)
    assert str(top) in msg and "'trian'" in msg
    assert all(key in msg.split("valid keys")[1] for key in DEFAULTS)

    table = tmp_path / "table.toml"
    table.write_text('model = "c2d_r18"\n')
    with pytest.raises(UserError, match="must be a table") as exc:
        load_config(table)
    assert str(table) in str(exc.value)

    bad = tmp_path / "bad.toml"
    bad.write_text("[optim\nlr = 0.1\n")
    with pytest.raises(UserError, match="not valid TOML") as exc:
        load_config(bad)
    assert str(bad) in str(exc.value)
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_unknown_set_key_lists_valid_keys() -> None:
    with pytest.raises(UserError) as exc:
        load_config(None, ["optim.lrr=0.1"])
    msg = str(exc.value)
    assert "optim.lrr" in msg and "valid keys" in msg
    assert all(key in msg.split("valid keys")[1] for key in DEFAULTS["optim"])
    with pytest.raises(UserError) as exc:
        load_config(None, ["optm.lr=0.1"])
    assert "'optm'" in str(exc.value) and "optim" in str(exc.value).split("valid keys")[1]
    with pytest.raises(UserError, match="expected key=value"):
        load_config(None, ["optim.lr"])
    with pytest.raises(UserError, match="no list item"):
        load_config(None, ["phases=[{frames=2, epochs=1}]", "phases.3.frames=4"])


@pytest.mark.parametrize("assignment, match", [
    ('optim.schedule="foo"', r"optim\.schedule must be one of cosine, step, constant, got 'foo'"),
    ("data.flip=maybe", r"data\.flip must be one of off, on, swap"),
    ('precision.amp="fp8"', r"precision\.amp must be one of"),
    ("optim.lr=fast", r"optim\.lr must be float, got 'fast'"),
    ("optim.epochs=2.5", r"optim\.epochs must be int, got 2\.5"),
    ("data.frames=true", r"data\.frames must be int, got True"),
    ("optim.nesterov=1", r"optim\.nesterov must be bool, got 1"),
    ("data.flip=true", r"data\.flip must be str, got True"),
    ("optim.milestones=3", r"optim\.milestones must be list"),
    ("data=1", r"data must be a table"),
    ("model.args=5", r"model\.args must be a table"),
    ("optim.lr=0", r"optim\.lr must be positive"),
    ("optim.batch_size=6", r"multiple of optim\.accumulate"),  # with accumulate=4 below
    ("data.frames=0", r"data\.frames"),
])
def test_bad_types_choices_and_values_are_clear_errors(assignment: str, match: str) -> None:
    sets = [assignment] + (["optim.accumulate=4"] if "batch_size" in assignment else [])
    with pytest.raises(UserError, match=match):
        load_config(None, sets)


def test_set_values_parse_as_toml() -> None:
    cfg = load_config(None, [
        "data.frames=16", "optim.lr=1e-3", "optim.weight_decay=0", "optim.nesterov=true",
        "data.short_side=[100, 120]", 'model.name="c3d_r18"', "data.flip=on",
        "data.root=/data/my videos/k400", " optim.momentum = 0.5 ",
        "model.args={dropout=0.2, widths=[8, 8, 8, 8]}", "model.args.stem_width=8",
        "optim.milestones=[3, 6]"])
    assert cfg["data"]["frames"] == 16 and type(cfg["data"]["frames"]) is int
    assert cfg["optim"]["lr"] == 0.001 and type(cfg["optim"]["lr"]) is float
    assert cfg["optim"]["weight_decay"] == 0
    assert cfg["optim"]["nesterov"] is True
    assert cfg["data"]["short_side"] == [100, 120]
    assert cfg["model"]["name"] == "c3d_r18"
    assert cfg["data"]["flip"] == "on"                     # not TOML: kept as a string
    assert cfg["data"]["root"] == "/data/my videos/k400"
    assert cfg["optim"]["momentum"] == 0.5
    assert cfg["model"]["args"] == {"dropout": 0.2, "widths": [8, 8, 8, 8], "stem_width": 8}
    assert cfg["optim"]["milestones"] == [3, 6]
    # apply_set alone works in place
    raw = load_config()
    apply_set(raw, "train.sync_bn=true")
    assert raw["train"]["sync_bn"] is True


def test_phases_validation_and_defaults() -> None:
    cfg = load_config(None, ["optim.lr=0.1", "optim.batch_size=16",
                             "data.interval=3",
                             "phases=[{frames=8, epochs=2}, {frames=16, epochs=1, "
                             "freeze_bn=true, lr=1, batch_size=8, interval=1}]",
                             "phases.0.frames=4"])
    plan = phases(cfg)
    assert plan == [
        {"frames": 4, "epochs": 2, "freeze_bn": False, "lr": 0.1, "batch_size": 16, "interval": 3},
        {"frames": 16, "epochs": 1, "freeze_bn": True, "lr": 1.0, "batch_size": 8, "interval": 1}]
    assert type(cfg["phases"][1]["lr"]) is float  # an int lr is read as a float
    # No phases: one phase of data.frames x optim.epochs
    assert phases(load_config(None, ["data.frames=12", "optim.epochs=3"])) == [
        {"frames": 12, "epochs": 3, "freeze_bn": False, "lr": DEFAULTS["optim"]["lr"],
         "batch_size": DEFAULTS["optim"]["batch_size"], "interval": 1}]

    bad = {
        "phases=5": "phases must be a list",
        "phases=[3]": r"phases\[0\] must be a table",
        "phases=[{frames=8}]": r"phases\[0\] needs 'epochs'",
        "phases=[{epochs=8}]": r"phases\[0\] needs 'frames'",
        'phases=[{frames="8", epochs=1}]': r"phases\[0\]\.frames must be int",
        "phases=[{frames=true, epochs=1}]": r"phases\[0\]\.frames must be int",
        "phases=[{frames=8, epochs=1, freeze_bn=1}]": r"freeze_bn must be bool",
        "phases=[{frames=8, epochs=1}, {frames=0, epochs=1}]": r"phases\[1\]\.frames must be positive",
        "phases=[{frames=8, epochs=0}]": r"phases\[0\]\.epochs must be positive",
        "phases=[{frames=8, epochs=1, lr=-0.1}]": r"phases\[0\]\.lr must be positive",
        "phases=[{frames=8, epochs=1, interval=0}]": r"phases\[0\]\.interval must be positive",
        "phases=[{frames=8, epochs=1, interval=1.5}]": r"phases\[0\]\.interval must be int",
    }
    for assignment, match in bad.items():
        with pytest.raises(UserError, match=match):
            load_config(None, [assignment])
    with pytest.raises(UserError) as exc:
        load_config(None, ["phases=[{frames=8, epochs=1, frame=4}]"])
    msg = str(exc.value)
    assert "phases[0].frame" in msg and all(k in msg for k in
                                             ("batch_size", "epochs", "freeze_bn", "frames", "lr"))


def test_phases_from_file(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[[phases]]\nframes = 8\nepochs = 1\n\n[[phases]]\nframes = 16\nepochs = 2\n"
                    "freeze_bn = true\n")
    cfg = load_config(path)
    assert [p["frames"] for p in phases(cfg)] == [8, 16]
    assert [p["freeze_bn"] for p in phases(cfg)] == [False, True]
    path.write_text("[[phases]]\nframes = 8\nepochs = 1\nbogus = 2\n")
    with pytest.raises(UserError, match="phases\\[0\\].bogus") as exc:
        load_config(path)
    assert str(path) in str(exc.value)


def test_to_toml_round_trips(tmp_path: Path) -> None:
    cfg = load_config(TOY_C2D, [
        'data.root="/data/ünï cödé/😀 \\"quoted\\" back\\\\slash\\ttab"',
        "data.short_side=[32, 40]", "optim.weight_decay=1e-05", "optim.lr=3e+30",
        "optim.milestones=[2, 4]", "optim.nesterov=true", "seed=-3",
        "model.args={widths=[8, 8, 8, 8], dropout=0.25, name=\"x\", nested={a=[1, 2], b=\"c\"}}",
        "phases=[{frames=2, epochs=1}, {frames=4, epochs=3, freeze_bn=true, lr=0.5, "
        "batch_size=8}]"])
    assert "😀" in cfg["data"]["root"] and '"' in cfg["data"]["root"] and "\t" in cfg["data"]["root"]
    text = to_toml(cfg)
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    again = load_config(path)
    assert again == cfg
    assert to_toml(again) == text
    # the defaults too (empty model.args and phases)
    path.write_text(to_toml(load_config()), encoding="utf-8")
    assert load_config(path) == DEFAULTS


# ============================================================================ schedule

def test_lr_schedule() -> None:
    phase = {"frames": 8, "epochs": 10, "freeze_bn": False, "lr": 0.4, "batch_size": 8}
    cos = load_config(None, ["optim.schedule=cosine"])
    assert lr_at(cos, phase, 0) == pytest.approx(0.4)
    assert lr_at(cos, phase, 5) == pytest.approx(0.2)
    assert lr_at(cos, phase, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(cos, phase, 12) == pytest.approx(0.0, abs=1e-12)  # clamped past the end
    values = [lr_at(cos, phase, e / 4) for e in range(41)]
    assert all(a > b for a, b in zip(values, values[1:]))       # strictly decreasing
    assert lr_at(cos, dict(phase, lr=1.0, epochs=2), 1) == pytest.approx(0.5)  # per phase

    warm = load_config(None, ["optim.schedule=constant", "optim.warmup_epochs=2"])
    assert lr_at(warm, phase, 0) == 0.0
    assert lr_at(warm, phase, 0.5) == pytest.approx(0.1)
    assert lr_at(warm, phase, 1) == pytest.approx(0.2)
    assert lr_at(warm, phase, 1.5) == pytest.approx(0.3)
    assert lr_at(warm, phase, 2) == pytest.approx(0.4)
    assert lr_at(warm, phase, 7) == pytest.approx(0.4)
    warm_cos = load_config(None, ["optim.warmup_epochs=1"])
    assert lr_at(warm_cos, phase, 0.5) == pytest.approx(
        0.5 * 0.4 * 0.5 * (1 + math.cos(math.pi * 0.05)))

    step = load_config(None, ["optim.schedule=step", "optim.milestones=[3, 6]", "optim.gamma=0.5"])
    assert lr_at(step, phase, 0) == pytest.approx(0.4)
    assert lr_at(step, phase, 2.99) == pytest.approx(0.4)
    assert lr_at(step, phase, 3) == pytest.approx(0.2)
    assert lr_at(step, phase, 5.5) == pytest.approx(0.2)
    assert lr_at(step, phase, 6) == pytest.approx(0.1)
    assert lr_at(step, phase, 9.9) == pytest.approx(0.1)


# ============================================================================ sampler

def test_epoch_sampler_covers_every_sample_once_per_epoch() -> None:
    n, world = 24, 2
    shares = [list(EpochSampler(n, seed=1, epoch=3, rank=r, world_size=world))
              for r in range(world)]
    assert [len(s) for s in shares] == [12, 12]
    assert [len(EpochSampler(n, seed=1, epoch=3, rank=r, world_size=world))
            for r in range(world)] == [12, 12]
    assert sorted(shares[0] + shares[1]) == list(range(n))
    # depends only on (seed, epoch): the same again, another epoch reshuffles
    assert shares[0] == list(EpochSampler(n, seed=1, epoch=3, rank=0, world_size=world))
    assert shares[0] != list(EpochSampler(n, seed=1, epoch=4, rank=0, world_size=world))
    assert shares[0] != list(EpochSampler(n, seed=2, epoch=3, rank=0, world_size=world))
    # a single process sees the whole permutation, which the ranks split round-robin
    whole = list(EpochSampler(n, seed=1, epoch=3))
    assert sorted(whole) == list(range(n))
    assert whole[0::2] == shares[0] and whole[1::2] == shares[1]
    # skip resumes this rank's share
    assert list(EpochSampler(n, seed=1, epoch=3, rank=1, world_size=world, skip=5)) == shares[1][5:]
    assert len(EpochSampler(n, seed=1, epoch=3, rank=1, world_size=world, skip=5)) == 7
    assert list(EpochSampler(n, seed=1, epoch=3, rank=1, world_size=world, skip=12)) == []


@pytest.mark.parametrize("n, world", [(25, 2), (10, 4), (3, 4)])
def test_epoch_sampler_pads_by_wrapping_when_not_divisible(n: int, world: int) -> None:
    shares = [list(EpochSampler(n, seed=0, epoch=0, rank=r, world_size=world))
              for r in range(world)]
    per_rank = -(-n // world)
    assert [len(s) for s in shares] == [per_rank] * world  # every rank runs as many steps
    assert [len(EpochSampler(n, seed=0, epoch=0, rank=r, world_size=world))
            for r in range(world)] == [per_rank] * world
    flat = [i for share in shares for i in share]
    assert set(flat) == set(range(n))                       # nothing is left out
    counts = np.bincount(flat, minlength=n)
    pad = per_rank * world - n
    order = list(EpochSampler(n, seed=0, epoch=0))         # the unpadded permutation
    # the padding repeats the start of the permutation, each padded sample once more
    assert sorted(i for i in range(n) if counts[i] == 2) == sorted(order[:pad])
    assert counts.sum() == n + pad and counts.max() <= 2


# ============================================================================ end to end

def test_train_end_to_end_writes_the_run_dir(tmp_path: Path, toy_train_prepared: Path) -> None:
    cfg = toy_cfg(toy_train_prepared, "optim.warmup_epochs=0.5")
    out = tmp_path / "run"
    summary = run(cfg, out)
    assert {p.name for p in out.iterdir()} >= {"config.toml", "metrics.jsonl", "last.pt",
                                                "best.pt", "summary.json"}
    assert not list(out.glob(".*tmp"))  # atomic writes leave nothing behind
    assert load_config(out / "config.toml") == cfg

    recs = records(out)
    train_recs = [r for r in recs if r["split"] == "train"]
    val_recs = [r for r in recs if r["split"] == "val"]
    assert {r["split"] for r in recs} == {"train", "val"}
    for r in recs:
        assert {"epoch", "step", "split", "loss", "top1", "lr"} <= r.keys()
        assert math.isfinite(r["loss"]) and 0 <= r["top1"] <= 1
    assert [r["step"] for r in train_recs] == list(range(1, 2 * STEPS + 1))  # log_every=1
    assert [r["epoch"] for r in val_recs] == [1, 2]
    assert [r["step"] for r in val_recs] == [STEPS, 2 * STEPS]
    assert all(r["count"] == VAL_VIDEOS for r in val_recs)
    assert all(r["frames"] == 3 for r in train_recs)
    # the lr logged is the schedule's: warmup then cosine over the phase
    plan = phases(cfg)
    for r in train_recs:
        s = r["step"] - 1
        assert r["lr"] == pytest.approx(lr_at(cfg, plan[0], s / STEPS), abs=1e-12)
    assert train_recs[0]["lr"] == 0.0 and train_recs[3]["lr"] == pytest.approx(
        cfg["optim"]["lr"] * 0.5 * (1 + math.cos(math.pi * 0.25)))

    saved = json.loads((out / "summary.json").read_text())
    assert saved["finished"] is True
    assert saved["position"] == {"phase": 1, "epoch": 0, "step_in_epoch": 0,
                                 "global_step": 2 * STEPS}
    assert saved["last_val"]["top1"] == val_recs[-1]["top1"]
    assert saved["best_val_top1"] == max(r["top1"] for r in val_recs)
    assert "model_object" not in saved and isinstance(summary["model_object"], nn.Module)

    last = load_checkpoint(out / "last.pt")
    best = load_checkpoint(out / "best.pt")
    assert last["format"] == FORMAT and last["config"] == cfg
    # written after the last epoch, before the phase counter moves on: the same place
    assert last["position"] == {"phase": 0, "epoch": 2, "step_in_epoch": 0,
                                "global_step": 2 * STEPS}
    assert last["classes"] == ["up", "down", "left", "right"]
    assert_same_state(last["model"], state_of(summary["model_object"]), 0.0)
    assert best["best_top1"] == saved["best_val_top1"]
    assert best["position"]["global_step"] in (STEPS, 2 * STEPS)

    # resume refuses another config and a folder without a run
    with pytest.raises(UserError, match="another config") as exc:
        run(toy_cfg(toy_train_prepared, "optim.warmup_epochs=0.5", "optim.lr=0.1"), out,
            resume=True)
    assert "optim.lr" in str(exc.value)
    with pytest.raises(UserError, match="checkpoint not found"):
        run(cfg, tmp_path / "empty", resume=True)
    # resuming a finished run changes nothing
    again = run(cfg, out, resume=True)
    assert again["finished"] and again["position"] == saved["position"]
    assert_same_state(state_of(again["model_object"]), last["model"], 0.0)


def test_train_needs_a_prepared_dataset(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="^no training data: give --data"):  # not "." (issue 25)
        run(load_config(TOY_C2D, ["data.workers=0"]), tmp_path / "run")  # data.root empty
    with pytest.raises(UserError, match="not a prepared dataset"):
        run(load_config(TOY_C2D, [f"data.root={json.dumps(str(tmp_path))}"]), tmp_path / "run")


def test_cli_train_end_to_end(tmp_path: Path, toy_train_prepared: Path) -> None:
    from vcorr.cli.main import cli

    config = tmp_path / "tiny.toml"
    config.write_text(TOY_C2D.read_text() + "\n")  # the example as a user would copy it
    out = tmp_path / "runs" / "tiny"
    args = ["train", str(config), "--data", str(toy_train_prepared), "--out", str(out),
            "--no-progress", "--device", "cpu", "--set", "data.workers=0",
            "--set", "optim.batch_size=8", "--set", "optim.epochs=1",
            "--set", "model.args={width=8}"]
    result = CliRunner().invoke(cli, args, prog_name="vcorr")
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert f"done: {out}" in result.output and "epoch 1:" in result.output
    for name in ("config.toml", "metrics.jsonl", "last.pt", "best.pt", "summary.json"):
        assert (out / name).is_file(), name
    cfg = load_config(out / "config.toml")
    assert cfg["data"]["root"] == str(toy_train_prepared) and cfg["optim"]["batch_size"] == 8
    assert cfg["model"]["args"] == {"width": 8}
    recs = records(out)
    # log_every = 10 (the example's) with 3 steps: the epoch's last step is logged anyway
    assert [(r["split"], r["step"]) for r in recs] == [("train", 3), ("val", 3)]
    assert json.loads((out / "summary.json").read_text())["finished"] is True

    # --resume with only --out reads the run's own config.toml (must round-trip exactly)
    result = CliRunner().invoke(cli, ["train", "--out", str(out), "--resume", "--no-progress",
                                      "--device", "cpu"], prog_name="vcorr")
    assert result.exit_code == 0, result.output + repr(result.exception)
    # a bad --set: exit 2, one error line that lists the valid keys, no traceback
    result = CliRunner().invoke(cli, args + ["--set", "optim.lrr=1"], prog_name="vcorr")
    assert result.exit_code == 2
    assert "error:" in result.output and "valid keys" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "nothing"), "--resume"],
                                prog_name="vcorr")
    assert result.exit_code == 2 and "error:" in result.output


# ============================================================================ resume

@pytest.mark.parametrize("workers, optimizer, stop", [(0, "sgd", 3), (2, "adamw", STEPS + 2)])
def test_resume_repeats_the_uninterrupted_run(tmp_path: Path, toy_train_prepared: Path,
                                              workers: int, optimizer: str, stop: int) -> None:
    cfg = toy_cfg(toy_train_prepared, *RNG_HEAVY, f"data.workers={workers}",
                  f'optim.optimizer="{optimizer}"', "optim.lr=0.05", "optim.nesterov=true",
                  "optim.warmup_epochs=0.5")
    full = run(cfg, tmp_path / "full")
    model = full["model_object"]
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in model.modules())
    want = state_of(model)

    part = run(cfg, tmp_path / "part", stop_after_steps=stop)
    assert part["finished"] is False
    ckpt = load_checkpoint(tmp_path / "part" / "last.pt")
    assert ckpt["position"] == {"phase": 0, "epoch": stop // STEPS,
                                "step_in_epoch": stop % STEPS, "global_step": stop}
    assert max_diff(state_of(part["model_object"]), want) > 1e-3  # really stopped early
    resumed = run(cfg, tmp_path / "part", resume=True)
    assert resumed["finished"] is True
    assert_same_state(state_of(resumed["model_object"]), want)
    # metrics.jsonl reads as if nothing had happened (the stopped run's records are kept)
    assert without_timing(records(tmp_path / "part")) == without_timing(records(tmp_path / "full"))


def test_resume_needs_the_saved_rng_state(tmp_path: Path, toy_train_prepared: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Control for the test above: dropout draws from the global RNG, so a resume that did not
    restore it would train differently (the equivalence there is not vacuous)."""
    cfg = toy_cfg(toy_train_prepared, *RNG_HEAVY, "optim.epochs=1")
    want = state_of(run(cfg, tmp_path / "full")["model_object"])
    run(cfg, tmp_path / "part", stop_after_steps=2)
    monkeypatch.setattr(trainer_mod, "_set_rng_state", lambda state, device: None)
    got = state_of(run(cfg, tmp_path / "part", resume=True)["model_object"])
    assert max_diff(got, want) > 1e-4


def test_resume_at_epoch_boundaries(tmp_path: Path, toy_train_prepared: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = toy_cfg(toy_train_prepared, *RNG_HEAVY)
    snaps = tmp_path / "snaps"
    snaps.mkdir()
    real_save = trainer_mod.save_checkpoint

    def save_and_keep(path, state):  # keep every last.pt the run writes
        real_save(path, state)
        if Path(path).name == "last.pt":
            p = state["position"]
            shutil.copy(path, snaps / f"{p['global_step']}_{p['epoch']}_{p['step_in_epoch']}.pt")

    monkeypatch.setattr(trainer_mod, "save_checkpoint", save_and_keep)
    full = run(cfg, tmp_path / "full")
    monkeypatch.undo()
    want = state_of(full["model_object"])
    # the checkpoint written after epoch 1 (validated, position at the start of epoch 2)
    boundary = snaps / f"{STEPS}_1_0.pt"
    assert sorted(p.name for p in snaps.iterdir()) == [f"{2 * STEPS}_2_0.pt", boundary.name]
    # as if the run had died later: its metrics.jsonl goes on past the checkpoint
    (tmp_path / "from_boundary").mkdir()
    shutil.copy(boundary, tmp_path / "from_boundary" / "last.pt")
    shutil.copy(tmp_path / "full" / "metrics.jsonl", tmp_path / "from_boundary")
    resumed = run(cfg, tmp_path / "from_boundary", resume=True)
    assert resumed["finished"]
    assert_same_state(state_of(resumed["model_object"]), want)
    # the records after the checkpoint were dropped and written again, none twice
    assert without_timing(records(tmp_path / "from_boundary")) == without_timing(
        records(tmp_path / "full"))

    # stopped after the last step of epoch 1, before its validation: the resumed run
    # validates epoch 1, then trains epoch 2
    assert run(cfg, tmp_path / "part", stop_after_steps=STEPS)["finished"] is False
    assert load_checkpoint(tmp_path / "part" / "last.pt")["position"] == {
        "phase": 0, "epoch": 0, "step_in_epoch": STEPS, "global_step": STEPS}
    assert not (tmp_path / "part" / "best.pt").exists()
    resumed = run(cfg, tmp_path / "part", resume=True)
    assert_same_state(state_of(resumed["model_object"]), want)
    assert without_timing(records(tmp_path / "part")) == without_timing(records(tmp_path / "full"))
    assert (tmp_path / "part" / "best.pt").is_file()


# ============================================================================ phases

def test_phases_switch_clip_length_and_freeze_bn(tmp_path: Path, toy_train_prepared: Path) -> None:
    cfg = toy_cfg(toy_train_prepared, 'optim.optimizer="sgd"', "optim.lr=0.1",
                  "model.args={width=8, norm=true}",  # the toy nets have no BN by default
                  "phases=[{frames=2, epochs=1}, {frames=4, epochs=1, freeze_bn=true}]")
    out = tmp_path / "run"
    init = state_of(trainer_mod.build_model(cfg, 4, 2))  # seed 0 inside train() too
    part = run(cfg, out, stop_after_steps=STEPS)  # the end of phase 1
    after1 = state_of(part["model_object"])
    bn_keys = [k for k in after1 if "running_" in k or "num_batches_tracked" in k]
    assert len(bn_keys) == 6  # two BN layers
    for k in bn_keys:  # phase 1 trains BN statistics
        assert not torch.equal(after1[k], init[k]), k

    final = run(cfg, out, resume=True)
    assert final["finished"]
    after2 = state_of(final["model_object"])
    for k in bn_keys:  # frozen in phase 2: running mean/var and batch count unchanged
        assert torch.equal(after2[k], after1[k]), k
    changed = [k for k in after1 if k not in bn_keys and not torch.equal(after1[k], after2[k])]
    # everything else trained on, the BN affine parameters included
    assert set(changed) == {k for k in after1 if k not in bn_keys}
    assert {"stem.1.weight", "conv2.0.bn.bias"} <= set(changed)

    recs = records(out)
    train_recs = [r for r in recs if r["split"] == "train"]
    assert [r["frames"] for r in train_recs] == [2] * STEPS + [4] * STEPS
    assert [r["step"] for r in train_recs] == list(range(1, 2 * STEPS + 1))
    assert [(r["epoch"], r["step"]) for r in recs if r["split"] == "val"] == [
        (1, STEPS), (2, 2 * STEPS)]
    # each phase restarts its cosine schedule at the full lr
    assert train_recs[0]["lr"] == pytest.approx(0.1) and train_recs[STEPS]["lr"] == pytest.approx(0.1)
    assert train_recs[STEPS - 1]["lr"] < 0.01


def test_each_phase_samples_at_its_own_interval(tmp_path: Path, toy_train_prepared: Path,
                                                monkeypatch) -> None:
    """Issue 23, item 3: a phase's ``interval`` (CPNet Sec. 5.4: 12 frames over 2 s, then 24)
    reaches the training and validation samplers of that phase; evaluation uses the last
    phase's; phases without one use data.interval."""
    from vcorr.pipelines.evaluate.evaluate import clip_settings

    seen = []
    real = trainer_mod.build_dataset

    def spy(cfg, frames, *, train, interval=None):
        ds = real(cfg, frames, train=train, interval=interval)
        seen.append((train, ds.sampler.frames, ds.sampler.interval))
        return ds

    monkeypatch.setattr(trainer_mod, "build_dataset", spy)
    cfg = toy_cfg(toy_train_prepared, "data.interval=1",
                  "phases=[{frames=2, epochs=1, interval=2}, {frames=4, epochs=1}]")
    assert run(cfg, tmp_path / "run")["finished"]
    assert sorted(set(seen)) == [(False, 2, 2), (False, 4, 1), (True, 2, 2), (True, 4, 1)]
    assert clip_settings(cfg)[:2] == (4, 1)
    cfg = toy_cfg(toy_train_prepared, "data.interval=1",
                  "phases=[{frames=4, epochs=1}, {frames=2, epochs=1, interval=3}]")
    assert clip_settings(cfg)[:2] == (2, 3)


# ============================================================================ DDP

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, cfg: dict, out: str, tmp: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    summary = train(cfg, out, progress=False, device="cpu")
    model = summary.pop("model_object")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
               Path(tmp) / f"rank{rank}.pt")
    (Path(tmp) / f"rank{rank}.json").write_text(json.dumps(summary))


def test_ddp_two_processes_on_cpu(tmp_path: Path, toy_train_prepared: Path) -> None:
    import torch.multiprocessing as mp

    cfg = toy_cfg(toy_train_prepared, "optim.batch_size=8")  # 4 clips per rank and step
    out = tmp_path / "run"
    ctx = mp.start_processes(_ddp_worker, args=(_free_port(), cfg, str(out), str(tmp_path)),
                             nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.terminate()
            pytest.fail("the DDP run did not finish in 120 s")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    summaries = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    steps = 2 * (TRAIN_VIDEOS // 2 // 4)  # 2 epochs of 12 clips per rank, 4 per step
    for s in summaries:
        assert s["finished"] and s["position"]["global_step"] == steps
        assert s["last_val"]["count"] == VAL_VIDEOS  # the ranks split validation, all counted
    assert summaries[0]["last_val"] == summaries[1]["last_val"]  # summed over ranks
    params = [k for k, _ in trainer_mod.build_model(cfg, 4, 4).named_parameters()]
    for k in params:  # gradients averaged over ranks: every weight the same
        assert torch.equal(ranks[0][k], ranks[1][k]), k
    torch.manual_seed(cfg["seed"])  # what train() starts from
    init = trainer_mod.build_model(cfg, 4, 4).state_dict()
    assert all(not torch.equal(ranks[0][k], init[k]) for k in params)  # and it trained
    # rank 0 alone writes the run folder: its weights, one record per step
    last = load_checkpoint(out / "last.pt")
    for k in params:
        assert torch.equal(last["model"][k], ranks[0][k]), k
    recs = records(out)
    assert [r["step"] for r in recs if r["split"] == "train"] == list(range(1, steps + 1))
    assert [r["count"] for r in recs if r["split"] == "val"] == [VAL_VIDEOS, VAL_VIDEOS]
    if (out / "tb").is_dir():  # the tensorboard package is installed: one writer, rank 0's
        assert len(list((out / "tb").glob("events.out.tfevents.*"))) == 1


def test_sync_bn_on_cpu_is_a_clear_error(tmp_path: Path, toy_train_prepared: Path) -> None:
    cfg = toy_cfg(toy_train_prepared, "train.sync_bn=true")
    env = DistEnv(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(UserError, match="sync_bn"):  # before any collective call
        trainer_mod._train(cfg, tmp_path / "run", env, False, None, False, None)


# ============================================================================ non-finite loss

def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
        tmp_path: Path, toy_train_prepared: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = toy_cfg(toy_train_prepared)
    out = tmp_path / "run"
    real_f = trainer_mod.F
    calls = {"train": 0}
    bad_call = STEPS + 2  # the second step of epoch 2

    class NanF:  # torch.nn.functional, with a training loss that turns NaN at one call
        def __getattr__(self, name):
            return getattr(real_f, name)

        @staticmethod
        def cross_entropy(logits, target, **kw):
            loss = real_f.cross_entropy(logits, target, **kw)
            if kw.get("reduction", "mean") == "mean":  # training, not validation
                calls["train"] += 1
                if calls["train"] == bad_call:
                    return loss * float("nan")
            return loss

    monkeypatch.setattr(trainer_mod, "F", NanF())
    with pytest.raises(NonFiniteLoss) as exc:
        run(cfg, out)
    assert isinstance(exc.value, UserError)
    msg = str(exc.value)
    assert "not finite" in msg and f"step {bad_call}" in msg and "epoch 2" in msg
    assert "last checkpoint" in msg
    monkeypatch.undo()

    ckpt = load_checkpoint(out / "last.pt")  # the end of epoch 1, untouched by the NaN step
    assert ckpt["position"] == {"phase": 0, "epoch": 1, "step_in_epoch": 0, "global_step": STEPS}
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    recs = records(out)
    assert max(r["step"] for r in recs) == bad_call - 1
    assert all(math.isfinite(r["loss"]) for r in recs)
    # ... from which the run resumes and finishes as if nothing had happened
    want = state_of(run(cfg, tmp_path / "clean")["model_object"])
    resumed = run(cfg, out, resume=True)
    assert resumed["finished"]
    assert_same_state(state_of(resumed["model_object"]), want)
    assert without_timing(records(out)) == without_timing(records(tmp_path / "clean"))


def test_exploding_lr_raises_non_finite_loss(tmp_path: Path, toy_train_prepared: Path) -> None:
    cfg = toy_cfg(toy_train_prepared, 'optim.optimizer="sgd"', "optim.lr=1e30",
                  'optim.schedule="constant"', "optim.epochs=1")
    with pytest.raises(NonFiniteLoss, match="not finite.*Lower optim.lr"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists()  # nothing good to keep


# ============================================================================ checkpoints

_UNPICKLED: list[str] = []


def _record_unpickling() -> str:
    _UNPICKLED.append("ran")
    return "payload"


class Payload:
    """Unpickling this runs code (what a weights-only load must refuse)."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_checkpoint_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "model": {"w": torch.zeros(2)}, "extra": Payload()}, path)
    with pytest.raises(UserError) as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value) and "not a readable checkpoint" in str(exc.value)
    with pytest.raises(UserError) as exc:
        load_weights(nn.Linear(2, 2), path)
    assert str(path) in str(exc.value)
    sd = tmp_path / "evil_state_dict.pt"
    torch.save({"weight": torch.zeros(2, 2), "bias": Payload()}, sd)
    with pytest.raises(UserError):
        load_weights(nn.Linear(2, 2), sd)
    assert _UNPICKLED == []  # the payload never ran


def test_truncated_or_foreign_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    model = nn.Linear(64, 64)
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": model.state_dict(), "position": {"phase": 0}})
    assert [p.name for p in tmp_path.iterdir()] == ["good.pt"]  # no temporary left
    ckpt = load_checkpoint(good)
    assert ckpt["format"] == FORMAT and torch.equal(ckpt["model"]["weight"], model.weight)
    data = good.read_bytes()
    for size in (len(data) // 2, 10, 0):
        cut = tmp_path / f"cut{size}.pt"
        cut.write_bytes(data[:size])
        with pytest.raises(UserError, match="not a readable checkpoint") as exc:
            load_checkpoint(cut)
        assert str(cut) in str(exc.value)
        with pytest.raises(UserError, match="not a readable weights file"):
            load_weights(nn.Linear(64, 64), cut)
    plain = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), plain)
    with pytest.raises(UserError, match="not a vcorr training checkpoint"):
        load_checkpoint(plain)
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    # load_weights takes a checkpoint, a state dict, or {"state_dict": ...}; DDP prefixes go
    for source in (good, plain):
        target = nn.Linear(64, 64)
        report = load_weights(target, source)
        assert sorted(report.loaded) == ["bias", "weight"] and not report.missing
        assert torch.equal(target.weight, model.weight)
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, wrapped)
    target = nn.Linear(64, 64)
    load_weights(target, wrapped)
    assert torch.equal(target.bias, model.bias)
    with pytest.raises(UserError, match="no tensor matches"):
        load_weights(nn.Conv1d(3, 3, 1), plain)


def _torchvision_resnet18(tmp_path: Path) -> tuple[nn.Module, Path]:
    """A torchvision resnet18 (no download) with random BN statistics and affine parameters,
    so that every BN tensor has to land in the right place, saved as a state dict."""
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.resnet18(weights=None)
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    tv.eval()
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    return tv, path


def test_torchvision_resnet18_inflates_into_c2d(tmp_path: Path) -> None:
    tv, path = _torchvision_resnet18(tmp_path)
    model = models.create_model("c2d_r18", num_classes=1000).eval()
    report = load_weights(model, path)
    assert not report.skipped and not report.missing and not report.problems
    assert "stem.0.weight" in report.inflated and "head.fc.weight" in report.loaded
    assert "res3.0.shortcut.0.weight" in report.inflated
    assert torch.equal(model.stem[0].weight[:, :, 0], tv.conv1.weight)
    assert torch.equal(model.res5[1].bn2.running_var, tv.layer4[1].bn2.running_var)

    frame = torch.rand(1, 3, 64, 64) * 2 - 1
    clip = frame[:, :, None].repeat(1, 1, 4, 1, 1)  # four identical frames
    with torch.no_grad():
        want, got = tv(frame), model(clip)
    assert want.shape == got.shape == (1, 1000)
    assert (got - want).abs().max().item() <= 1e-4 * max(1.0, want.abs().max().item())

    # another class count: the classifier is skipped, everything else still loads
    small = models.create_model("c2d_r18", num_classes=5)
    report = load_weights(small, path)
    assert set(report.skipped) == {"head.fc.weight", "head.fc.bias"}  # renamed, wrong shape
    assert set(report.new_classifier) == {"head.fc.weight", "head.fc.bias"}  # a new head
    assert not report.missing and not report.problems


def test_torchvision_resnet18_inflates_into_c3d(tmp_path: Path) -> None:
    """Every conv of c3d_r18 is 3 x k x k (17 on the deepest path). The inflated kernel sums to
    the 2D one over time, so on a static clip a frame's features equal the 2D network's as long
    as the zero temporal padding cannot reach it: 17 frames on each side, so the centre frame of
    a 35-frame clip is exact while the border frames differ."""
    tv, path = _torchvision_resnet18(tmp_path)
    model = models.create_model("c3d_r18", num_classes=1000).eval()
    report = load_weights(model, path)
    assert not report.skipped and not report.missing
    assert model.stem[0].weight.shape == (64, 3, 3, 7, 7)
    assert torch.allclose(model.stem[0].weight, tv.conv1.weight[:, :, None].repeat(1, 1, 3, 1, 1) / 3)
    assert torch.allclose(model.res2[0].conv1.weight.sum(2), tv.layer1[0].conv1.weight, atol=1e-6)
    temporal = [m for m in model.modules() if isinstance(m, nn.Conv3d) and m.kernel_size[0] == 3]
    assert len(temporal) == 17

    T, centre = 35, 17
    frame = torch.rand(1, 3, 32, 32) * 2 - 1
    clip = frame[:, :, None].repeat(1, 1, T, 1, 1)
    with torch.no_grad():
        x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(frame))))
        want = tv.layer4(tv.layer3(tv.layer2(tv.layer1(x))))  # (1, 512, 1, 1)
        want_logits = tv.fc(want.flatten(1))
        feats = model.forward_features(clip)                  # (1, 512, 35, 1, 1)
        got_logits = model.head.fc(feats[:, :, centre].mean(dim=(2, 3)))
    assert feats.shape == (1, 512, T, 1, 1)
    scale = max(1.0, want.abs().max().item())
    assert (feats[:, :, centre] - want).abs().max().item() <= 1e-4 * scale
    assert (got_logits - want_logits).abs().max().item() <= 1e-4 * max(
        1.0, want_logits.abs().max().item())
    # the border frames see the zero padding
    for border in (0, T - 1):
        assert (feats[:, :, border] - want).abs().max().item() > 1e-2 * scale
