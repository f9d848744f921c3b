"""Runs you can trust (issue 17): the output-folder rule (never overwrite a result), exact
resume from an interrupt in any phase of a step (SIGINT, SIGTERM, kill -9), everything checked
before the first step, resume with the settings that do not change the experiment, and the
small things of the issue (progress lines off a terminal, top-5, titles, --set errors, the
models table at 80 columns, rank 0's "done:").

Every run is tiny: the toy dataset of ``toy_train_prepared`` (24 train / 8 val clips of 3
frames at 32x32), batch 4 (6 steps an epoch), 2 epochs, models of width 8, CPU, one thread.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vcorr.pipelines.errors import UserError
from vcorr.pipelines.train import interrupts, load_checkpoint, load_config, train
from vcorr.pipelines.train import preflight as pf
from vcorr.cli.main import cli

REPO = Path(__file__).resolve().parents[1]
TOY_C2D = REPO / "examples" / "configs" / "toy_c2d.toml"
STEPS = 6  # 24 training clips, batch 4
TIMING_KEYS = ("clips_per_s", "data_wait", "peak_mem_mib", "seconds")  # measured, not computed

# A model with BatchNorm and dropout (c2d_r18 at width 8: 20 BN layers, dropout 0.5), and the
# CP module (cpnet_r18 at width 8, k=2: 6 CP modules, each with BN in its MLP); random scale,
# crop and flips. log_every=4 makes train records span steps, so that they are exact only if
# the sums since the last record survive the interrupt too.
MODELS = {
    "c2d_bn_dropout": ['model.name="c2d_r18"',
                       "model.args={widths=[8, 8, 8, 8], stem_width=8, dropout=0.5}"],
    "cpnet": ['model.name="cpnet_r18"',
              "model.args={widths=[8, 8, 8, 8], stem_width=8, k=2, dropout=0.5}"],
}
AUGMENT = ["data.short_side=[32, 40]", "data.crop=28", "data.test_short_side=32",
           'data.flip="on"']


def cfg_for(root: Path, model: str = "c2d_bn_dropout", *sets: str) -> dict:
    base = [f"data.root={json.dumps(str(root))}", "data.workers=0", "optim.batch_size=4",
            "optim.epochs=2", "optim.warmup_epochs=0", "train.log_every=4",
            'optim.optimizer="sgd"', "optim.lr=0.05", "optim.nesterov=true"]
    return load_config(TOY_C2D, base + MODELS[model] + AUGMENT + list(sets))


def tiny(root: Path, *sets: str) -> dict:
    """The toy C2D config at width 8 (no BN, fast), for the tests that are not about resume."""
    base = [f"data.root={json.dumps(str(root))}", "data.workers=0", "optim.batch_size=4",
            "optim.epochs=1", "optim.warmup_epochs=0", "model.args={width=8}"]
    return load_config(TOY_C2D, base + list(sets))


def run(cfg: dict, out: Path, **kw) -> dict:
    return train(cfg, out, progress=False, device="cpu", **kw)


def records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_equal_tree(a, b, where: str = "") -> None:
    """Bit-identical nested state (tensors with torch.equal, dtypes too)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(got: Path, want: Path) -> None:
    """Model (parameters and buffers), optimiser state and metrics.jsonl of two finished runs
    are identical."""
    a, b = load_checkpoint(got / "last.pt"), load_checkpoint(want / "last.pt")
    assert_equal_tree(a["model"], b["model"], "model")
    assert_equal_tree(a["optimizer"], b["optimizer"], "optimizer")
    assert a["position"] == b["position"]
    assert records(got) == records(want)


def bn_counts_match_steps(ckpt: dict) -> None:
    """With one forward per step, a BN layer has seen exactly global_step training batches:
    the issue's symptom was 13 after 12 steps (the cut step's forward counted)."""
    counts = {k: int(v) for k, v in ckpt["model"].items() if k.endswith("num_batches_tracked")}
    assert counts and set(counts.values()) == {ckpt["position"]["global_step"]}, counts


@pytest.fixture(scope="module")
def reference(tmp_path_factory, toy_train_prepared: Path) -> dict[str, Path]:
    """One uninterrupted run per model."""
    out = tmp_path_factory.mktemp("reference")
    for name in MODELS:
        run(cfg_for(toy_train_prepared, name), out / name)
    return {name: out / name for name in MODELS}


