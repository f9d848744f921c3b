"""Temporal-order analysis (issue 22): `vcorr eval --frame-order reversed|shuffled` and
`vcorr compare ORIGINAL --order OTHER`.

The reference is a hand-made motion model on the toy dataset (a square moving up, down, left or
right): it scores the displacement of the brightness centroid from the first to the last fed
frame, so on reversed clips it must predict exactly the opposite direction, and on shuffled
clips what the permutation's first and last frames say. The expected predictions are computed
here in float64 NumPy from the stored frames, not by the evaluation code."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from vcorr.pipelines.errors import UserError
from vcorr.pipelines.evaluate import (EvalSettings, build_views, compute_metrics, crop_boxes,
                                      frame_permutation, order_drop, order_frames)
from vcorr.pipelines.evaluate.compare import load_result
from vcorr.pipelines.evaluate.evaluate import run_views

REPO = Path(__file__).resolve().parents[1]
TOY_C2D = REPO / "examples" / "configs" / "toy_c2d.toml"
CLASSES = ["up", "down", "left", "right"]
OPPOSITE = {0: 1, 1: 0, 2: 3, 3: 2}


def cli():
    from vcorr.cli.main import cli as group

    return group


# --- the permutation itself --------------------------------------------------------------------

def indexed_clips(n: int, t: int) -> torch.Tensor:
    """(n, 3, t, 2, 2) clips whose every pixel of frame k of clip c holds 100 * c + k."""
    values = 100 * torch.arange(n).view(n, 1, 1, 1, 1) + torch.arange(t).view(1, 1, t, 1, 1)
    return values.expand(n, 3, t, 2, 2).contiguous()


def test_reversed_feeds_the_frames_last_to_first() -> None:
    clips = indexed_clips(2, 5)
    out = order_frames(clips, "reversed", "vid")
    assert out.shape == clips.shape
    for c in range(2):
        for pos in range(5):  # position pos shows frame 4 - pos, every channel and pixel
            assert (out[c, :, pos] == 100 * c + 4 - pos).all()
    assert order_frames(clips, "original", "vid") is clips
    assert frame_permutation(4, "reversed", "v", 0) == [3, 2, 1, 0]
    # every crop of a clip is cut after the reordering, so all crops share it
    views, _ = build_views(out, crop_boxes(2, 2, 1, 10))
    assert views.shape[0] == 20
    assert (views[:10, :, 0] == 4).all() and (views[10:, :, 0] == 104).all()


@pytest.mark.parametrize("t", [2, 3, 8, 16])
def test_shuffled_is_a_deterministic_permutation_never_the_identity(t: int) -> None:
    for vid in ("a", "b", "toy_00031"):
        for k in range(3):
            p = frame_permutation(t, "shuffled", vid, k, seed=0)
            assert sorted(p) == list(range(t)) and p != list(range(t))
            assert p == frame_permutation(t, "shuffled", vid, k, seed=0)  # same seed, same order
    if t == 2:
        assert frame_permutation(2, "shuffled", "a", 0) == [1, 0]
    if t >= 8:  # 8! orders: other clips, videos and seeds get other ones
        perms = {tuple(frame_permutation(t, "shuffled", vid, k, seed))
                 for vid in ("a", "b") for k in (0, 1) for seed in (0, 1)}
        assert len(perms) == 8


def test_shuffled_clips_follow_their_own_permutation() -> None:
    clips = indexed_clips(3, 8)
    out = order_frames(clips, "shuffled", "vid7", seed=5)
    for c in range(3):
        perm = frame_permutation(8, "shuffled", "vid7", c, seed=5)
        assert [int(out[c, 0, pos, 0, 0]) for pos in range(8)] == [100 * c + f for f in perm]
        assert (out[c] == out[c, :1, :, :1, :1]).all()  # the whole frame moved, not a pixel
    assert torch.equal(out, order_frames(clips, "shuffled", "vid7", seed=5))
    assert not torch.equal(out, order_frames(clips, "shuffled", "vid7", seed=6))
    with pytest.raises(ValueError, match="frame order must be one of"):
        order_frames(clips, "backwards", "vid7")


def test_shuffled_orders_are_uniform_over_the_non_identity_permutations() -> None:
    counts: dict[tuple, int] = {}
    for i in range(2500):
        p = tuple(frame_permutation(3, "shuffled", f"v{i}", 0))
        counts[p] = counts.get(p, 0) + 1
    assert set(counts) == {(0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)}
    assert all(400 <= c <= 600 for c in counts.values())  # 500 each expected, sd ~20


# --- hand-made models on the toy dataset -------------------------------------------------------

def centroids(x: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, T, 2) brightness-weighted (y, x) centroid of every frame."""
    w = x.float().mean(1)
    h, wd = w.shape[-2:]
    ys = torch.arange(h, dtype=w.dtype).view(h, 1)
    xs = torch.arange(wd, dtype=w.dtype).view(1, wd)
    total = w.sum((-2, -1)).clamp_min(1e-6)
    return torch.stack([(w * ys).sum((-2, -1)) / total, (w * xs).sum((-2, -1)) / total], -1)


