"""``vcorr bench learn``: does each model learn motion? The motion benchmark, end to end.

``vcorr toy --kind motion`` (reversal pairs and appearance controls, :mod:`vcorr.pipelines.data.motion`)
-> ``vcorr prepare`` -> ``vcorr train`` of every model with one shared recipe
(``examples/configs/motion_bench.toml``) -> ``vcorr eval`` on the test split (clips x crops, no
mirrored views) in the original and in reversed frame order -> ``vcorr compare`` of each model
against C2D -> ``vcorr runs --plot`` (training curves) -> a report (Markdown, JSON, PNG).

Every stage is the real command line, run through the ``run(args)`` the caller passes (the CLI
runs its own commands), as in :mod:`vcorr.pipelines.demo`. The numbers that decide whether a
model learns motion are computed here from each evaluation's ``scores.npz``:

* **pair accuracy**: on the test videos of a reversal pair (A, B), the share whose true class
  scores above its time-reversed partner. A model that ignores frame order (C2D: 2D convs and a
  global average over time) sees the same frames in both classes by construction, so its pair
  accuracy is 50% in expectation; the check is that the mean over pairs is within 5 points of
  50% and that no pair leaves the 99% binomial interval of chance for its number of videos.
* **control accuracy**: top-1 on the appearance-only control classes (any model should be high).
* **drop under reversal**: top-1 on the original clips minus top-1 on the same clips reversed.

Source: issue 22 (the benchmark's definition and its expectations).
"""
from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vcorr.pipelines.demo import Stages, machine, new_folder, read_json
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.fileio import write_atomic

# (key, label, tiny registered model, full registered model); keys name the run folders.
MODELS: tuple[tuple[str, str, str, str], ...] = (
    ("c2d", "C2D", "c2d_tiny", "c2d_r18"),
    ("c3d", "C3D", "c3d_tiny", "c3d_r18"),
    ("r2plus1d", "R(2+1)D", "r2plus1d_tiny", "r2plus1d_26"),
    ("x3d", "X3D", "x3d_tiny", "x3d_s"),
    ("nl", "NL C2D", "nl_c2d_tiny", "nl_c2d_r18"),
    ("artnet", "ARTNet", "artnet_tiny", "artnet_r18"),
    ("cpnet", "CPNet", "cpnet_tiny", "cpnet_r18"),
    ("corrnet", "CorrNet", "corrnet_tiny", "corrnet_26"),
    ("dcf", "DCF", "dcf_tiny", "dcf_r2plus1d_50"),
)
BASELINE = "c2d"
MOTION_MODELS = ("cpnet", "corrnet", "dcf")   # the three papers' models
THREE_D = ("c3d", "r2plus1d", "x3d")           # local 3D filters, compared pair by pair
CONFIG = "motion_bench.toml"


@dataclass(frozen=True)
class LearnPlan:
    """How much data and training the benchmark uses (the rest is motion_bench.toml's recipe)."""

    videos: int                    # generated videos in all (the generator splits them)
    epochs: int                    # training epochs of every model
    clips: int = 2                 # test views per video: clips x crops (3 crops: no mirroring)
    crops: int = 3
    models: tuple[str, ...] = field(default=tuple(k for k, *_ in MODELS))
    size: str = "tiny"             # "tiny" (CPU) or "full" (the registered sizes, for a GPU)
    seed: int = 0


# Sized for the 2-core CPU machine (README "Does it learn motion?": the full plan within about
# 45 minutes, --quick within about 10). One clip per video covers 22 of its 25 stored frames,
# so a second clip would see nearly the same frames; 3 crops and no mirrored views.
# NL C2D and ARTNet (not asked for by the expectations) run with --models.
FULL = LearnPlan(videos=3200, epochs=6, clips=1,
                 models=(BASELINE, *THREE_D, *MOTION_MODELS))
QUICK = LearnPlan(videos=1200, epochs=6, clips=1, crops=1, models=(BASELINE, *MOTION_MODELS))
# `vcorr demo`: the quick plan (C2D and the three papers' models); --quick: a smaller one.
DEMO = QUICK
DEMO_QUICK = LearnPlan(videos=320, epochs=3, clips=1, models=(BASELINE, *MOTION_MODELS))