# ============================================================================ 2: exact resume

# (point, nth, steps in last.pt): the nth time the run reaches that point, the process gets
# SIGINT. Steps 1-6 are epoch 1. A cut in data loading, forward, backward or validation stops
# at once and undoes the unfinished step; the optimiser step and checkpoint writing finish
# first ("checkpoint" 2 is last.pt at the end of epoch 1; 1 is best.pt).
CUTS = [("data", 8, 7), ("forward", 5, 4), ("backward", 3, 2), ("optimizer", 4, 4),
        ("validation", 1, STEPS), ("checkpoint", 2, STEPS)]


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("point, nth, steps_done", CUTS)
def test_interrupt_in_any_phase_resumes_bit_identically(
        tmp_path: Path, toy_train_prepared: Path, reference: dict[str, Path], model: str,
        point: str, nth: int, steps_done: int) -> None:
    cfg = cfg_for(toy_train_prepared, model)
    out = tmp_path / "run"
    interrupts.set_fault_hook(interrupts.signal_at(point, nth, signal.SIGINT))
    try:
        with pytest.raises(KeyboardInterrupt) as exc:
            run(cfg, out)
    finally:
        interrupts.set_fault_hook(None)
    assert isinstance(exc.value, interrupts.Interrupted) and exc.value.signum == signal.SIGINT
    cut = load_checkpoint(out / "last.pt")
    assert cut["position"]["global_step"] == steps_done
    bn_counts_match_steps(cut)
    assert not list(out.glob(".*.tmp"))  # no half-written checkpoint left
    resumed = run(cfg, out, resume=True)
    assert resumed["finished"]
    assert_same_run(out, reference[model])


