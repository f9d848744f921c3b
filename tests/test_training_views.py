"""Training you can look at (issue 15): curves.png after every validation, TensorBoard events
(rank 0; off with one note when the package is missing; rebuilt from metrics.jsonl on resume),
clips/s, data wait, peak memory and wall time in metrics.jsonl, and ``vcorr runs``.

Two tiny runs on the toy dataset of ``toy_train_prepared`` (24 train / 8 val clips of 3 frames
at 32x32) serve every test: A, toy C2D at width 8 over two phases (2 epochs of 3 frames, then
1 of 2 frames with frozen BN), stopped after 8 steps and resumed; B, toy CPNet for 1 epoch with
the tensorboard package hidden.
"""
from __future__ import annotations

import contextlib
import io
import json
import resource
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vcorr.pipelines.train import load_config, train
from vcorr.cli.main import cli

REPO = Path(__file__).resolve().parents[1]
STEPS = 6  # 24 training clips, batch 4
TB_NOTE = "TensorBoard logging is off"


def tiny(root: Path, *sets: str) -> dict:
    base = [f"data.root={json.dumps(str(root))}", "data.workers=0", "optim.batch_size=4",
            "optim.warmup_epochs=0", "train.log_every=1", "model.args={width=8}"]
    return load_config(REPO / "examples" / "configs" / "toy_c2d.toml", base + list(sets))


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_quietly(cfg: dict, out: Path, **kw) -> str:
    """Train on the CPU; what it printed."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        train(cfg, out, progress=False, device="cpu", **kw)
    return buf.getvalue()


def tb_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in RUN_DIR/tb: tag -> [(step, value)] in the order written."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def run_a(tmp_path_factory, toy_train_prepared: Path) -> dict:
    """Run A: stopped after 8 steps (in epoch 2, after one validation), a stale event file with
    a step the resumed run will redo planted in tb/ (where the tensorboard package is
    installed; the other checks of run A hold without it), then resumed to the end."""
    out = tmp_path_factory.mktemp("views") / "a"
    cfg = tiny(toy_train_prepared, "phases=[{frames=3, epochs=2}, "
                                   "{frames=2, epochs=1, freeze_bn=true, lr=0.001}]")
    first = train_quietly(cfg, out, stop_after_steps=STEPS + 2)
    after_stop = {"curves": (out / "curves.png").is_file(),
                  "events": sorted(p.name for p in (out / "tb").glob("events.out.*"))}
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        pass
    else:
        with SummaryWriter(str(out / "tb")) as stale:  # as if written after the checkpoint
            stale.add_scalar("train/loss", 123.0, STEPS + 3)
    resumed = train_quietly(cfg, out, resume=True)
    return {"out": out, "cfg": cfg, "printed": first + resumed, "after_stop": after_stop}


@pytest.fixture(scope="module")
def run_b(tmp_path_factory, toy_train_prepared: Path) -> dict:
    """Run B: toy CPNet for one epoch, ``torch.utils.tensorboard`` not importable."""
    out = tmp_path_factory.mktemp("views") / "b"
    cfg = tiny(toy_train_prepared, 'model.name="toy_cpnet"', "model.args={}", "optim.epochs=1")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "torch.utils.tensorboard", None)  # import raises ImportError
        printed = train_quietly(cfg, out)
    return {"out": out, "cfg": cfg, "printed": printed}


# ============================================================================ curves and tb

def test_curves_png_after_every_validation(run_a: dict) -> None:
    out = run_a["out"]
    assert run_a["after_stop"]["curves"]  # drawn at the first validation, before the stop
    im = Image.open(out / "curves.png")
    assert im.format == "PNG" and im.size == (800, 840)
    assert not list(out.glob(".*.tmp"))


def test_tensorboard_events_equal_the_records_after_resume(run_a: dict) -> None:
    pytest.importorskip("tensorboard")
    out = run_a["out"]
    assert len(run_a["after_stop"]["events"]) == 1
    # the resumed run rebuilt the events from metrics.jsonl: one file, no stale step 9
    files = list((out / "tb").glob("events.out.*"))
    assert len(files) == 1 and files[0].name not in run_a["after_stop"]["events"]
    scalars = tb_scalars(out)
    recs = records(out)
    for split, keys in (("train", ("loss", "top1", "lr", "clips_per_s", "data_wait",
                                   "peak_mem_mib")),
                        ("val", ("loss", "top1"))):
        for key in keys:
            want = [(r["step"], r[key]) for r in recs if r["split"] == split]
            got = scalars[f"{split}/{key}"]
            assert [s for s, _ in got] == [s for s, _ in want], key
            assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6), key
    assert "val/top5" not in scalars  # 4 classes: top-5 is None, not logged
    assert TB_NOTE not in run_a["printed"]


def test_without_tensorboard_training_runs_and_says_so_once(run_b: dict) -> None:
    out = run_b["out"]
    assert run_b["printed"].count(TB_NOTE) == 1
    assert "pip install 'vcorr[tb]'" in run_b["printed"]
    assert not (out / "tb").exists()
    assert (out / "curves.png").is_file() and (out / "last.pt").is_file()
    assert json.loads((out / "summary.json").read_text())["finished"] is True


# ============================================================================ metrics.jsonl

def test_metrics_record_throughput_data_wait_memory_and_wall_time(run_a: dict) -> None:
    out = run_a["out"]
    recs = records(out)
    train_recs = [r for r in recs if r["split"] == "train"]
    assert len(train_recs) == 3 * STEPS  # log_every=1, 3 epochs, none lost to the stop
    peak_now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    for r in train_recs:
        assert r["clips_per_s"] > 0 and 0 <= r["data_wait"] <= 1
        assert r["peak_mem"] == "rss"
        # a peak of this process at the time: torch alone holds > 50 MiB
        assert 50 < r["peak_mem_mib"] <= peak_now
    peaks = [r["peak_mem_mib"] for r in train_recs]
    assert peaks == sorted(peaks)  # a peak never goes down within a process...
    # ...and the wall time runs on over the resume (the checkpoint carries it)
    seconds = [r["seconds"] for r in recs]
    assert all(s > 0 for s in seconds) and seconds == sorted(seconds)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run_seconds"] >= seconds[-1] and summary["run_seconds"] > summary["seconds"]


def test_peak_memory_units() -> None:
    from vcorr.pipelines.train import monitor

    mib, kind = monitor.peak_memory_mib(torch.device("cpu"))
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert kind == "rss" and mib == pytest.approx(ru / 1024, rel=0.01)  # Linux: KiB
    # CUDA: the allocator's peak, in MiB (2^20 bytes)
    orig = torch.cuda.max_memory_allocated
    try:
        torch.cuda.max_memory_allocated = lambda device=None: 3 * 2 ** 20 + 2 ** 19
        assert monitor.peak_memory_mib(torch.device("cuda", 0)) == (3.5, "cuda")
    finally:
        torch.cuda.max_memory_allocated = orig


# ============================================================================ vcorr runs

def test_runs_table_json_and_plot(run_a: dict, run_b: dict, tmp_path: Path) -> None:
    from vcorr.pipelines.model_info import count_gmacs
    from vcorr.pipelines.train.trainer import model_from_checkpoint

    a, b = str(run_a["out"]), str(run_b["out"])
    r = CliRunner().invoke(cli, ["runs", a, b], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    assert a in r.output and b in r.output and "toy_c2d" in r.output and "toy_cpnet" in r.output
    val_a = [x for x in records(run_a["out"]) if x["split"] == "val"]
    assert f"{100 * max(x['top1'] for x in val_a):.1f}" in r.output
    # at 80 columns the runs become columns: every value still there, nothing cut
    narrow = CliRunner().invoke(cli, ["runs", a, b], env={"COLUMNS": "80"})
    assert narrow.exit_code == 0 and max(map(len, narrow.output.splitlines())) <= 80
    assert "toy_cpnet" in narrow.output and "3,2 x 32" in narrow.output

    r = CliRunner().invoke(cli, ["runs", a, b, "--json"])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.output)
    assert [x["run"] for x in rows] == [a, b]
    for row, run in zip(rows, (run_a, run_b)):
        recs = records(run["out"])
        val = [x for x in recs if x["split"] == "val"]
        best = max(val, key=lambda x: x["top1"])
        assert row["best"] == {"epoch": best["epoch"], "top1": best["top1"], "top5": None}
        assert row["last"]["top1"] == val[-1]["top1"]
        assert row["epochs_done"] == row["epochs"] == sum(p["epochs"]
                                                          for p in _plan(run["cfg"]))
        assert row["seconds"] == recs[-1]["seconds"]
        # parameters and GMACs: the trained model itself, at its evaluation clip
        model, _ = model_from_checkpoint(run["out"] / "last.pt")
        assert row["params"] == sum(p.numel() for p in model.parameters())
        frames = _plan(run["cfg"])[-1]["frames"]
        assert row["frames"][-1] == frames
        # On the meta device, as `vcorr models` counts: on CPU the k-NN matmul of CPNet runs
        # in oneDNN, which the FLOP counter does not see.
        assert row["gmacs"] == pytest.approx(count_gmacs(model.to("meta"), (3, frames, 32, 32)))
    assert rows[0]["frames"] == [3, 2] and rows[1]["frames"] == [3]

    plot = tmp_path / "val.png"
    r = CliRunner().invoke(cli, ["runs", a, b, "--plot", str(plot)])
    assert r.exit_code == 0 and Image.open(plot).size == (900, 700)
    r = CliRunner().invoke(cli, ["runs", a, b, "--plot", str(plot)])
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = CliRunner().invoke(cli, ["runs", a, b, "--plot", str(plot), "--overwrite"])
    assert r.exit_code == 0 and (tmp_path / "val.old-1.png").is_file()


def _plan(cfg: dict) -> list[dict]:
    from vcorr.pipelines.train.config import phases

    return phases(cfg)


@pytest.mark.parametrize("make", ["empty", "missing", "config_only"])
def test_runs_on_a_folder_that_is_not_a_run_exits_2(run_a: dict, tmp_path: Path,
                                                     make: str) -> None:
    bad = tmp_path / "notarun"
    if make != "missing":
        bad.mkdir()
    if make == "config_only":
        (bad / "config.toml").write_text((run_a["out"] / "config.toml").read_text())
    r = CliRunner().invoke(cli, ["runs", str(run_a["out"]), str(bad)])
    assert r.exit_code == 2
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {bad}: not a training run")


def test_curves_label_only_what_is_plotted(tmp_path: Path, toy_train_prepared: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 25, item 6: the toy has 4 classes, so no top-5 is recorded (null under 6) and
    none is plotted; curves.png of `vcorr train` named its accuracy axis "top-1 / top-5"."""
    from vcorr.pipelines.train import curves
    from vcorr.pipelines.train.curves import plot_run_curves

    drawn: list[tuple[str, list[str]]] = []
    real_save = curves.save

    def save(fig, path, written):
        drawn.append((fig.axes[1].get_ylabel(), fig.axes[1].get_legend_handles_labels()[1]))
        return real_save(fig, path, written)

    monkeypatch.setattr(curves, "save", save)
    out = tmp_path / "run"
    r = CliRunner().invoke(cli, ["train", str(REPO / "examples" / "configs" / "toy_c2d.toml"),
                                 "--data", str(toy_train_prepared), "--out", str(out),
                                 "--set", "optim.epochs=1", "--set", "data.workers=0",
                                 "--set", "optim.batch_size=8", "--device", "cpu",
                                 "--no-progress"], prog_name="vcorr")
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert (out / "curves.png").is_file() and drawn
    label, legend = drawn[-1]
    assert label == "top-1 (%)" and not any("top-5" in x for x in legend), drawn[-1]
    # with a top-5 recorded (6 classes or more) both are plotted and named
    recs = [{"split": "val", "epoch": 1, "step": 8, "loss": 1.0, "top1": 0.5, "top5": 0.9}]
    plot_run_curves(recs, tmp_path / "c.png", title="t")
    assert drawn[-1][0] == "top-1 / top-5 (%)" and "val top-5" in drawn[-1][1]