def configs_dir() -> Path:
    """examples/configs of the source tree the package runs from (installed with -e)."""
    d = Path(__file__).resolve().parents[2] / "examples" / "configs"
    if not (d / CONFIG).is_file():
        raise UserError(f"{d}: {CONFIG} not found; install vcorr from its source tree "
                        "(pip install -e .) to run the benchmark")
    return d


def model_names(plan: LearnPlan) -> dict[str, tuple[str, str]]:
    """key -> (label, registered model) for the plan's models, in MODELS order.

    Raises:
        UserError: an unknown key, or a plan without the C2D baseline.
    """
    table = {k: (label, tiny if plan.size == "tiny" else full) for k, label, tiny, full in MODELS}
    unknown = [k for k in plan.models if k not in table]
    if unknown:
        raise UserError(f"unknown model key(s) {', '.join(unknown)}; choose from "
                        f"{', '.join(table)}")
    if BASELINE not in plan.models:
        raise UserError(f"--models must include {BASELINE}: every model is compared with it")
    return {k: table[k] for k, *_ in MODELS if k in plan.models}


# --------------------------------------------------------------------------- statistics
def binomial_interval(n: int, p: float = 0.5, level: float = 0.99) -> tuple[int, int]:
    """The central ``level`` acceptance interval [lo, hi] of Binomial(n, p) counts: each tail
    outside it has probability at most (1 - level) / 2 (exact sums, no normal approximation)."""
    tail = (1 - level) / 2
    pmf = [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]
    lo, acc = 0, 0.0
    while lo <= n and acc + pmf[lo] <= tail:
        acc += pmf[lo]
        lo += 1
    hi, acc = n, 0.0
    while hi >= 0 and acc + pmf[hi] <= tail:
        acc += pmf[hi]
        hi -= 1
    return lo, hi


def read_scores(folder: Path) -> dict[str, Any]:
    """``scores.npz`` of a ``vcorr eval`` folder: ids, labels (V,), scores (V, K), classes."""
    try:
        z = np.load(folder / "scores.npz")
    except OSError as exc:
        raise UserError(f"{folder / 'scores.npz'}: cannot read ({exc})") from None
    return {"ids": list(z["ids"]), "labels": z["labels"], "scores": z["scores"],
            "classes": [str(c) for c in z["classes"]]}


def pair_accuracy(scores: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                  pair: tuple[str, str]) -> dict[str, Any]:
    """Accuracy within a reversal pair: of the videos labelled A or B, the share whose true
    class scores above the other class of the pair (ties count as wrong).

    Shape: scores (V, K), labels (V,).
    """
    a, b = classes.index(pair[0]), classes.index(pair[1])
    sel = (labels == a) | (labels == b)
    true = labels[sel]
    other = np.where(true == a, b, a)
    s = scores[sel]
    rows = np.arange(len(true))
    correct = int((s[rows, true] > s[rows, other]).sum())
    n = int(sel.sum())
    lo, hi = binomial_interval(n) if n else (0, 0)
    return {"pair": list(pair), "videos": n, "correct": correct,
            "accuracy": correct / n if n else None,
            "chance_interval_99": [lo / n, hi / n] if n else None,
            "within_chance_interval": bool(lo <= correct <= hi) if n else None}


def class_accuracy(scores: np.ndarray, labels: np.ndarray, classes: Sequence[str],
                   names: Sequence[str]) -> float | None:
    """Top-1 over the videos whose label is one of ``names`` (argmax over all classes)."""
    idx = [classes.index(c) for c in names]
    sel = np.isin(labels, idx)
    if not sel.any():
        return None
    return float((scores[sel].argmax(axis=1) == labels[sel]).mean())


