"""Evaluation (issue 6): view geometry (1/3/6/10 crops, flips, label swaps), clip positions,
score averaging, metrics against a hand-made confusion matrix, `vcorr compare` on synthetic
results, and one tiny end-to-end `vcorr eval` of a checkpoint trained for two steps on the toy
dataset (fixture ``toy_train_prepared``)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vcorr.pipelines.data.samplers import DenseSampler, SegmentSampler
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.evaluate import (EvalSettings, average_views, build_views, compare_results,
                                      compute_metrics, crop_boxes, evaluate_checkpoint, swap_scores)

REPO = Path(__file__).resolve().parents[1]
TOY_C2D = REPO / "examples" / "configs" / "toy_c2d.toml"
METRIC_KEYS = {"top1", "top5", "mean_class_accuracy", "per_class", "confusion_matrix",
               "num_videos", "views_per_video", "clips", "crops", "averaging", "checkpoint",
               "seconds", "num_failed", "failed_videos"}


# --- view geometry -----------------------------------------------------------------------------

def covered(h: int, w: int, boxes) -> np.ndarray:
    m = np.zeros((h, w), bool)
    for b in boxes:
        m[b.y:b.y + b.size, b.x:b.x + b.size] = True
    return m


def test_one_crop_is_centred() -> None:
    (b,) = crop_boxes(128, 171, 112, 1)
    assert (b.y, b.x, b.size, b.flip) == (8, 29, 112, False)


@pytest.mark.parametrize("h,w", [(128, 171), (171, 128), (112, 300)])
def test_three_crops_cover_the_frame_along_the_longer_side(h: int, w: int) -> None:
    boxes = crop_boxes(h, w, 112, 3)
    assert len(boxes) == 3 and not any(b.flip for b in boxes)
    wide = w >= h
    longer, shorter = (w, h) if wide else (h, w)
    starts = [b.x if wide else b.y for b in boxes]
    across = {b.y if wide else b.x for b in boxes}
    assert starts == [0, round((longer - 112) / 2), longer - 112]
    assert across == {(shorter - 112) // 2}
    m = covered(h, w, boxes)
    lo = (shorter - 112) // 2  # the whole longer side, the centre band of the shorter one
    band = m[lo:lo + 112, :] if wide else m[:, lo:lo + 112]
    assert band.all() and m.sum() == band.size


def test_six_crops_evenly_spaced() -> None:
    boxes = crop_boxes(128, 256, 128, 6)
    assert [b.x for b in boxes] == [0, 26, 51, 77, 102, 128]  # round(i * 128 / 5)
    assert {b.y for b in boxes} == {0} and covered(128, 256, boxes).all()
    tall = crop_boxes(200, 100, 100, 6)
    assert [b.y for b in tall] == [0, 20, 40, 60, 80, 100] and {b.x for b in tall} == {0}


def test_ten_crops_corners_centre_and_flips() -> None:
    boxes = crop_boxes(128, 171, 112, 10)
    pos = [(b.y, b.x) for b in boxes]
    assert pos[:5] == [(0, 0), (0, 59), (16, 0), (16, 59), (8, 29)]
    assert pos[5:] == pos[:5]
    assert [b.flip for b in boxes] == [False] * 5 + [True] * 5
    assert covered(128, 171, boxes).all()


def test_crop_larger_than_frame_is_refused() -> None:
    with pytest.raises(ValueError, match="larger than the frame"):
        crop_boxes(100, 200, 112, 3)
    with pytest.raises(ValueError, match="crops must be"):
        crop_boxes(128, 128, 112, 4)


def test_build_views_cuts_and_flips_the_right_pixels() -> None:
    clips = torch.arange(2 * 3 * 2 * 6 * 8, dtype=torch.float32).view(2, 3, 2, 6, 8)
    boxes = crop_boxes(6, 8, 4, 10)
    views, flips = build_views(clips, boxes)
    assert views.shape == (20, 3, 2, 4, 4) and flips == ([False] * 5 + [True] * 5) * 2
    assert torch.equal(views[1], clips[0, :, :, 0:4, 4:8])           # top-right corner
    assert torch.equal(views[5], clips[0, :, :, 0:4, 0:4].flip(-1))  # flipped top-left
    assert torch.equal(views[14], clips[1, :, :, 1:5, 2:6])          # clip 2, centre
    full, fl = build_views(clips, None)
    assert full is clips and fl == [False, False]


# --- clip positions ----------------------------------------------------------------------------

def test_clips_evenly_spaced_inside_the_video() -> None:
    s = DenseSampler(8, 2)  # span 15
    clips = s.test(100, 5)
    starts = [c[0] for c in clips]
    assert starts == [0, 21, 42, 64, 85] and clips[-1][-1] == 99
    assert all(all(0 <= i < 100 for i in c) and len(c) == 8 for c in clips)
    assert all(c == list(range(c[0], c[0] + 15, 2)) for c in clips)
    assert s.test(100, 1)[0][0] == 42  # one clip: the centred one


def test_short_videos_loop_and_stay_inside() -> None:
    s = DenseSampler(8, 1)
    clips = s.test(5, 3)
    assert clips == [[0, 1, 2, 3, 4, 0, 1, 2]] * 3
    seg = SegmentSampler(4).test(3, 2)
    assert all(0 <= i < 3 for c in seg for i in c) and len(seg) == 2


# --- averaging ---------------------------------------------------------------------------------

def test_average_probs_and_logits_by_hand() -> None:
    logits = torch.tensor([[0.0, math_log(3.0), 0.0], [math_log(2.0), 0.0, 0.0]])
    # softmax rows: [1/5, 3/5, 1/5] and [2/4, 1/4, 1/4]
    probs = average_views(logits, [False, False], {}, "probs")
    assert torch.allclose(probs, torch.tensor([(0.2 + 0.5) / 2, (0.6 + 0.25) / 2,
                                               (0.2 + 0.25) / 2]))
    lg = average_views(logits, [False, False], {}, "logits")
    assert torch.allclose(lg, logits.mean(0))


def math_log(x: float) -> float:
    return float(np.log(x))


def test_flipped_views_are_swapped_back() -> None:
    swap = {0: 1, 1: 0}
    assert torch.equal(swap_scores(torch.tensor([[1.0, 2.0, 3.0]]), swap),
                       torch.tensor([[2.0, 1.0, 3.0]]))
    logits = torch.tensor([[4.0, 1.0, 0.0], [1.0, 4.0, 0.0]])  # view 2 is the mirror image
    out = average_views(logits, [False, True], swap, "logits")
    assert torch.allclose(out, torch.tensor([4.0, 1.0, 0.0]))
    # without a swap map flips are averaged as they are
    assert torch.allclose(average_views(logits, [False, True], {}, "logits"),
                          torch.tensor([2.5, 2.5, 0.0]))


# --- metrics -----------------------------------------------------------------------------------

def test_metrics_against_a_hand_computed_confusion_matrix() -> None:
    classes = ["a", "b", "c"]
    labels = [0, 0, 0, 1, 1, 2]
    scores = np.array([[.9, .05, .05], [.2, .7, .1], [.6, .3, .1],   # a: a, b, a
                       [.1, .8, .1], [.5, .2, .3],                   # b: b, a
                       [.1, .2, .7]])                                # c: c
    m = compute_metrics(scores, labels, classes)
    assert m["confusion_matrix"] == [[2, 1, 0], [1, 1, 0], [0, 0, 1]]
    assert m["top1"] == pytest.approx(4 / 6)
    assert m["top5"] is None  # 3 classes: top-5 would always be 100%, it is not reported
    assert [p["accuracy"] for p in m["per_class"]] == pytest.approx([2 / 3, 1 / 2, 1.0])
    assert [p["support"] for p in m["per_class"]] == [3, 2, 1]
    assert m["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
    # a class without videos has no accuracy and is left out of the mean
    m2 = compute_metrics(scores[:5], labels[:5], classes)
    assert m2["per_class"][2] == {"class": "c", "accuracy": None, "support": 0}
    assert m2["mean_class_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    # 6 classes: top-5 counts; a video whose class is ranked last misses it
    six = np.array([[.5, .1, .1, .1, .1, .1], [.3, .25, .2, .15, .07, .03]])
    m6 = compute_metrics(six, [0, 5], list("abcdef"))
    assert m6["top1"] == 0.5 and m6["top5"] == 0.5


# --- compare -----------------------------------------------------------------------------------

def fake_result(folder: Path, classes: list[str], accs: list[float], support: int = 4,
                top1: float | None = None) -> Path:
    folder.mkdir(parents=True)
    per = [{"class": c, "accuracy": a, "support": support} for c, a in zip(classes, accs)]
    (folder / "metrics.json").write_text(json.dumps(
        {"top1": top1 if top1 is not None else float(np.mean(accs)), "per_class": per}))
    return folder


def test_compare_gains_exact_and_plot_written(tmp_path: Path) -> None:
    classes = ["run", "jump", "swim", "walk"]
    base = fake_result(tmp_path / "base", classes, [0.5, 0.25, 0.75, 1.0])
    model = fake_result(tmp_path / "cpnet", classes, [0.75, 0.25, 0.5, 1.0])
    other = fake_result(tmp_path / "corr", classes, [1.0, 1.0, 1.0, 1.0])
    from vcorr.cli.main import cli

    out = tmp_path / "cmp"
    result = CliRunner().invoke(cli, ["compare", str(model), "--baseline", str(base), "--out",
                                      str(out), "--top", "2"], prog_name="vcorr")
    assert result.exit_code == 0, result.output + repr(result.exception)
    for name in ("gains.csv", "gains.md", "gains.png", "summary.json"):
        assert (out / name).is_file(), name
    assert (out / "gains.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(out / "gains.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows] == ["run", "jump", "walk", "swim"]
    assert [float(r["gain"]) for r in rows] == [0.25, 0.0, 0.0, -0.25]
    assert [float(r["baseline_accuracy"]) for r in rows] == [0.5, 0.25, 1.0, 0.75]
    s = json.loads((out / "summary.json").read_text())
    assert (s["improved"], s["worse"], s["equal"]) == (1, 1, 2)
    assert s["overall_gain"] == pytest.approx(0.0) and s["mean_per_class_gain"] == 0.0
    assert [r["class"] for r in s["largest_gains"]] == ["run"]
    assert [r["class"] for r in s["largest_losses"]] == ["swim"]
    assert "| run | 50.0% | 75.0% | +25.0 | 4 |" in (out / "gains.md").read_text()
    # issue 25, item 6: one class, not "1 classes"
    assert "; 1 class improved, 1 worse, 2 equal" in (out / "gains.md").read_text()
    # several models against one baseline
    summaries = compare_results([model, other], base, tmp_path / "cmp2")
    assert [x["name"] for x in summaries] == ["cpnet", "corr"]
    assert summaries[1]["mean_per_class_gain"] == pytest.approx((0.5 + 0.75 + 0.25) / 4)
    assert (tmp_path / "cmp2" / "corr" / "gains.png").is_file()


def test_compare_refuses_other_class_lists(tmp_path: Path) -> None:
    base = fake_result(tmp_path / "base", ["a", "b"], [0.5, 0.5])
    model = fake_result(tmp_path / "m", ["a", "c"], [0.5, 0.5])
    with pytest.raises(UserError, match="different class lists"):
        compare_results([model], base, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    from vcorr.cli.main import cli

    result = CliRunner().invoke(cli, ["compare", str(model), "--baseline", str(base)],
                                prog_name="vcorr")
    assert result.exit_code == 2 and "error:" in result.output
    assert "different class lists" in result.output
    result = CliRunner().invoke(cli, ["compare", str(model), "--baseline",
                                      str(tmp_path / "missing")], prog_name="vcorr")
    assert result.exit_code == 2 and "not found" in result.output


# --- end to end --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory, toy_train_prepared: Path) -> Path:
    from vcorr.pipelines.train import load_config, train

    sets = [f"data.root={json.dumps(str(toy_train_prepared))}", "data.workers=0",
            "optim.batch_size=4", "optim.epochs=1", "optim.warmup_epochs=0",
            "train.max_steps_per_epoch=2", "train.val_every=0", "model.args={width=8}"]
    out = tmp_path_factory.mktemp("eval_run")
    train(load_config(TOY_C2D, sets), out, progress=False, device="cpu")
    return out / "last.pt"


def test_cli_eval_end_to_end(tmp_path: Path, toy_checkpoint: Path,
                             toy_train_prepared: Path) -> None:
    from vcorr.cli.main import cli

    out = tmp_path / "eval"
    args = ["eval", str(toy_checkpoint), "--data", str(toy_train_prepared), "--clips", "2",
            "--crops", "3", "--crop-size", "24", "--workers", "0", "--device", "cpu",
            "--max-views-per-batch", "4", "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(cli, args, prog_name="vcorr")
    assert result.exit_code == 0, result.output + repr(result.exception)
    m = json.loads((out / "metrics.json").read_text())
    assert METRIC_KEYS <= set(m)
    assert m["num_videos"] == 8 and m["num_failed"] == 0 and m["views_per_video"] == 6
    assert (m["clips"], m["crops"], m["averaging"]) == (2, 3, "probs")
    assert sum(map(sum, m["confusion_matrix"])) == 8 and len(m["per_class"]) == 4
    with open(out / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and set(rows[0]) >= {"id", "label", "predicted", "top5"}
    assert len(rows[0]["top5"].split("|")) == 4
    z = np.load(out / "scores.npz")
    assert z["scores"].shape == (8, 4) and np.allclose(z["scores"].sum(1), 1.0, atol=1e-5)
    assert list(z["ids"]) == [r["id"] for r in rows]
    top1 = np.mean(z["scores"].argmax(1) == z["labels"])
    assert m["top1"] == pytest.approx(top1)


def test_eval_matches_validation_and_reports_failed_videos(
        tmp_path: Path, toy_checkpoint: Path, toy_train_prepared: Path, monkeypatch) -> None:
    from vcorr.pipelines.data.shards import ShardReader
    from vcorr.pipelines.train import load_checkpoint
    from vcorr.pipelines.train.distributed import DistEnv
    from vcorr.pipelines.train.trainer import build_model, validate

    # 1 clip x 1 centre crop of the full 32 px frame = the trainer's validation
    s = EvalSettings(clips=1, crops=1, workers=0, average="logits")
    m = evaluate_checkpoint(toy_checkpoint, toy_train_prepared, tmp_path / "a", settings=s,
                            device="cpu")
    ckpt = load_checkpoint(toy_checkpoint)
    model = build_model(ckpt["config"], 4, 4)
    model.load_state_dict(ckpt["model"])
    env = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    val = validate(model, ckpt["config"], 4, env, 8)
    assert m["top1"] == pytest.approx(val["top1"]) and m["top5"] == pytest.approx(val["top5"])
    # full-frame testing and 10 crops run too (views per video)
    m_ff = evaluate_checkpoint(toy_checkpoint, toy_train_prepared, tmp_path / "ff",
                               settings=EvalSettings(clips=2, full_frame=True, workers=0),
                               device="cpu")
    assert m_ff["views_per_video"] == 2 and m_ff["top1"] == pytest.approx(m["top1"])

    original = ShardReader.read_encoded
    first_id = next(csv.DictReader(open(tmp_path / "a" / "predictions.csv")))["id"]

    def broken(self, shard, video_id, indices):
        if video_id == first_id:
            raise OSError("truncated shard")
        return original(self, shard, video_id, indices)

    monkeypatch.setattr(ShardReader, "read_encoded", broken)
    m2 = evaluate_checkpoint(toy_checkpoint, toy_train_prepared, tmp_path / "b",
                             settings=EvalSettings(clips=2, crops=6, crop_size=28, workers=0),
                             device="cpu")
    assert m2["num_videos"] == 7 and m2["num_failed"] == 1 and m2["views_per_video"] == 12
    assert m2["failed_videos"][0]["id"] == first_id
    assert "truncated shard" in m2["failed_videos"][0]["error"]
    rows = list(csv.DictReader(open(tmp_path / "b" / "predictions.csv")))
    assert len(rows) == 8 and rows[-1]["id"] == first_id and rows[-1]["error"]


def test_ten_crops_follow_the_training_flip_policy(tmp_path: Path, toy_checkpoint: Path,
                                                    toy_train_prepared: Path) -> None:
    """Issue 23, item 1: the toy's classes are directions (a mirrored "left" is "right"), its
    model was trained with flip off, and a ``list`` dataset has no label-swap map: ``--crops
    10`` (5 mirrored views) is refused in one line before anything is written. Trained with
    flip on, the same views are used; a swap map makes mirroring safe too."""
    from vcorr.cli.main import cli
    from vcorr.pipelines.errors import UserError
    from vcorr.pipelines.evaluate.views import check_mirrored_views

    ckpt = torch.load(toy_checkpoint, weights_only=True)
    assert ckpt["config"]["data"]["flip"] == "off" and ckpt["swap_pairs"] == []

    def eval_10(path: Path, out: Path, *extra: str):
        return CliRunner().invoke(cli, ["eval", str(path), "--data", str(toy_train_prepared),
                                        "--clips", "1", "--crops", "10", "--crop-size", "24",
                                        "--workers", "0", "--device", "cpu", "--out", str(out),
                                        "--no-progress", *extra], prog_name="vcorr")

    r = eval_10(toy_checkpoint, tmp_path / "off")
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert "mirrored views" in r.output and "--crops 3 or 6" in r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "off").exists()
    ckpt["config"]["data"]["flip"] = "on"
    torch.save(ckpt, tmp_path / "flip_on.pt")
    r = eval_10(tmp_path / "flip_on.pt", tmp_path / "on")
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "on" / "metrics.json").read_text())["views_per_video"] == 10
    # A user's swap map (class names) makes the flip-off model's mirrored views usable, and
    # maps exactly "left" and "right": against the same views without a map, only their two
    # scores move, by trading the mirrored views' shares.
    (tmp_path / "mirror.csv").write_text("# a flip swaps these\nleft,right\n")
    r = eval_10(toy_checkpoint, tmp_path / "map", "--swap-map", str(tmp_path / "mirror.csv"))
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "map" / "metrics.json").read_text())
    assert m["swap_pairs"] == [["left", "right"]] and m["label_swap"]
    plain = np.load(tmp_path / "on" / "scores.npz")
    mapped = np.load(tmp_path / "map" / "scores.npz")
    assert list(plain["ids"]) == list(mapped["ids"])
    classes = ckpt["classes"]
    lr = [classes.index("left"), classes.index("right")]
    ud = [classes.index("up"), classes.index("down")]
    a, b = plain["scores"], mapped["scores"]
    assert np.allclose(a[:, ud], b[:, ud], atol=1e-6)
    assert np.allclose(a[:, lr].sum(1), b[:, lr].sum(1), atol=1e-6)
    assert np.abs(a[:, lr] - b[:, lr]).max() > 1e-4
    r = eval_10(toy_checkpoint, tmp_path / "typo", "--swap-map", "jester")
    assert r.exit_code == 2 and "'Swiping Left' is not one of the 4 classes" in r.output, r.output
    check_mirrored_views(10, "off", {0: 1, 1: 0}, "x.pt")  # a swap map maps them back
    check_mirrored_views(6, "off", {}, "x.pt")              # no mirrored views
    with pytest.raises(UserError, match="x.pt: --crops 10"):
        check_mirrored_views(10, "off", {}, "x.pt")


def test_a_run_records_its_swap_map_and_eval_uses_it(tmp_path: Path,
                                                     toy_train_prepared: Path) -> None:
    """``data.swap_map`` as a CSV file: the run trains with it (flip = "swap"), records the
    pairs by name in its checkpoints, and ``vcorr eval --crops 10`` maps mirrored views back
    with them without the file (moved away here)."""
    from vcorr.cli.main import cli
    from vcorr.pipelines.train import load_config, train

    mirror = tmp_path / "mirror.csv"
    mirror.write_text("right,left\n")
    sets = [f"data.root={json.dumps(str(toy_train_prepared))}", "data.workers=0",
            "optim.batch_size=4", "optim.epochs=1", "train.max_steps_per_epoch=1",
            "train.val_every=0", "model.args={width=8}", 'data.flip="swap"',
            f"data.swap_map={json.dumps(str(mirror))}"]
    train(load_config(TOY_C2D, sets), tmp_path / "run", progress=False, device="cpu")
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["swap_pairs"] == [["right", "left"]]
    mirror.unlink()
    r = CliRunner().invoke(cli, ["eval", str(tmp_path / "run" / "last.pt"), "--data",
                                 str(toy_train_prepared), "--clips", "1", "--crops", "10",
                                 "--crop-size", "24", "--workers", "0", "--device", "cpu",
                                 "--out", str(tmp_path / "ev"), "--no-progress"], prog_name="vcorr")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert m["swap_pairs"] == [["right", "left"]] and m["views_per_video"] == 10


def test_model_arg_changes_k_at_test_time_but_never_the_weights(
        tmp_path: Path, toy_train_prepared: Path) -> None:
    """Issue 23, item 5 (CPNet Table 3(b): train with one k, test with another): ``--model-arg
    k=1`` builds the CP module with k = 1 and loads the trained weights unchanged; an argument
    that would change the weights (``width``) is refused in one line, nothing written."""
    from vcorr.cli.main import cli
    from vcorr.pipelines.train import load_config, train
    from vcorr.pipelines.train.trainer import model_from_checkpoint

    sets = [f"data.root={json.dumps(str(toy_train_prepared))}", "data.workers=0",
            'model.name="toy_cpnet"', "optim.batch_size=4", "optim.epochs=1",
            "optim.warmup_epochs=0", "train.max_steps_per_epoch=2", "train.val_every=0",
            "model.args={width=8}"]
    train(load_config(TOY_C2D, sets), tmp_path / "run", progress=False, device="cpu")
    ckpt = tmp_path / "run" / "last.pt"

    trained, _ = model_from_checkpoint(ckpt)
    k1, _ = model_from_checkpoint(ckpt, {"k": 1})
    ks = lambda m: [x.k for x in m.modules() if hasattr(x, "knn_features")]  # noqa: E731
    assert ks(trained) == [2] and ks(k1) == [1]  # toy_cpnet is registered with k = 2
    a, b = trained.state_dict(), k1.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def eval_(out: Path, *extra: str):
        return CliRunner().invoke(cli, ["eval", str(ckpt), "--data", str(toy_train_prepared),
                                        "--clips", "1", "--crops", "1", "--workers", "0",
                                        "--device", "cpu", "--out", str(out), "--no-progress",
                                        *extra], prog_name="vcorr")

    r = eval_(tmp_path / "k1", "--model-arg", "k=1")
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "k1" / "metrics.json").read_text())
    assert m["settings"]["model_args"] == {"k": 1}
    r = eval_(tmp_path / "wide", "--model-arg", "width=16")
    assert r.exit_code == 2 and "changes the model's weights" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "wide").exists()
    r = eval_(tmp_path / "bad", "--model-arg", "k")
    assert r.exit_code == 2 and "KEY=VALUE" in r.output


def test_eval_refuses_bad_input(tmp_path: Path, toy_checkpoint: Path) -> None:
    from vcorr.cli.main import cli

    r = CliRunner().invoke(cli, ["eval", str(tmp_path / "none.pt")], prog_name="vcorr")
    assert r.exit_code == 2 and "checkpoint not found" in r.output
    # Issue 25: a typo in the checkpoint's name is reported as such, even where the default
    # output folder holds results; best.pt and last.pt have their own default folders.
    from vcorr.pipelines.evaluate.evaluate import EvalSettings, default_out

    s = EvalSettings()
    taken = default_out(tmp_path / "bset.pt", "val", s)
    taken.mkdir()
    (taken / "metrics.json").write_text("{}")
    r = CliRunner().invoke(cli, ["eval", str(tmp_path / "bset.pt")], prog_name="vcorr")
    assert r.exit_code == 2 and "bset.pt: checkpoint not found" in r.output, r.output
    assert default_out(tmp_path / "best.pt", "val", s).name == "eval_val_10x3"
    assert default_out(tmp_path / "last.pt", "val", s).name == "eval_last_val_10x3"
    r = CliRunner().invoke(cli, ["eval", str(toy_checkpoint), "--data", str(tmp_path)],
                           prog_name="vcorr")
    assert r.exit_code == 2 and "not a prepared dataset" in r.output


def test_bench_eval_runs_on_the_toy_set(tmp_path: Path, toy_train_prepared: Path) -> None:
    from vcorr.cli.main import cli

    out = tmp_path / "bench.json"
    r = CliRunner().invoke(cli, ["bench", "eval", str(toy_train_prepared), "--model", "toy_c2d",
                                 "--frames", "4", "--crop", "28", "--short-side", "0",
                                 "--clips", "2", "--crops", "10", "--videos", "3",
                                 "--workers", "0", "--device", "cpu", "--json", str(out)],
                           prog_name="vcorr")
    assert r.exit_code == 0, r.output + repr(r.exception)
    b = json.loads(out.read_text())
    assert b["videos"] == 3 and b["views_per_video"] == 20 and b["videos_per_s"] > 0
    assert 0 <= b["overhead_share"] <= 1 and isinstance(b["target_met"], bool)


def test_help_has_examples() -> None:
    from vcorr.cli.main import cli

    for args in (["eval", "--help"], ["compare", "--help"], ["bench", "eval", "--help"]):
        r = CliRunner().invoke(cli, args, prog_name="vcorr")
        assert r.exit_code == 0 and "Examples:" in r.output, args


# --- torchrun: videos sharded over ranks, scores gathered ---------------------------------------

def _eval_worker(rank: int, port: int, ckpt: str, data: str, out: str) -> None:
    import os

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from vcorr.pipelines.evaluate import evaluate_checkpoint

    evaluate_checkpoint(ckpt, data, out, "val", EvalSettings(clips=2, crops=3, workers=0),
                        device="cpu")


def test_two_rank_gloo_eval_equals_one_process(tmp_path: Path, toy_checkpoint: Path,
                                               toy_train_prepared: Path) -> None:
    """Under torchrun each rank scores every second video and rank 0 writes the gathered
    results: the same files as one process (scores equal, in video order)."""
    import socket

    import torch.multiprocessing as mp

    from vcorr.pipelines.evaluate import evaluate_checkpoint

    single = tmp_path / "single"
    evaluate_checkpoint(toy_checkpoint, toy_train_prepared, single, "val",
                        EvalSettings(clips=2, crops=3, workers=0), device="cpu")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ddp = tmp_path / "ddp"
    mp.start_processes(_eval_worker, args=(port, str(toy_checkpoint), str(toy_train_prepared),
                                           str(ddp)), nprocs=2, start_method="spawn")
    a, b = np.load(single / "scores.npz"), np.load(ddp / "scores.npz")
    assert list(a["ids"]) == list(b["ids"]) and len(a["ids"]) > 2
    np.testing.assert_allclose(a["scores"], b["scores"], atol=1e-6)
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (single, ddp))
    assert ma["num_videos"] == mb["num_videos"] and ma["top1"] == mb["top1"]
    assert ma["confusion_matrix"] == mb["confusion_matrix"]
