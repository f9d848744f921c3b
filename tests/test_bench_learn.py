"""The motion benchmark's statistics (``vcorr bench learn``), against hand-made expectations and
published binomial tables. The benchmark itself is a benchmark, not a test (README)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from vcorr.pipelines.bench.learn import (BASELINE, LearnPlan, binomial_interval, checks,
                                         model_names, pair_accuracy, summarize_model)
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