def summarize_model(ev: dict[str, Any], ev_rev: dict[str, Any], pairs: Sequence[tuple[str, str]],
                    controls: Sequence[str]) -> dict[str, Any]:
    """Pair, control and reversal numbers of one model from its two evaluations."""
    classes, labels, scores = ev["classes"], ev["labels"], ev["scores"]
    per_pair = [pair_accuracy(scores, labels, classes, p) for p in pairs]
    accs = [p["accuracy"] for p in per_pair if p["accuracy"] is not None]
    top1 = float((scores.argmax(axis=1) == labels).mean()) if len(labels) else 0.0
    rev_top1 = (float((ev_rev["scores"].argmax(axis=1) == ev_rev["labels"]).mean())
                if len(ev_rev["labels"]) else 0.0)
    rev_pairs = [pair_accuracy(ev_rev["scores"], ev_rev["labels"], classes, p) for p in pairs]
    rev_accs = [p["accuracy"] for p in rev_pairs if p["accuracy"] is not None]
    return {"top1": top1, "pairs": per_pair,
            "pair_mean": float(np.mean(accs)) if accs else None,
            "controls": class_accuracy(scores, labels, classes, controls),
            "top1_reversed": rev_top1, "drop_reversed": top1 - rev_top1,
            "pair_mean_reversed": float(np.mean(rev_accs)) if rev_accs else None}


