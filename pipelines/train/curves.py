"""Training curves from ``metrics.jsonl`` records: ``RUN_DIR/curves.png`` of one run (written by
the trainer after every validation) and the overlay of several runs' validation curves
(``vcorr runs --plot``).

A record is one line of ``metrics.jsonl`` (see :mod:`vcorr.pipelines.train.trainer`): ``split`` is
``"train"`` (a window of ``train.log_every`` steps, ``epoch`` fractional) or ``"val"`` (after an
epoch, ``epoch`` = epochs done); ``loss``, ``top1`` (0-1), ``top5`` (val, None under 6 classes),
``lr``. Epochs on the x axes are counted over all phases.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vcorr.pipelines.visualize.figures import plt, save


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, in order. A line that does not parse (the
    half-written last line of a killed process) is skipped: the trainer drops it on resume.
    A missing file has no records."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("split") in ("train", "val"):
            out.append(rec)
    return out


def phase_spans(plan: Sequence[dict[str, Any]]) -> list[tuple[float, float, str]]:
    """(first epoch, last epoch, label) of each phase of a plan
    (:func:`vcorr.pipelines.train.config.phases`), e.g. ``(0, 4, "phase 1: 8f, lr 0.01")``."""
    spans, start = [], 0.0
    for i, p in enumerate(plan):
        label = f"phase {i + 1}: {p['frames']}f, lr {p['lr']:g}"
        if p.get("freeze_bn"):
            label += ", frozen BN"
        spans.append((start, start + p["epochs"], label))
        start += p["epochs"]
    return spans


def _xy(recs: list[dict[str, Any]], key: str, scale: float = 1.0) -> tuple[list, list]:
    pts = [(r["epoch"], r[key] * scale) for r in recs
           if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run_curves(records: list[dict[str, Any]], path: str | Path, *, title: str,
                    plan: Sequence[dict[str, Any]] = ()) -> Path:
    """``path`` (PNG, written atomically): train loss and val loss; train top-1, val top-1 and
    top-5 (%, where recorded); the learning rate; all against epochs, the phases of ``plan`` marked by dashed
    lines and labelled, the best val top-1 starred. 800 x 840 px."""
    p = plt()
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    fig, (ax_loss, ax_acc, ax_lr) = p.subplots(3, 1, figsize=(8, 8.4), sharex=True,
                                               gridspec_kw={"height_ratios": [3, 3, 1.6]})
    ax_loss.plot(*_xy(train, "loss"), lw=0.8, color="tab:blue", alpha=0.8, label="train")
    ax_loss.plot(*_xy(val, "loss"), "o-", ms=3.5, color="tab:orange", label="val")
    ax_loss.set_ylabel("loss (cross-entropy)")
    ax_acc.plot(*_xy(train, "top1", 100), lw=0.8, color="tab:blue", alpha=0.8,
                label="train top-1")
    ax_acc.plot(*_xy(val, "top1", 100), "o-", ms=3.5, color="tab:orange", label="val top-1")
    x5, y5 = _xy(val, "top5", 100)
    if x5:
        ax_acc.plot(x5, y5, "s--", ms=3, color="tab:green", label="val top-5")
    bx, by = _xy(val, "top1", 100)
    if by:
        i = max(range(len(by)), key=by.__getitem__)
        ax_acc.plot(bx[i], by[i], "*", ms=13, color="tab:red", zorder=5,
                    label=f"best val top-1 {by[i]:.1f}% (epoch {bx[i]:g})")
    # top-5 is None under 6 classes: the axis names only what is plotted
    ax_acc.set_ylabel("top-1 / top-5 (%)" if x5 else "top-1 (%)")
    ax_acc.set_ylim(-2, 102)
    ax_lr.plot(*_xy(train, "lr"), lw=1.0, color="tab:purple")
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("epoch")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    spans = phase_spans(plan)
    right = max([s[1] for s in spans] + [r["epoch"] for r in records] + [1])
    ax_lr.set_xlim(-0.02 * right, 1.02 * right)  # room for the markers at both ends
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.grid(alpha=0.3)
        for start, _, _ in spans[1:]:
            ax.axvline(start, color="0.4", ls="--", lw=0.9)
    for start, end, label in spans if len(spans) > 1 else ():
        ax_loss.text((start + end) / 2, 1.01, label, transform=ax_loss.get_xaxis_transform(),
                     ha="center", va="bottom", fontsize=8, color="0.25")
    for ax in (ax_loss, ax_acc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    fig.suptitle(title, fontsize=10)
    # fixed margins: tight_layout would cost a third of the drawing, at every validation
    fig.subplots_adjust(left=0.1, right=0.98, top=0.91, bottom=0.06, hspace=0.12)
    written: list[Path] = []
    save(fig, Path(path), written)
    return written[0]


def plot_val_overlay(runs: Sequence[tuple[str, list[dict[str, Any]]]], path: str | Path
                     ) -> Path:
    """``path`` (PNG, atomic): the val top-1 (%) and val loss of several runs against epochs,
    one colour per run (``runs``: (label, records)). 900 x 700 px."""
    p = plt()
    fig, (ax_acc, ax_loss) = p.subplots(2, 1, figsize=(9, 7), sharex=True)
    for i, (label, records) in enumerate(runs):
        val = [r for r in records if r["split"] == "val"]
        # Colour and marker both differ, so that runs on the same values stay apart.
        style = {"color": p.get_cmap("tab10")(i % 10), "marker": "os^Dv<>ph*"[i % 10],
                 "ls": "-" if i < 10 else "--", "ms": 4, "label": label}
        ax_acc.plot(*_xy(val, "top1", 100), **style)
        ax_loss.plot(*_xy(val, "loss"), **style)
    ax_acc.set_ylabel("val top-1 (%)")
    ax_loss.set_ylabel("val loss")
    ax_loss.set_xlabel("epoch")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8, loc="best")
    fig.suptitle("validation curves", fontsize=10)
    fig.tight_layout()
    written: list[Path] = []
    save(fig, Path(path), written)
    return written[0]