class MotionModel(nn.Module):
    """Logits (up, down, left, right) = ``gain`` * (-dy, dy, -dx, dx), the centroid's
    displacement from the first to the last fed frame: it depends on the frame order."""

    def __init__(self, gain: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("direction", gain * torch.tensor(
            [[-1.0, 0.0], [1.0, 0.0], [0.0, -1.0], [0.0, 1.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = centroids(x)
        return (c[:, -1] - c[:, 0]) @ self.direction.T


class SpreadModel(nn.Module):
    """Logits (up, down, left, right) = (std of the centroid's y over time, 0, std of x, 0): a
    function of the set of frames, so the frame order cannot change it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = centroids(x).std(dim=1)
        zero = torch.zeros_like(s[:, 0])
        return torch.stack([s[:, 0], zero, s[:, 1], zero], 1)


def stored_val(dh, root: Path) -> dict[str, tuple[int, np.ndarray]]:
    """id -> (label index, (T, H, W, 3) uint8 frames) of the val videos, read directly."""
    return {r["id"]: (int(r["label_index"]), dh.stored_frames(root, r))
            for r in dh.read_csv(root / "index.csv") if r["split"] == "val"}


def expected_scores(frames: np.ndarray, perms: list[list[int]], gain: float = 0.5) -> np.ndarray:
    """float64 reference of MotionModel on clips of ``frames`` reordered by ``perms``
    (one per clip), softmax averaged over the clips."""
    f = frames.astype(np.float64).mean(-1) / 255  # (T, H, W)
    h, w = f.shape[1:]
    ys, xs = np.mgrid[0:h, 0:w]
    cen = np.stack([(f * ys).sum((1, 2)), (f * xs).sum((1, 2))], 1) / f.sum((1, 2))[:, None]
    probs = []
    for p in perms:
        dy, dx = cen[p[-1]] - cen[p[0]]
        logits = gain * np.array([-dy, dy, -dx, dx])
        e = np.exp(logits - logits.max())
        probs.append(e / e.sum())
    return np.mean(probs, 0)


def run(model: nn.Module, root: Path, order: str, seed: int = 0) -> dict:
    s = EvalSettings(clips=2, crops=3, workers=0, frame_order=order, frame_order_seed=seed)
    return run_views(model, root, "val", frames=3, interval=1, sampler="dense", crop_size=32,
                     short_side=None, normalize=False, settings=s, swap_map={},
                     device=torch.device("cpu"))


def test_motion_model_reversed_and_shuffled_predictions_by_hand(
        dh, toy_train_prepared: Path) -> None:
    videos = stored_val(dh, toy_train_prepared)
    results = {order: run(MotionModel(), toy_train_prepared, order)
               for order in ("original", "reversed", "shuffled")}
    for order, r in results.items():
        assert sorted(r["ids"]) == sorted(videos) and not r["failed"]
        for vid, label, sc in zip(r["ids"], r["labels"], r["scores"]):
            frames = videos[vid][1]
            assert frames.shape[0] == 3 and label == videos[vid][0]
            # both evenly spaced clips of a 3-frame video are frames 0, 1, 2
            perms = [frame_permutation(3, order, vid, k) for k in range(2)]
            want = expected_scores(frames, perms)
            np.testing.assert_allclose(sc, want, atol=1e-5)
            pred = int(sc.argmax())
            if order == "original":
                assert pred == label  # the square's motion gives the class
            elif order == "reversed":
                assert pred == OPPOSITE[label]  # time reversal = the opposite direction
            else:
                assert pred == int(want.argmax())
    m = {o: compute_metrics(r["scores"], r["labels"], CLASSES) for o, r in results.items()}
    assert m["original"]["top1"] == 1.0 and m["reversed"]["top1"] == 0.0
    with_videos = [p["class"] for p in m["original"]["per_class"] if p["support"]]
    for o in ("original", "reversed"):
        m[o].update(frame_order=o, _path=o)
    d = order_drop(m["original"], m["reversed"])
    assert [r["drop"] for r in d["rows"]] == [1.0] * len(with_videos)
    assert d["summary"]["mean_drop"] == 1.0 and d["summary"]["top1_drop"] == 1.0
    # a shuffled clip keeps the direction when its last frame comes after its first
    kept = [int(frame_permutation(3, "shuffled", v, 0)[-1] > frame_permutation(
        3, "shuffled", v, 0)[0]) for v in results["shuffled"]["ids"]]
    assert 0 < sum(kept) < len(kept)  # this data set has both cases: the test sees both


def test_order_invariant_model_has_zero_drop_on_every_class(dh,
                                                            toy_train_prepared: Path) -> None:
    base = run(SpreadModel(), toy_train_prepared, "original")
    mo = compute_metrics(base["scores"], base["labels"], CLASSES)
    mo.update(frame_order="original", _path="original")
    # up and left win on their axis (down and right score 0): accuracy differs by class
    accs = {p["class"]: p["accuracy"] for p in mo["per_class"] if p["support"]}
    assert {accs.get("up", 1.0), accs.get("left", 1.0)} == {1.0}
    assert {accs.get("down", 0.0), accs.get("right", 0.0)} == {0.0}
    for order in ("reversed", "shuffled"):
        r = run(SpreadModel(), toy_train_prepared, order, seed=3)
        np.testing.assert_allclose(r["scores"], base["scores"], atol=1e-6)
        mr = compute_metrics(r["scores"], r["labels"], CLASSES)
        mr.update(frame_order=order, _path=order)
        d = order_drop(mo, mr)
        assert d["rows"] and all(row["drop"] == 0.0 for row in d["rows"])
        s = d["summary"]
        assert (s["mean_drop"], s["dropped"], s["rose"], s["equal"]) == (0.0, 0, 0, len(d["rows"]))


# --- the commands end to end, with the motion model as the checkpoint's model ---------------------

@pytest.fixture()
def motion_checkpoint(tmp_path: Path, toy_train_prepared: Path, monkeypatch) -> Path:
    """A checkpoint path whose model is :class:`MotionModel` (``gain`` from the file name:
    ``*_double.pt`` has other weights)."""
    from vcorr.pipelines.train import load_config, trainer

    cfg = load_config(TOY_C2D, [f"data.root={json.dumps(str(toy_train_prepared))}"])

    def fake(path, model_args=None):  # the real signature
        gain = 1.0 if str(path).endswith("_double.pt") else 0.5
        return MotionModel(gain), {"config": cfg, "classes": CLASSES, "model_name": "motion"}

    monkeypatch.setattr(trainer, "model_from_checkpoint", fake)
    (tmp_path / "run").mkdir()
    return tmp_path / "run" / "best.pt"


def invoke(args: list[str]):
    return CliRunner().invoke(cli(), args, prog_name="vcorr")


def eval_args(ckpt: Path, *extra: str) -> list[str]:
    return ["eval", str(ckpt), "--clips", "2", "--crops", "3", "--crop-size", "32",
            "--short-side", "0", "--workers", "0", "--device", "cpu", "--no-progress", *extra]


def test_cli_eval_orders_and_compare_order_report(dh, tmp_path: Path, motion_checkpoint: Path,
                                                  toy_train_prepared: Path) -> None:
    run_dir = motion_checkpoint.parent
    for extra in ([], ["--frame-order", "reversed"], ["--frame-order", "shuffled", "--seed", "4"]):
        r = invoke(eval_args(motion_checkpoint, *extra))
        assert r.exit_code == 0, r.output + repr(r.exception)
    folders = {o: run_dir / f"eval_val_2x3{s}" for o, s in
               (("original", ""), ("reversed", "_reversed"), ("shuffled", "_shuffled_seed4"))}
    m = {o: json.loads((f / "metrics.json").read_text()) for o, f in folders.items()}
    assert [m[o]["frame_order"] for o in folders] == list(folders)
    assert [m[o]["frame_order_seed"] for o in folders] == [None, None, 4]
    assert m["shuffled"]["settings"]["frame_order_seed"] == 4
    assert len({m[o]["weights_sha256"] for o in folders}) == 1
    # the predictions of every run, against the float64 reference
    videos = stored_val(dh, toy_train_prepared)
    for o, f in folders.items():
        with open(f / "predictions.csv", newline="") as fh:
            for row in csv.DictReader(fh):
                perms = [frame_permutation(3, o, row["id"], k, 4) for k in range(2)]
                want = CLASSES[int(expected_scores(videos[row["id"]][1], perms).argmax())]
                assert row["predicted"] == want, (o, row)
    # the per-class drop by hand from the reference predictions
    hand: dict[str, dict[str, list[int]]] = {}
    for vid, (label, frames) in videos.items():
        for o in folders:
            perms = [frame_permutation(3, o, vid, k, 4) for k in range(2)]
            ok = int(expected_scores(frames, perms).argmax() == label)
            hand.setdefault(CLASSES[label], {}).setdefault(o, []).append(ok)
    out = tmp_path / "order"
    r = invoke(["compare", str(folders["original"]), "--order", str(folders["reversed"]),
                "--order", str(folders["shuffled"]), "--out", str(out)])
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "largest drops" in r.output
    for o in ("reversed", "shuffled"):
        with open(out / o / "drop.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        want = {c: np.mean(v["original"]) - np.mean(v[o]) for c, v in hand.items()}
        assert {x["class"]: float(x["drop"]) for x in rows} == pytest.approx(want, abs=1e-6)
        assert [float(x["drop"]) for x in rows] == sorted((float(x["drop"]) for x in rows),
                                                          reverse=True)
        s = json.loads((out / o / "summary.json").read_text())
        assert s["frame_order"] == o and s["mean_drop"] == pytest.approx(
            np.mean(list(want.values())))
        assert (out / o / "drop.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / o / "drop.md").is_file()
    # the motion model is right on every original clip and wrong on every reversed one
    with open(out / "reversed" / "drop.csv", newline="") as fh:
        assert {float(x["drop"]) for x in csv.DictReader(fh)} == {1.0}
    # an evaluation into an existing result folder is refused before any work
    r = invoke(eval_args(motion_checkpoint, "--frame-order", "reversed"))
    assert r.exit_code == 2 and "eval_val_2x3_reversed" in r.output
    # another checkpoint's weights (evaluated as reversed): refused, one line, exit 2
    other = motion_checkpoint.with_name("best_double.pt")
    double = tmp_path / "double_reversed"
    assert invoke(eval_args(other, "--frame-order", "reversed", "--out", str(double))
                  ).exit_code == 0
    r = invoke(["compare", str(folders["original"]), "--order", str(double), "--out",
                str(tmp_path / "o2")])
    one_error_line(r, "different weights", "best.pt", "best_double.pt")
    assert not (tmp_path / "o2").exists()


def test_eval_default_folder_and_seed_option(motion_checkpoint: Path) -> None:
    r = invoke(eval_args(motion_checkpoint, "--frame-order", "reversed", "--seed", "2"))
    assert r.exit_code == 2 and r.output.strip() == (
        "error: --seed applies to --frame-order shuffled only")
    r = invoke(eval_args(motion_checkpoint, "--frame-order", "shuffled"))
    assert r.exit_code == 0, r.output
    m = json.loads((motion_checkpoint.parent / "eval_val_2x3_shuffled" / "metrics.json")
                   .read_text())
    assert (m["frame_order"], m["frame_order_seed"]) == ("shuffled", 0)
    r = invoke(eval_args(motion_checkpoint, "--frame-order", "backwards"))
    assert r.exit_code == 2 and "backwards" in r.output


# --- compare --order against numbers by hand, and bad input ------------------------------------

def fake(folder: Path, accs: list[float | None], top1: float, order: str = "original",
         classes: tuple[str, ...] = ("run", "jump", "swim", "walk"), support: int = 4,
         digest: str = "abc", **extra) -> Path:
    folder.mkdir(parents=True)
    per = [{"class": c, "accuracy": a, "support": support if a is not None else 0}
           for c, a in zip(classes, accs)]
    (folder / "metrics.json").write_text(json.dumps(dict(
        {"top1": top1, "per_class": per, "checkpoint": "runs/x/best.pt",
         "weights_sha256": digest, "frame_order": order, "clips": 2, "crops": 3,
         "split": "val", "frame_order_seed": 7 if order == "shuffled" else None}, **extra)))
    return folder


def test_compare_order_report_by_hand(tmp_path: Path) -> None:
    orig = fake(tmp_path / "orig", [0.75, 1.0, 0.5, 0.25], 0.625)
    rev = fake(tmp_path / "rev", [0.25, 1.0, 0.75, 0.25], 0.5625, "reversed")
    out = tmp_path / "cmp"
    r = invoke(["compare", str(orig), "--order", str(rev), "--out", str(out), "--top", "1"])
    assert r.exit_code == 0, r.output + repr(r.exception)
    with open(out / "drop.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # drops: run 0.75-0.25=0.5, jump 0, swim 0.5-0.75=-0.25, walk 0; ties by class name
    assert [x["class"] for x in rows] == ["run", "jump", "walk", "swim"]
    assert [float(x["drop"]) for x in rows] == [0.5, 0.0, 0.0, -0.25]
    assert [float(x["original_accuracy"]) for x in rows] == [0.75, 1.0, 0.25, 0.5]
    assert [float(x["reordered_accuracy"]) for x in rows] == [0.25, 1.0, 0.25, 0.75]
    assert list(rows[0]) == ["class", "original_accuracy", "reordered_accuracy", "drop",
                             "support"]
    s = json.loads((out / "summary.json").read_text())
    assert s["mean_drop"] == pytest.approx((0.5 + 0 - 0.25 + 0) / 4)
    assert s["top1_drop"] == pytest.approx(0.0625)
    assert (s["dropped"], s["rose"], s["equal"]) == (1, 1, 2)
    assert [x["class"] for x in s["largest_drops"]] == ["run"]
    assert [x["class"] for x in s["largest_rises"]] == ["swim"]
    assert s["frame_order"] == "reversed" and s["name"] == "reversed"
    md = (out / "drop.md").read_text()
    assert "| class | original accuracy | reversed accuracy | drop | support |" in md
    assert "| run | 75.0% | 25.0% | +50.0 | 4 |" in md
    assert "| swim | 50.0% | 75.0% | -25.0 | 4 |" in md
    assert "; 1 class dropped, 1 rose, 2 equal" in md  # issue 25, item 6: not "1 classes"
    # a class without videos is left out of the rows and the mean; the library call agrees
    o2 = fake(tmp_path / "o2", [1.0, None, 0.5, 0.5], 0.6)
    s2 = fake(tmp_path / "s2", [0.0, None, 0.5, 1.0], 0.5, "shuffled")
    d = order_drop(load_result(o2), load_result(s2))
    assert [(x["class"], x["drop"]) for x in d["rows"]] == [("run", 1.0), ("swim", 0.0),
                                                            ("walk", -0.5)]
    assert d["summary"]["mean_drop"] == pytest.approx(0.5 / 3)
    assert d["summary"]["classes_without_videos"] == ["jump"]
    assert d["summary"]["frame_order_seed"] == 7


def one_error_line(r, *needles: str) -> None:
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for n in needles:
        assert n in lines[0], (n, lines[0])


def test_compare_order_refuses_bad_input(tmp_path: Path) -> None:
    orig = fake(tmp_path / "orig", [0.5, 0.5, 0.5, 0.5], 0.5)
    rev = fake(tmp_path / "rev", [0.5, 0.5, 0.5, 0.5], 0.5, "reversed")
    cases = {
        "classes": (fake(tmp_path / "cls", [0.5] * 4, 0.5, "reversed",
                         classes=("run", "jump", "swim", "fly")), "different class lists"),
        "weights": (fake(tmp_path / "w", [0.5] * 4, 0.5, "reversed", digest="def"),
                    "different weights"),
        "views": (fake(tmp_path / "v", [0.5] * 4, 0.5, "reversed", clips=10),
                  "differ in clips (2 vs 10)"),
        "not reordered": (fake(tmp_path / "o", [0.5] * 4, 0.5), "--frame-order original"),
    }
    for what, (bad, needle) in cases.items():
        out = tmp_path / f"out_{what.replace(' ', '_')}"
        one_error_line(invoke(["compare", str(orig), "--order", str(bad), "--out", str(out)]),
                       needle)
        assert not out.exists(), what
        with pytest.raises(UserError, match=needle.split(" (")[0]):
            order_drop(load_result(orig), load_result(bad))
    # older results without a weights digest: the checkpoint paths decide
    old_a = fake(tmp_path / "old_a", [0.5] * 4, 0.5, digest="")
    old_b = fake(tmp_path / "old_b", [0.5] * 4, 0.5, "reversed", digest="",
                 checkpoint="runs/y/best.pt")
    one_error_line(invoke(["compare", str(old_a), "--order", str(old_b)]),
                   "different checkpoints", "runs/x/best.pt", "runs/y/best.pt")
    # the reordered result given first
    one_error_line(invoke(["compare", str(rev), "--order", str(orig)]),
                   "--frame-order reversed", "give the original-order result first")
    # the options
    one_error_line(invoke(["compare", str(orig), "--order", str(rev), "--baseline", str(orig)]),
                   "either --baseline")
    one_error_line(invoke(["compare", str(orig)]), "either --baseline")
    one_error_line(invoke(["compare", str(orig), str(orig), "--order", str(rev)]),
                   "one original-order RESULT, got 2")
    one_error_line(invoke(["compare", str(orig), "--order", str(tmp_path / "missing")]),
                   "not found")


def test_help_explains_order() -> None:
    r = invoke(["eval", "--help"])
    assert "--frame-order" in r.output and "--seed" in r.output
    r = invoke(["compare", "--help"])
    assert "--order" in r.output and "need motion" in r.output and "Examples:" in r.output


def test_c2d_is_frame_order_invariant_and_c3d_is_not() -> None:
    """What the README says of C2D's drop: 2D convolutions and a time average in the head,
    so a reordered clip gives the same logits (to float rounding); a 3D conv does not."""
    from vcorr.models.registry import create_model

    torch.manual_seed(0)
    x = torch.rand(1, 3, 4, 32, 32)
    for name, invariant in (("c2d_r18", True), ("c3d_r18", False)):
        m = create_model(name, num_classes=5).eval()
        with torch.no_grad():
            a = m(x)
            for order in ("reversed", "shuffled"):
                b = m(order_frames(x, order, "v"))
                assert torch.allclose(a, b, atol=1e-5) == invariant, (name, order)