def checks(rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The issue's expectations, each with what was measured and whether it holds."""
    out: list[dict[str, Any]] = []
    base = rows.get(BASELINE)
    if base is None:
        return out
    pm = base["pair_mean"]
    out.append({"check": "C2D pair mean within 5 points of 50%", "measured": _pct(pm),
                "holds": pm is not None and abs(pm - 0.5) <= 0.05})
    outside = [" / ".join(p["pair"]) for p in base["pairs"] if p["within_chance_interval"] is False]
    out.append({"check": "no C2D pair outside the 99% binomial interval of chance",
                "measured": ", ".join(outside) or "none outside", "holds": not outside})
    out.append({"check": "C2D at least 90% on the controls", "measured": _pct(base["controls"]),
                "holds": base["controls"] is not None and base["controls"] >= 0.9})
    for k in MOTION_MODELS:
        if k in rows and rows[k]["pair_mean"] is not None and pm is not None:
            gain = rows[k]["pair_mean"] - pm
            out.append({"check": f"{rows[k].get('label', k)} at least 30 points above C2D on the pairs",
                        "measured": f"{_pct(gain, True)} points", "holds": gain >= 0.30})
    return out


# --------------------------------------------------------------------------- the run
def run_learn(out: str | Path, plan: LearnPlan, run: Callable[[list[str]], None],
              echo: Callable[[str], None] = print, device: str | None = None) -> dict[str, Any]:
    """Run every stage into ``out`` (new or empty); returns learn.json's dict.

    ``run(args)`` executes ``vcorr *args`` and raises on failure.

    Raises:
        UserError: ``out`` holds files, an unknown model key, or a stage's output is missing.
    """
    out = Path(out)
    names = model_names(plan)
    config = configs_dir() / CONFIG
    new_folder(out, "the benchmark")
    start = time.perf_counter()
    stage = Stages(run, echo, total=2 + 5 * len(names))
    stages = stage.done

    videos, data = out / "motion", out / "motion_h5"
    runs, evals, compares = out / "runs", out / "eval", out / "compare"
    dev = ["--device", device] if device else []
    stage(["toy", str(videos), "--kind", "motion", "--videos", str(plan.videos),
           "--seed", str(plan.seed), "--workers", "2"])
    meta = read_json(videos / "motion.json")
    stage(["prepare", "--format", "list", "--annotations", str(videos / "annotations.csv"),
           "--labels", str(videos / "classes.txt"), "--root", str(videos), "--out", str(data),
           *meta["recommended"]["prepare"].split(), "--workers", "2"])
    from vcorr.pipelines.train.monitor import tensorboard_note_once

    with tensorboard_note_once():  # one note that TensorBoard is off, not one per model
        for key, (_, model) in names.items():
            # One validation, after the last epoch; the report's numbers are the test split's.
            stage(["train", str(config), "--data", str(data), "--out", str(runs / key),
                   "--set", f'model.name="{model}"', "--set", f"optim.epochs={plan.epochs}",
                   "--set", f"train.val_every={plan.epochs}", "--set", f"seed={plan.seed}",
                   *dev])
    for key in names:
        for order in ("original", "reversed"):
            # last.pt, not best.pt: choosing the epoch on val would flatter nothing here, but
            # the same rule as the demo keeps runs comparable.
            stage(["eval", str(runs / key / "last.pt"), "--data", str(data), "--split", "test",
                   "--clips", str(plan.clips), "--crops", str(plan.crops), "--workers", "1",
                   "--frame-order", order, "--out", str(evals / f"{key}_{order}"),
                   "--no-progress", *dev])
    for key in names:
        if key != BASELINE:
            stage(["compare", str(evals / f"{key}_original"), "--baseline",
                   str(evals / f"{BASELINE}_original"), "--out", str(compares / key)])
        # Per class: how much accuracy the reversed order costs (how much it needs motion).
        stage(["compare", str(evals / f"{key}_original"), "--order", str(evals / f"{key}_reversed"),
               "--out", str(compares / f"{key}_order")])
    stage(["runs", *[str(runs / k) for k in names], "--plot", str(out / "curves.png")])

    pairs = [tuple(p) for p in meta["reversal_pairs"]]
    controls = list(meta["control_classes"])
    rows: dict[str, dict[str, Any]] = {}
    for key, (label, model) in names.items():
        s = read_json(runs / key / "summary.json")
        r = summarize_model(read_scores(evals / f"{key}_original"),
                            read_scores(evals / f"{key}_reversed"), pairs, controls)
        r.update({"label": label, "model": model, "params": _params(model, len(meta["classes"])),
                  "train_seconds": s["seconds"], "train_top1": s["last_train"]["top1"]})
        rows[key] = r
    base_pm = rows[BASELINE]["pair_mean"]
    for r in rows.values():
        r["pair_gain_over_c2d"] = (r["pair_mean"] - base_pm
                                   if r["pair_mean"] is not None and base_pm is not None else None)
    result = {"plan": asdict(plan), "device": device or "default", "pairs": pairs,
              "controls": controls, "classes": meta["classes"], "rows": rows,
              "checks": checks(rows), "stages": stages,
              "seconds": round(time.perf_counter() - start, 1), "machine": machine()}
    figure = out / "pairs.png"
    plot_pairs(result, figure)
    result["artefacts"] = {"report": str(out / "report.md"), "learn.json": str(out / "learn.json"),
                           "pairs figure": str(figure), "curves": str(out / "curves.png"),
                           **{f"compare {k}": str(compares / k / "gains.png")
                              for k in names if k != BASELINE},
                           **{f"reversed {k}": str(compares / f"{k}_order" / "drop.png")
                              for k in names}}
    missing = [p for p in result["artefacts"].values()
               if not p.endswith(("report.md", "learn.json")) and not Path(p).exists()]
    if missing:
        raise UserError(f"{out}: stages finished but these outputs are missing: {', '.join(missing)}")
    write_atomic(out / "learn.json", json.dumps(result, indent=2) + "\n")
    write_atomic(out / "report.md", report_md(out, result))
    return result


def _params(model: str, num_classes: int) -> int:
    from vcorr.models import create_model

    return sum(p.numel() for p in create_model(model, num_classes=num_classes).parameters())


# --------------------------------------------------------------------------- outputs
def _pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "-"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}%"


def table_md(result: dict[str, Any]) -> str:
    """The headline table: one row per model."""
    lines = ["| model | params (M) | test top-1 | pairs (mean) | controls | gain over C2D "
             "on pairs (points) | drop under reversed order (points) | train time |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rows"].values():
        lines.append(f"| {r['label']} (`{r['model']}`) | {r['params'] / 1e6:.2f} | "
                     f"{_pct(r['top1'])} | {_pct(r['pair_mean'])} | {_pct(r['controls'])} | "
                     f"{_pct(r['pair_gain_over_c2d'], True)} | {_pct(r['drop_reversed'], True)} "
                     f"| {r['train_seconds']:.0f} s |")
    return "\n".join(lines)