def test_sigterm_through_the_cli_and_resume(tmp_path: Path, toy_train_prepared: Path,
                                            reference: dict[str, Path]) -> None:
    """What SLURM does: SIGTERM in the middle of a step (here during the forward pass of step
    5), exit code 143, then `vcorr train --out RUN --resume` in a new process."""
    cfg = cfg_for(toy_train_prepared)
    config = tmp_path / "cfg.toml"
    from vcorr.pipelines.train.config import to_toml
    config.write_text(to_toml(cfg))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", VCORR_FAULT="forward@5:SIGTERM")
    cmd = [sys.executable, "-m", "vcorr.cli.main", "train", str(config), "--out", str(out),
           "--device", "cpu", "--no-progress"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 128 + signal.SIGTERM, r.stderr
    assert "interrupted (SIGTERM)" in r.stderr and "--resume" in r.stderr
    assert "Traceback" not in r.stderr
    bn_counts_match_steps(load_checkpoint(out / "last.pt"))
    env.pop("VCORR_FAULT")
    r = subprocess.run([sys.executable, "-m", "vcorr.cli.main", "train", "--out", str(out),
                        "--resume", "--device", "cpu", "--no-progress"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert_same_run(out, reference["c2d_bn_dropout"])


def test_kill_9_while_writing_a_checkpoint_leaves_one_that_loads(
        tmp_path: Path, toy_train_prepared: Path) -> None:
    """SIGKILL after a checkpoint's bytes are written but before the rename: last.pt is the
    previous one and loads; the resumed run ends where an uninterrupted one does."""
    cfg = tiny(toy_train_prepared, "optim.epochs=2", "train.val_every=0")
    config = tmp_path / "cfg.toml"
    from vcorr.pipelines.train.config import to_toml
    config.write_text(to_toml(cfg))
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", VCORR_FAULT="checkpoint@2:SIGKILL")
    r = subprocess.run([sys.executable, "-m", "vcorr.cli.main", "train", str(config), "--out",
                        str(out), "--device", "cpu", "--no-progress"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert len(list(out.glob(".last.pt.*.tmp"))) == 1  # the killed write
    ckpt = load_checkpoint(out / "last.pt")  # the end of epoch 1
    assert ckpt["position"]["global_step"] == STEPS
    run(cfg, out, resume=True)
    assert not list(out.glob(".*.tmp"))  # the dead process's temporary file was removed
    run(cfg, tmp_path / "clean")
    assert_same_run(out, tmp_path / "clean")


def test_records_after_the_checkpoint_are_dropped_exactly(tmp_path: Path,
                                                          toy_train_prepared: Path) -> None:
    """A val record written just before an interrupt, and a half-written line from a killed
    process, are dropped by the resumed run (by the record count the checkpoint keeps)."""
    cfg = tiny(toy_train_prepared, "optim.epochs=2", "train.log_every=100")
    run(cfg, tmp_path / "full")
    run(cfg, tmp_path / "part", stop_after_steps=STEPS)  # before epoch 1's validation
    assert load_checkpoint(tmp_path / "part" / "last.pt")["metrics_records"] == 1
    with open(tmp_path / "part" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 1, "step": STEPS, "split": "val"}) + "\n{\"epo")
    run(cfg, tmp_path / "part", resume=True)
    assert records(tmp_path / "part") == records(tmp_path / "full")


# ============================================================================ 1: output folders

def test_train_refuses_a_folder_with_a_run(tmp_path: Path, toy_train_prepared: Path) -> None:
    cfg = tiny(toy_train_prepared)
    out = tmp_path / "run"
    run(cfg, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    for again in (cfg, tiny(toy_train_prepared, "optim.lr=0.5")):
        with pytest.raises(UserError) as exc:
            run(again, out)
        msg = str(exc.value)
        assert msg.startswith(f"{out}: holds a finished run of toy_c2d (1 epoch, best val "
                              "top-1 ") and "another --out" in msg and "--overwrite" in msg
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*")
            if p.is_file()} == before  # untouched

    part = tmp_path / "part"
    run(cfg, part, stop_after_steps=2)
    with pytest.raises(UserError) as exc:
        run(cfg, part)
    assert "a run of toy_c2d (0 of 1 epoch and 2 steps done, not validated yet)" in str(
        exc.value) and "--resume" in str(exc.value)

    crashed = tmp_path / "crashed"  # died before its first checkpoint (not by a signal)
    crashed.mkdir()
    shutil.copy(out / "config.toml", crashed)
    (crashed / "metrics.jsonl").write_text("")
    with pytest.raises(UserError) as exc:
        run(cfg, crashed)
    assert "a run of toy_c2d that saved no checkpoint (config.toml, metrics.jsonl)" in str(
        exc.value) and "--resume" not in str(exc.value)
    with pytest.raises(UserError, match="saved none, there is nothing to resume; start it "
                                        "again with --overwrite"):
        run(cfg, crashed, resume=True)


def test_cli_train_twice_exits_2_and_overwrite_moves_the_run_aside(
        tmp_path: Path, toy_train_prepared: Path) -> None:
    out = tmp_path / "runs" / "x"
    args = ["train", str(TOY_C2D), "--data", str(toy_train_prepared), "--out", str(out),
            "--device", "cpu", "--no-progress", "--set", "data.workers=0",
            "--set", "optim.batch_size=8", "--set", "optim.epochs=1",
            "--set", "model.args={width=8}"]
    assert CliRunner().invoke(cli, args, prog_name="vcorr").exit_code == 0
    (out / "eval_val_1x1").mkdir()  # an evaluation of the old weights
    (out / "eval_val_1x1" / "metrics.json").write_text("{}")
    old = (out / "last.pt").read_bytes()
    r = CliRunner().invoke(cli, args + ["--set", "optim.lr=0.02"], prog_name="vcorr")
    assert r.exit_code == 2
    assert r.output.count("\n") == 1 and r.output.startswith(f"error: {out}: holds a finished "
                                                             "run of toy_c2d")
    assert (out / "last.pt").read_bytes() == old

    r = CliRunner().invoke(cli, args + ["--set", "optim.lr=0.02", "--overwrite"],
                           prog_name="vcorr")
    assert r.exit_code == 0, r.output
    aside = tmp_path / "runs" / "x.old-1"
    assert f"moved the earlier run aside to {aside}" in r.output
    assert (aside / "last.pt").read_bytes() == old and (aside / "eval_val_1x1").is_dir()
    assert not (out / "eval_val_1x1").exists()  # nothing of the old run mixed in
    assert load_config(out / "config.toml")["optim"]["lr"] == 0.02
    assert len(records(out)) == 2 and len(records(aside)) == 2
    r = CliRunner().invoke(cli, args + ["--resume", "--overwrite"], prog_name="vcorr")
    assert r.exit_code == 2 and "give one of them" in r.output


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory, toy_train_prepared: Path) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "run"
    run(tiny(toy_train_prepared, "optim.batch_size=8"), out)
    return out / "last.pt"


def test_eval_and_compare_refuse_earlier_results(tmp_path: Path, small_checkpoint: Path,
                                                 toy_train_prepared: Path) -> None:
    out = tmp_path / "ev"
    args = ["eval", str(small_checkpoint), "--data", str(toy_train_prepared), "--clips", "1",
            "--crops", "1", "--workers", "0", "--device", "cpu", "--no-progress",
            "--out", str(out)]
    assert CliRunner().invoke(cli, args, prog_name="vcorr").exit_code == 0
    first = (out / "metrics.json").read_bytes()
    r = CliRunner().invoke(cli, args, prog_name="vcorr")
    assert r.exit_code == 2 and r.output.startswith(
        f"error: {out}: holds the results of an earlier `vcorr eval` (metrics.json, "
        "predictions.csv, scores.npz); give another --out, or --overwrite")
    assert (out / "metrics.json").read_bytes() == first
    r = CliRunner().invoke(cli, args + ["--overwrite"], prog_name="vcorr")
    assert r.exit_code == 0 and f"moved the earlier results aside to {out}.old-1" in r.output
    assert (tmp_path / "ev.old-1" / "metrics.json").read_bytes() == first
    # top-5 of 4 classes is not reported
    assert json.loads((out / "metrics.json").read_text())["top5"] is None

    cmp_args = ["compare", str(out), "--baseline", str(tmp_path / "ev.old-1"), "--out",
                str(tmp_path / "cmp")]
    assert CliRunner().invoke(cli, cmp_args, prog_name="vcorr").exit_code == 0
    title = (tmp_path / "cmp" / "gains.md").read_text().splitlines()[0]
    assert title == "# Per-class top-1 gain: ev vs ev.old-1"  # said once
    r = CliRunner().invoke(cli, cmp_args, prog_name="vcorr")
    assert r.exit_code == 2 and "an earlier `vcorr compare`" in r.output
    r = CliRunner().invoke(cli, cmp_args + ["--overwrite"], prog_name="vcorr")
    assert r.exit_code == 0 and (tmp_path / "cmp.old-1" / "gains.md").is_file()


def test_visualize_refuses_to_replace_a_figure(tmp_path: Path, toy_prepared: Path) -> None:
    out = tmp_path / "viz"
    from vcorr.pipelines.data.inspect import read_index
    vid = read_index(toy_prepared)[0]["id"]
    args = ["visualize", "correlation", "--pixels", "--data", str(toy_prepared), "--id", vid,
            "--out", str(out), "--frames", "3"]
    assert CliRunner().invoke(cli, args, prog_name="vcorr").exit_code == 0
    png = (out / "correlation_pixels.png").read_bytes()
    r = CliRunner().invoke(cli, args + ["--animate"], prog_name="vcorr")
    assert r.exit_code == 2 and "correlation_pixels.png: already there" in r.output
    assert not (out / "correlation_pixels.gif").exists()
    r = CliRunner().invoke(cli, args + ["--animate", "--overwrite"], prog_name="vcorr")
    assert r.exit_code == 0, r.output
    assert (out / "correlation_pixels.old-1.png").read_bytes() == png
    assert (out / "correlation_pixels.gif").is_file()


# ============================================================================ 3: before step 1

def _no_step(point: str) -> None:
    raise AssertionError(f"training reached {point!r}: the mistake was found too late")


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch):
    interrupts.set_fault_hook(_no_step)
    yield
    interrupts.set_fault_hook(None)


def test_missing_val_split_fails_before_the_first_step(
        tmp_path: Path, toy_train_prepared: Path, no_training) -> None:
    """The issue: no such split and val_every = 2 trained two epochs, then stopped."""
    cfg = tiny(toy_train_prepared, 'data.val_split="validation"', "train.val_every=2",
               "optim.epochs=4")
    with pytest.raises(UserError) as exc:
        run(cfg, tmp_path / "run")
    msg = str(exc.value)
    assert msg.startswith("data.val_split = 'validation': ") and "train 24, val 8" in msg
    assert "--set data.val_split=val" in msg and "--set train.val_every=0" in msg
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError, match=r"data.train_split = 'training': .* no videos"):
        run(tiny(toy_train_prepared, 'data.train_split="training"'), tmp_path / "run")


