"""The motion benchmark's statistics (``vcorr bench learn``), against hand-made expectations and
published binomial tables. The benchmark itself is a benchmark, not a test (README)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from vcorr.pipelines.bench.learn import (BASELINE, LearnPlan, binomial_interval, checks,
                                         model_names, pair_accuracy, read_scores,
                                         summarize_model)
from vcorr.pipelines.data.motion import REVERSAL_PAIRS
from vcorr.pipelines.errors import UserError

CLASSES = ["left", "right", "up", "down", "ctrl_a"]
PAIRS = [("left", "right"), ("up", "down")]


@pytest.mark.parametrize("n,expected", [(100, (37, 63)), (20, (4, 16)), (1, (0, 1))])
def test_binomial_interval_matches_the_tables(n, expected):
    """99% central interval of Binomial(n, 1/2): n=100 -> 37..63 (P(X<=36)=0.0033,
    P(X<=37)=0.0060); n=20 -> 4..16 (P(X<=3)=0.0013, P(X<=4)=0.0059)."""
    assert binomial_interval(n) == expected


def test_binomial_interval_tails_are_at_most_half_a_percent():
    for n in (7, 50, 113, 400):
        lo, hi = binomial_interval(n)
        below = sum(math.comb(n, k) for k in range(lo)) / 2 ** n
        above = sum(math.comb(n, k) for k in range(hi + 1, n + 1)) / 2 ** n
        assert below <= 0.005 and above <= 0.005
        # one more count on either side would exceed the tail
        assert below + math.comb(n, lo) / 2 ** n > 0.005


def test_pair_accuracy_counts_the_true_class_above_its_reversal():
    # 4 videos of the left/right pair, 1 of up, 1 of the control
    labels = np.array([0, 0, 1, 1, 2, 4])
    scores = np.zeros((6, 5))
    scores[0, [0, 1]] = [0.6, 0.4]      # left, right wins: correct
    scores[1, [0, 1, 4]] = [0.2, 0.3, 0.5]   # left scored below right: wrong (argmax is ctrl)
    scores[2, [0, 1, 3]] = [0.1, 0.2, 0.7]   # right above left: correct, though argmax is down
    scores[3, [0, 1]] = [0.5, 0.5]      # a tie counts as wrong
    r = pair_accuracy(scores, labels, CLASSES, ("left", "right"))
    assert (r["videos"], r["correct"], r["accuracy"]) == (4, 2, 0.5)
    assert r["within_chance_interval"] is True


def test_summary_and_checks_on_hand_made_scores():
    """A frame-order-blind model: the same scores for a video and its reversal; a motion model:
    perfect, and wrong when reversed. The checks say which holds."""
    rng = np.random.default_rng(0)
    n = 200
    labels = np.repeat([0, 1, 2, 3, 4], n // 5)
    blind = rng.random((n, 5))
    blind[labels == 4, 4] = 10.0                       # controls right
    motion = np.eye(5)[labels] + 0.01 * rng.random((n, 5))
    rev = np.eye(5)[[1, 0, 3, 2, 4]][labels]           # reversed clips: the partner class
    ev = lambda s: {"classes": CLASSES, "labels": labels, "scores": s}  # noqa: E731
    base = summarize_model(ev(blind), ev(blind), PAIRS, ["ctrl_a"])
    good = summarize_model(ev(motion), ev(rev), PAIRS, ["ctrl_a"])
    assert good["pair_mean"] == 1.0 and good["controls"] == 1.0
    assert good["pair_mean_reversed"] == 0.0 and good["drop_reversed"] == pytest.approx(0.8)
    assert base["drop_reversed"] == 0.0 and base["controls"] == 1.0
    good["label"] = "CPNet"
    got = {c["check"]: c["holds"] for c in checks({BASELINE: base, "cpnet": good})}
    assert got["C2D at least 90% on the controls"] is True
    assert got["CPNet at least 30 points above C2D on the pairs"] is (good["pair_mean"]
                                                                      - base["pair_mean"] >= 0.3)
    assert got["C2D pair mean within 5 points of 50%"] is (abs(base["pair_mean"] - 0.5) <= 0.05)


def test_plan_needs_the_baseline_and_known_models():
    with pytest.raises(UserError, match="must include c2d"):
        model_names(LearnPlan(videos=100, epochs=1, models=("cpnet",)))
    with pytest.raises(UserError, match="unknown model key"):
        model_names(LearnPlan(videos=100, epochs=1, models=("c2d", "nope")))
    assert list(model_names(LearnPlan(videos=100, epochs=1, models=("dcf", "c2d")))) == ["c2d", "dcf"]


# --------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """``vcorr bench learn`` on 64 videos, C2D and CorrNet, one epoch: every stage as a real
    command (about a minute on 2 cores). Learning is not the point here (the benchmark is)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("learn") / "out"
    proc = subprocess.run([sys.executable, "-m", "vcorr", "bench", "learn", "--models",
                           "c2d,corrnet", "--videos", "64", "--epochs", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_smoke_runs_every_stage_and_writes_the_report(smoke):
    import json

    out, proc = smoke
    r = json.loads((out / "learn.json").read_text())
    verbs = [s["command"].split()[1] for s in r["stages"]]
    assert verbs == (["toy", "prepare", "train", "train"] + ["eval"] * 4
                     + ["compare"] * 3 + ["runs"])
    evals = [s["command"] for s in r["stages"] if s["command"].split()[1] == "eval"]
    assert all("--split test" in c and "--crops 3" in c for c in evals)
    assert sum("--frame-order reversed" in c for c in evals) == 2
    for name, path in r["artefacts"].items():
        assert Path(path).exists(), name
        assert str(path) in proc.stdout, name
    report = (out / "report.md").read_text()
    assert "| C2D (`c2d_tiny`) |" in report and "| CorrNet (`corrnet_tiny`) |" in report
    assert "![pairs](pairs.png)" in report and "![curves](curves.png)" in report
    assert [tuple(p) for p in r["pairs"]] == [tuple(p) for p in REVERSAL_PAIRS]
    # issue 25, item 6: two trainings, one note that TensorBoard is off (where it is missing)
    import importlib.util

    tb_missing = importlib.util.find_spec("tensorboard") is None
    assert proc.stdout.count("TensorBoard logging is off") == int(tb_missing), proc.stdout


def test_smoke_c2d_scores_do_not_depend_on_frame_order(smoke):
    """Through the whole pipeline (prepare, sampling, views, averaging), C2D's test scores on
    reversed clips equal those on the original clips: its drop is zero by construction."""
    out, _ = smoke
    orig = read_scores(out / "eval" / "c2d_original")
    rev = read_scores(out / "eval" / "c2d_reversed")
    assert orig["ids"] == rev["ids"] and len(orig["ids"]) > 0
    np.testing.assert_allclose(orig["scores"], rev["scores"], rtol=0, atol=1e-5)
    corr = read_scores(out / "eval" / "corrnet_original")
    corr_rev = read_scores(out / "eval" / "corrnet_reversed")
    assert np.abs(corr["scores"] - corr_rev["scores"]).max() > 1e-4  # it does see order
