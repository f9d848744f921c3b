"""Continuing a run for more epochs (issue 25, item 4): ``vcorr train --out RUN --resume
--extend N`` appends a phase of N epochs to the run's schedule (the last phase's settings,
the schedule restarted), recorded in the run. Checked against a run configured with both
phases from the start: the same weights bit for bit, the same records; an interrupt in the
added epochs resumes with the run's config or with the original file.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from click.testing import CliRunner

from vcorr.cli.main import cli
from vcorr.pipelines.train import load_checkpoint, load_config, train

from test_runs import records

REPO = Path(__file__).resolve().parents[1]
TOY_C2D = REPO / "examples" / "configs" / "toy_c2d.toml"
SETS = ["data.workers=0", "optim.batch_size=4", "optim.epochs=2", "optim.warmup_epochs=0.5",
        "train.log_every=2", "model.args={width=8}", "optim.lr=0.02"]


def _cli(*args: str | Path):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="vcorr")


def _sets(root: Path) -> list[str]:
    return [f"data.root={json.dumps(str(root))}"] + SETS


def test_extend_equals_the_two_phase_run_and_is_recorded(tmp_path: Path,
                                                         toy_train_prepared: Path) -> None:
    run = tmp_path / "run"
    train(load_config(TOY_C2D, _sets(toy_train_prepared)), run, progress=False, device="cpu")
    assert load_checkpoint(run / "last.pt")["position"]["global_step"] == 12  # 2 x 6 steps
    r = _cli("train", "--out", run, "--resume", "--extend", "2", "--extend-lr", "0.01",
             "--no-progress", "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert "extended: phase 2 of 2 more epochs (lr 0.01" in r.output
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["position"]["global_step"] == 24
    assert [p["epochs"] for p in ckpt["config"]["phases"]] == [2, 2]
    assert ckpt["extensions"] == [ckpt["config"]["phases"][1]]
    assert ckpt["extensions"][0]["lr"] == 0.01
    assert any("extended" in c for c in ckpt["config_changes"])
    assert load_config(run / "config.toml")["phases"] == ckpt["config"]["phases"]

    # The reference: both phases in the config from the start.
    ref = tmp_path / "ref"
    both = _sets(toy_train_prepared) + [
        "phases=[{frames = 3, epochs = 2}, {frames = 3, epochs = 2, lr = 0.01}]"]
    train(load_config(TOY_C2D, both), ref, progress=False, device="cpu")
    want = load_checkpoint(ref / "last.pt")
    for k, v in want["model"].items():
        assert torch.equal(v, ckpt["model"][k]), k
    keys = ("epoch", "step", "split", "loss", "top1", "lr")
    assert ([tuple(x.get(k) for k in keys) for x in records(run)]
            == [tuple(x.get(k) for k in keys) for x in records(ref)])


def test_an_interrupted_extension_resumes_with_either_config(tmp_path: Path,
                                                             toy_train_prepared: Path) -> None:
    cfg = load_config(TOY_C2D, _sets(toy_train_prepared))
    run = tmp_path / "run"
    train(cfg, run, progress=False, device="cpu")
    # stopped 3 steps into the added epochs
    train(cfg, run, resume=True, extend=1, progress=False, device="cpu", stop_after_steps=3)
    assert load_checkpoint(run / "last.pt")["position"]["global_step"] == 15
    # the original config file's settings (no phases) + --resume: the run's extension applies
    summary = train(cfg, run, resume=True, progress=False, device="cpu")
    assert summary["finished"] and summary["position"]["global_step"] == 18
    again = _cli("train", "--out", run, "--resume", "--no-progress", "--device", "cpu")
    assert again.exit_code == 0, again.output   # finished: nothing more to do


def test_extend_needs_resume(tmp_path: Path, toy_train_prepared: Path) -> None:
    r = _cli("train", TOY_C2D, "--data", toy_train_prepared, "--out", tmp_path / "x",
             "--extend", "2", "--no-progress")
    assert r.exit_code == 2 and "--extend continues a run" in r.output
    assert not (tmp_path / "x").exists()


def test_best_checkpoint_breaks_top1_ties_by_the_loss(tmp_path: Path, monkeypatch,
                                                      toy_train_prepared: Path) -> None:
    """Issue 25: of epochs with equal validation top-1 (common on a small validation set),
    best.pt is the one with the lowest validation loss, not the first. Validation results are
    scripted: top-1 0.5, 0.5, 0.5, 0.25 with losses 1.0, 0.8, 0.9, 0.1: epoch 2 is best."""
    from vcorr.pipelines.train import trainer as trainer_mod

    scripted = iter([(0.5, 1.0), (0.5, 0.8), (0.5, 0.9), (0.25, 0.1)])

    def fake_validate(*args, **kwargs):
        top1, loss = next(scripted)
        return {"loss": loss, "top1": top1, "top5": None, "count": 8}

    monkeypatch.setattr(trainer_mod, "validate", fake_validate)
    cfg = load_config(TOY_C2D, _sets(toy_train_prepared) + ["optim.epochs=4"])
    train(cfg, tmp_path / "run", progress=False, device="cpu")
    ckpt = load_checkpoint(tmp_path / "run" / "best.pt")
    assert ckpt["position"]["global_step"] == 2 * 6   # the end of epoch 2
    assert (ckpt["best_top1"], ckpt["best_loss"]) == (0.5, 0.8)


def test_the_live_display_fits_a_small_terminal(tmp_path: Path, toy_train_prepared: Path) -> None:
    """Issue 25, item 5: 30 epochs on an 80x24 pseudo-terminal. Every finished epoch's bar used
    to stay in rich's live area until it outgrew the screen and was cropped to stale bars and
    a "..." line; now the live area holds the current epoch's bar, and every "epoch N:"
    summary line reaches the terminal."""
    import fcntl
    import os
    import pty
    import re
    import select
    import struct
    import subprocess
    import sys
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env.update(TERM="xterm-256color", OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "vcorr.cli", "train", str(TOY_C2D), "--data",
         str(toy_train_prepared), "--out", str(tmp_path / "run"), "--device", "cpu",
         "--set", "data.workers=0", "--set", "optim.batch_size=4", "--set", "optim.epochs=30",
         "--set", "train.max_steps_per_epoch=1", "--set", "model.args={width=8}"],
        stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + 240
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:   # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r", "\n",
                  b"".join(chunks).decode("utf-8", "replace"))
    assert proc.returncode == 0, text[-3000:]
    lines = [ln.strip() for ln in text.splitlines()]
    for n in range(1, 31):
        assert any(ln.startswith(f"epoch {n}:") for ln in lines), (n, text[-2000:])
    assert "..." not in lines   # rich's mark for a live area cropped to the screen


def test_what_a_new_user_met_points_at_the_fix(tmp_path: Path, toy_train_prepared: Path) -> None:
    """From a new user's trial: a finished run's refusal names --extend; a run folder given as a
    checkpoint names its best.pt; an unquoted list in --set says to quote it; a swap-map typo
    names the close class."""
    run = tmp_path / "run"
    base = ["train", TOY_C2D, "--data", toy_train_prepared, "--out", run, "--no-progress",
            "--device", "cpu", "--set", "data.workers=0", "--set", "optim.batch_size=4",
            "--set", "optim.epochs=1", "--set", "model.args={width=8}"]
    assert _cli(*base).exit_code == 0
    r = _cli(*base)
    assert r.exit_code == 2 and "holds a finished run" in r.output
    assert "continue it for more epochs with --resume --extend N" in r.output
    r = _cli("eval", run, "--no-progress")
    assert r.exit_code == 2 and f"a run folder, not a checkpoint; give {run / 'best.pt'}" in r.output
    r = _cli(*base[:-8], "--out", tmp_path / "x", "--set", "train.freeze=[stem]")
    assert r.exit_code == 2 and 'quote its strings, e.g. ["stem", "res2"]' in r.output, r.output
    (tmp_path / "m.csv").write_text("left,rigth\n")
    r = _cli("eval", run / "last.pt", "--crops", "10", "--swap-map", tmp_path / "m.csv",
             "--no-progress", "--workers", "0", "--device", "cpu")
    assert r.exit_code == 2 and "'rigth' is not one of the 4 classes (did you mean 'right'?)" \
        in r.output, r.output


def test_flipping_direction_classes_is_noted(tmp_path: Path, toy_train_prepared: Path) -> None:
    """The toy's classes are up/down/left/right: training with data.flip = "on" says what a
    mirror does to them."""
    r = _cli("train", TOY_C2D, "--data", toy_train_prepared, "--out", tmp_path / "run",
             "--no-progress", "--device", "cpu", "--set", "data.workers=0", "--set",
             "optim.batch_size=4", "--set", "optim.epochs=1", "--set", "model.args={width=8}",
             "--set", 'data.flip="on"', "--set", "train.max_steps_per_epoch=1")
    assert r.exit_code == 0, r.output
    assert "note: data.flip = \"on\" mirrors clips, but 2 classes name a direction ('left', " \
           "'right'): a mirrored 'left' is a 'right'" in r.output, r.output