def test_batch_larger_than_the_dataset_names_the_fix(tmp_path: Path, toy_train_prepared: Path,
                                                     no_training) -> None:
    with pytest.raises(UserError) as exc:
        run(tiny(toy_train_prepared, "optim.batch_size=32"), tmp_path / "run")
    assert str(exc.value).startswith("optim.batch_size = 32 clips per step is more than the 24 "
                                     "training videos")
    assert "--set optim.batch_size=24 or less" in str(exc.value)
    with pytest.raises(UserError, match=r"phases.1.batch_size = 40 .* "
                                        r"--set phases.1.batch_size=24 or less"):
        run(tiny(toy_train_prepared, "phases=[{frames=3, epochs=1}, "
                                     "{frames=3, epochs=1, batch_size=40}]"), tmp_path / "run")
    with pytest.raises(UserError, match=r"--set optim.batch_size=8: .*accumulate \(3\)"):
        run(tiny(toy_train_prepared, "optim.batch_size=9", "optim.accumulate=3",
                 "optim.batch_size=8"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_frames_and_crop_checked_against_the_stored_videos(
        tmp_path: Path, toy_train_prepared: Path, no_training) -> None:
    with pytest.raises(UserError, match=r"data.crop = 48 is larger than the stored frames "
                                        r"\(short side 32 px\).*--set data.short_side"):
        run(tiny(toy_train_prepared, "data.crop=48", "data.short_side=0"), tmp_path / "run")
    with pytest.raises(UserError, match=r"data.test_short_side = 0"):
        run(tiny(toy_train_prepared, "data.crop=48", "data.short_side=[48, 48]",
                 "data.test_short_side=0"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_notes_for_looping_clips_upscaled_frames_and_capped_workers(
        tmp_path: Path, toy_train_prepared: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(pf, "worker_cap", lambda: 1)
    cfg = tiny(toy_train_prepared, "data.frames=4", "data.short_side=[48, 56]", "data.crop=32",
               "data.test_short_side=48", "data.workers=3")
    run(cfg, tmp_path / "run", stop_after_steps=1)
    notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note: ")]
    # TensorBoard is an optional extra ('vcorr[tb]'): its note is there exactly when the
    # package is missing, on whichever machine runs the test
    tb = [ln for ln in notes if ln.startswith("note: TensorBoard logging is off")]
    tb_note = ("note: TensorBoard logging is off: the tensorboard package is not installed "
               "(pip install 'vcorr[tb]'); curves.png and metrics.jsonl are written as always")
    assert tb == ([] if _tensorboard_importable() else [tb_note])
    assert [ln for ln in notes if ln not in tb] == [
        "note: 24 of 24 training videos have fewer than the 4 frames a clip of 4 frames "
        "covers; their clips loop (frame i of an n-frame video is read as frame i mod n; "
        'data.short_video = "repeat" repeats frames instead)',
        "note: frames are stored with a short side of 32 px and training resizes it to 48-56 "
        "px, so they are upscaled; prepare with --short-side 56 (or more) to train on real "
        "pixels",
        "note: data.workers = 3 capped at 1, the CPU cores available to this process"]


def _tensorboard_importable() -> bool:
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


def test_a_failed_start_leaves_no_folder_and_puts_an_overwritten_run_back(
        tmp_path: Path, toy_train_prepared: Path) -> None:
    bad = tmp_path / "weights.pt"
    bad.write_bytes(b"not a checkpoint")
    cfg = tiny(toy_train_prepared)
    with pytest.raises(UserError, match="not a readable weights file"):
        run(cfg, tmp_path / "new", init=bad)
    assert not (tmp_path / "new").exists()

    out = tmp_path / "old"
    run(cfg, out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(UserError, match="not a readable weights file"):
        run(cfg, out, init=bad, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == before  # moved back in place
    assert not (tmp_path / "old.old-1").exists()

    slurm_log = tmp_path / "job"  # a folder with other files (a job log) is not a run
    slurm_log.mkdir()
    (slurm_log / "slurm-123.out").write_text("log\n")
    with pytest.raises(UserError, match="not a readable weights file"):
        run(cfg, slurm_log, init=bad)
    assert [p.name for p in slurm_log.iterdir()] == ["slurm-123.out"]


# ============================================================================ 3: safe resume

def test_resume_with_changed_data_path_splits_workers_and_cadence(
        tmp_path: Path, toy_train_prepared: Path) -> None:
    cfg = tiny(toy_train_prepared, "optim.epochs=2", "train.log_every=1")
    full = run(cfg, tmp_path / "full")
    run(cfg, tmp_path / "part", stop_after_steps=3)
    moved = tmp_path / "moved_data"
    shutil.copytree(toy_train_prepared, moved)
    changed = tiny(moved, "optim.epochs=2", "train.log_every=2", "data.workers=1",
                   "train.val_every=2", 'data.val_split="train"')
    resumed = run(changed, tmp_path / "part", resume=True)
    for k, v in full["model_object"].state_dict().items():  # validation does not change it
        assert torch.equal(resumed["model_object"].state_dict()[k], v), k
    change = resumed["config_changes"][0]
    assert change["global_step"] == 3 and set(change["changes"]) == {
        "data.root", "data.workers", "train.log_every", "train.val_every", "data.val_split"}
    assert change["changes"]["data.workers"] == [0, 1]
    ckpt = load_checkpoint(tmp_path / "part" / "last.pt")
    assert ckpt["config_changes"] == resumed["config_changes"] and ckpt["config"] == changed
    assert load_config(tmp_path / "part" / "config.toml") == changed
    assert json.loads((tmp_path / "part" / "summary.json").read_text())["config_changes"]


def test_resume_refusals_list_every_key_and_other_data(tmp_path: Path,
                                                       toy_train_prepared: Path,
                                                       toy_prepared: Path) -> None:
    cfg = tiny(toy_train_prepared)
    run(cfg, tmp_path / "part", stop_after_steps=2)
    with pytest.raises(UserError) as exc:
        run(tiny(toy_train_prepared, "optim.lr=0.5", "optim.momentum=0.5", "data.workers=1"),
            tmp_path / "part", resume=True)
    msg = str(exc.value)
    assert "optim.lr 0.01 -> 0.5" in msg and "optim.momentum 0.9 -> 0.5" in msg
    assert "data.workers 0" not in msg.split("On --resume")[0]  # a safe key is not blamed
    # the same classes, other training videos: refused
    with pytest.raises(UserError, match="other training videos than the run's"):
        run(tiny(toy_prepared), tmp_path / "part", resume=True)


# ============================================================================ 4, small things

def test_set_value_errors_name_the_option(tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        load_config(TOY_C2D, ["optim.lr=fast"])
    assert str(exc.value).startswith("--set optim.lr=fast: optim.lr must be float")
    with pytest.raises(UserError, match=r"^--set phases.0.lr=-1: phases\[0\].lr must be "
                                        r"positive"):
        load_config(TOY_C2D, ["phases=[{frames=3, epochs=1}]", "phases.0.lr=-1"])
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlr = \"fast\"\n")
    with pytest.raises(UserError, match=f"^{bad}: optim.lr must be float"):
        load_config(bad, ["optim.momentum=0.5"])  # the file's value, the file's fault


def test_progress_is_plain_lines_when_not_a_terminal(tmp_path: Path,
                                                     toy_train_prepared: Path) -> None:
    args = ["train", str(TOY_C2D), "--data", str(toy_train_prepared), "--out",
            str(tmp_path / "run"), "--device", "cpu", "--set", "data.workers=0",
            "--set", "optim.batch_size=8", "--set", "optim.epochs=2",
            "--set", "model.args={width=8}"]
    r = CliRunner().invoke(cli, args, prog_name="vcorr")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    # the progress line of each epoch comes before its epoch line; no bar characters
    assert [ln.split(": ")[0] for ln in lines if "step" in ln or ln.startswith("epoch")] == [
        "phase 1/1 epoch 1/2 (3f)", "epoch 1", "phase 1/1 epoch 2/2 (3f)", "epoch 2"]
    assert "phase 1/1 epoch 1/2 (3f): step 3/3, loss " in r.output
    assert not any(ch in r.output for ch in "━╸\r")
    # 4 classes: no top-5 in the epoch line
    assert "top-5" not in r.output
    assert all(rec.get("top5", None) is None for rec in records(tmp_path / "run")
               if rec["split"] == "val")


def test_only_rank_0_prints_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under torchrun every process runs the command; only rank 0 reports the end."""
    from vcorr import pipelines
    import vcorr.pipelines.train  # noqa: F401  (loads the submodule)

    monkeypatch.setattr(pipelines.train, "train", lambda *a, **k: {"best_val_top1": 0.5,
                                                                    "seconds": 1.0})
    args = ["train", str(TOY_C2D), "--out", str(tmp_path / "run")]
    for rank, printed in (("1", False), ("0", True)):
        monkeypatch.setenv("RANK", rank)  # what torchrun sets in each process
        r = CliRunner().invoke(cli, args, prog_name="vcorr")
        assert r.exit_code == 0 and ("done:" in r.output) == printed, (rank, r.output)


def test_models_table_fits_80_columns() -> None:
    from rich.console import Console

    from vcorr.pipelines.model_info import model_table, render_model_table

    rows = model_table("*", flops=False)
    console = Console(width=80, record=True, file=open(os.devnull, "w"))
    render_model_table(rows, console)
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= 80
    for r in rows:  # every name whole on one line, every paper named below the table
        assert any(line.split() and line.split()[0] == r["name"] for line in text.splitlines())
        assert f"  {r['name']}: {r['paper'].split()[0]}" in text
    wide = Console(width=250, record=True, file=open(os.devnull, "w"))
    render_model_table(rows, wide)
    header = [ln for ln in wide.export_text().splitlines() if ln.split()[:1] == ["name"]]
    assert header and header[0].split()[-1] == "paper"  # a column when there is room


def test_correspondence_title_counts_modules_from_1(monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    import numpy as np

    from vcorr.pipelines.visualize import correspondences as corr_mod
    from vcorr.pipelines.visualize.clip import Clip, load_model

    titles = []
    monkeypatch.setattr(corr_mod, "draw_correspondences",
                        lambda clip, frames, corr, out, title, animate, **kw: titles.append(title))
    loaded = load_model(None, "toy_cpnet")
    frames = np.zeros((3, 32, 32, 3), np.uint8)
    frames[:, 10:12, 10:12] = 255
    clip = Clip(frames=frames, indices=[0, 1, 2], name="square")
    corr_mod.visualize_correspondences(loaded, clip, tmp_path, module_index=-1)
    corr_mod.visualize_correspondences(loaded, clip, tmp_path, module_index=0)
    assert "(1 of 1)" in titles[0] and "(1 of 1)" in titles[1]


def test_eval_progress_counts_videos_scored(monkeypatch: pytest.MonkeyPatch,
                                            small_checkpoint: Path,
                                            toy_train_prepared: Path) -> None:
    """With one forward pass for all videos (large max_views_per_batch), the bar may move only
    after that pass: it counts videos scored, not videos read."""
    import vcorr.pipelines.progress as progress_mod
    from vcorr.pipelines.evaluate import EvalSettings
    from vcorr.pipelines.evaluate.evaluate import run_views
    from vcorr.pipelines.train.trainer import model_from_checkpoint

    events: list[str] = []

    class Bar:
        def update(self, n: int = 1) -> None:
            events.append("scored")

        def close(self) -> None:
            pass

    monkeypatch.setattr(progress_mod, "make_progress", lambda *a, **k: Bar())
    model, _ = model_from_checkpoint(small_checkpoint)
    model.register_forward_hook(lambda *a: events.append("forward"))
    run_views(model, toy_train_prepared, "val", frames=3, interval=1, sampler="dense",
              crop_size=32, short_side=None, normalize=True,
              settings=EvalSettings(clips=1, crops=1, workers=0, max_views_per_batch=64),
              swap_map={}, device=torch.device("cpu"), progress=True)
    assert events == ["forward"] + ["scored"] * 8