def pairs_md(result: dict[str, Any]) -> str:
    """Pair accuracy of every model on every reversal pair (slow against fast included)."""
    pairs = result["pairs"]
    head = "| model | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " |"
    lines = [head, "|---|" + "---|" * len(pairs)]
    for r in result["rows"].values():
        lines.append(f"| {r['label']} | " + " | ".join(_pct(p["accuracy"]) for p in r["pairs"])
                     + " |")
    base = result["rows"].get(BASELINE)
    if base:
        lines.append("| C2D 99% chance interval | " + " | ".join(
            f"{_pct(p['chance_interval_99'][0])}-{_pct(p['chance_interval_99'][1])}"
            if p["chance_interval_99"] else "-" for p in base["pairs"]) + " |")
    return "\n".join(lines)


def plot_pairs(result: dict[str, Any], path: Path) -> None:
    """Grouped bars: pair accuracy per reversal pair, one bar per model, chance at 50%."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs, rows = result["pairs"], list(result["rows"].values())
    x = np.arange(len(pairs))
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(min(2 + 1.4 * len(pairs), 24), 4.5), dpi=100)
    for i, r in enumerate(rows):
        acc = [100 * (p["accuracy"] or 0) for p in r["pairs"]]
        ax.bar(x - 0.4 + (i + 0.5) * width, acc, width, label=r["label"])
    ax.axhline(50, color="k", lw=1, ls="--")
    ax.set_xticks(x, [f"{a}\n{b}" for a, b in pairs], fontsize=8)
    ax.set_ylabel("pair accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("Which direction? Accuracy within each time-reversal pair (chance 50%)")
    # Below the pair names, so that no bar is hidden behind it.
    ax.legend(fontsize=8, ncol=min(len(rows), 9), loc="upper center",
              bbox_to_anchor=(0.5, -0.16), frameon=False)
    fig.subplots_adjust(left=0.06, right=0.99, bottom=0.27, top=0.9)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def report_md(out: Path, r: dict[str, Any]) -> str:
    """The benchmark's report: tables, checks, figures, commands."""
    p = r["plan"]
    rel = {k: os.path.relpath(v, out) for k, v in r["artefacts"].items()}
    m = r["machine"]
    stages = "\n".join(f"{s['command']}    # {s['seconds']:.1f} s" for s in r["stages"])
    checks_md = "\n".join(f"- [{'x' if c['holds'] else ' '}] {c['check']}: measured "
                          f"{c['measured']}" for c in r["checks"])
    compares = "\n".join(f"![{k}]({v})" for k, v in rel.items() if k.startswith("compare "))
    drops = "\n".join(f"![{k}]({v})" for k, v in rel.items() if k.startswith("reversed "))
    return f"""# vcorr bench learn: does each model learn motion?

{p['videos']} generated videos ({len(r['classes'])} classes: {len(r['pairs'])} time-reversal
pairs and {len(r['controls'])} appearance controls), every model trained {p['epochs']} epochs
with one recipe (examples/configs/{CONFIG}), evaluated on the test split with
{p['clips']} clips x {p['crops']} crops (no mirrored views). Pair accuracy: within a reversal
pair, the share of videos whose class scores above its reversed partner (chance 50%).

{table_md(r)}

## Expectations (issue 22)

{checks_md}

## Every pair

{pairs_md(r)}

![pairs]({rel['pairs figure']})

## Per-class gains over C2D (`vcorr compare`)

{compares}

## Per-class drop under reversed frame order (`vcorr compare --order`)

{drops}

## Training curves (`vcorr runs --plot`)

![curves]({rel['curves']})

## Commands run ({r['seconds']:.0f} s in all)

```
{stages}
```

Machine: {m['cpus']} CPUs ({m['processor']}), {m['torch_threads']} torch threads,
Python {m['python']}, torch {m['torch']}; device {r['device']}.
"""

