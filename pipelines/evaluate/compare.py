"""``vcorr compare``: per-class top-1 accuracy gain of models over a baseline (CPNet
supplementary Figures 3 and 5): a sorted bar chart, ``gains.csv``, ``gains.md`` and a summary.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from vcorr.pipelines.errors import UserError
from vcorr.pipelines.fileio import write_atomic
from vcorr.pipelines.outputs import check_folder, move_aside


def load_result(folder: str | Path) -> dict[str, Any]:
    """``metrics.json`` of a ``vcorr eval`` output folder (or the file itself)."""
    path = Path(folder)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise UserError(f"{path}: not found (give a folder written by `vcorr eval`)")
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(m, dict) or "per_class" not in m or "top1" not in m:
        raise UserError(f"{path}: no per-class results (not written by `vcorr eval`)")
    m["_path"] = str(path)
    return m


def class_gains(model: dict[str, Any], baseline: dict[str, Any], top: int = 10) -> dict[str, Any]:
    """Rows (class, baseline accuracy, model accuracy, gain, support) sorted by gain
    (largest first), and the summary. Classes without test videos have no gain."""
    mc = [p["class"] for p in model["per_class"]]
    bc = [p["class"] for p in baseline["per_class"]]
    if mc != bc:
        diff = sorted(set(mc) ^ set(bc))
        what = (f"{len(diff)} classes in only one of them (e.g. {', '.join(diff[:3])})" if diff
                else "the same classes in another order")
        raise UserError(f"{model['_path']} and {baseline['_path']} were evaluated on different "
                        f"class lists ({len(mc)} vs {len(bc)} classes, {what}); compare results "
                        "of the same dataset")
    rows, no_support, support_differs = [], [], []
    for m, b in zip(model["per_class"], baseline["per_class"]):
        if m["accuracy"] is None or b["accuracy"] is None:
            no_support.append(m["class"])
            continue
        if m["support"] != b["support"]:
            support_differs.append(m["class"])
        rows.append({"class": m["class"], "baseline_accuracy": b["accuracy"],
                     "model_accuracy": m["accuracy"], "gain": m["accuracy"] - b["accuracy"],
                     "support": b["support"]})
    rows.sort(key=lambda r: (-r["gain"], r["class"]))
    gains = [r["gain"] for r in rows]
    eps = 1e-12
    summary = {
        "model": model["_path"], "baseline": baseline["_path"],
        "model_top1": model["top1"], "baseline_top1": baseline["top1"],
        "overall_gain": model["top1"] - baseline["top1"],
        "mean_per_class_gain": sum(gains) / len(gains) if gains else 0.0,
        "classes": len(rows),
        "improved": sum(g > eps for g in gains), "worse": sum(g < -eps for g in gains),
        "equal": sum(abs(g) <= eps for g in gains),
        "largest_gains": [r for r in rows[:top] if r["gain"] > eps],
        "largest_losses": [r for r in reversed(rows[-top:]) if r["gain"] < -eps] if top else [],
        "classes_without_videos": no_support, "classes_with_other_support": support_differs,
    }
    return {"rows": rows, "summary": summary}


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["class", "baseline_accuracy", "model_accuracy", "gain", "support"])
    for r in rows:
        w.writerow([r["class"], f"{r['baseline_accuracy']:.6f}", f"{r['model_accuracy']:.6f}",
                    f"{r['gain']:.6f}", r["support"]])
    return buf.getvalue()


def _md(rows: list[dict[str, Any]], summary: dict[str, Any], name: str) -> str:
    s = summary
    lines = [f"# Per-class top-1 gain: {name}", "",
             f"- model top-1 {100 * s['model_top1']:.2f}%, baseline {100 * s['baseline_top1']:.2f}%"
             f", overall gain {100 * s['overall_gain']:+.2f} points",
             f"- mean per-class gain {100 * s['mean_per_class_gain']:+.2f} points; "
             f"{s['improved']} classes improved, {s['worse']} worse, {s['equal']} equal", "",
             "| class | baseline accuracy | model accuracy | gain | support |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        cls = r["class"].replace("|", "\\|")
        lines.append(f"| {cls} | {100 * r['baseline_accuracy']:.1f}% | "
                     f"{100 * r['model_accuracy']:.1f}% | {100 * r['gain']:+.1f} | {r['support']} |")
    return "\n".join(lines) + "\n"


def plot_gains(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    """Sorted bar chart of the per-class gains (points) with class names, written atomically."""
    from vcorr.pipelines.visualize.figures import plt, save

    n = max(len(rows), 1)
    fig, ax = plt().subplots(figsize=(max(6.0, 0.16 * n + 1.5), 4.8))
    gains = [100 * r["gain"] for r in rows]
    colors = ["tab:green" if g > 0 else "tab:red" if g < 0 else "tab:gray" for g in gains]
    ax.bar(range(len(rows)), gains, color=colors, width=0.8)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["class"] for r in rows], rotation=90,
                       fontsize=7 if n <= 60 else 5)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel("top-1 accuracy gain (points)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save(fig, path, [], dpi=120)


COMPARE_OUTPUTS = ("gains.csv", "gains.md", "gains.png", "summary.json")


def result_name(folder: str | Path) -> str:
    """A result's name in titles and tables: its folder's name, or for the default
    ``RUN/eval_<split>_<views>`` folders (all named alike) the run folder's name."""
    path = Path(folder)
    if path.name == "metrics.json":
        path = path.parent
    path = Path(os.path.normpath(path))
    if path.name.startswith("eval_") and path.parent.name:
        return path.parent.name
    return path.name or "model"


def compare_results(results: list[str | Path], baseline: str | Path, out: str | Path,
                    top: int = 10, overwrite: bool = False) -> list[dict[str, Any]]:
    """Compare each of ``results`` with ``baseline``; one output folder per model
    (``out`` itself for a single model, ``out/<result folder name>`` for several).

    Raises:
        UserError: ``out`` holds an earlier comparison (with ``overwrite`` it is moved aside to
            ``out.old-N`` instead), a result does not load, or the class lists differ.
    """
    if not results:
        raise UserError("give at least one RESULT_DIR")
    out = Path(out)
    patterns = COMPARE_OUTPUTS + tuple(f"*/{name}" for name in COMPARE_OUTPUTS)
    move_old = check_folder(out, patterns, overwrite=overwrite,
                            what="an earlier `vcorr compare`")
    base = load_result(baseline)
    loaded = [load_result(r) for r in results]
    comps = [class_gains(m, base, top) for m in loaded]  # every check before any write
    if move_old:
        move_aside(out)
    names: list[str] = []
    for r in results:
        name = result_name(r)
        while name in names:
            name += "_"
        names.append(name)
    summaries = []
    for name, comp in zip(names, comps):
        folder = out if len(results) == 1 else out / name
        folder.mkdir(parents=True, exist_ok=True)
        pair = f"{name} vs {result_name(baseline)}"
        write_atomic(folder / "gains.csv", _csv(comp["rows"]))
        write_atomic(folder / "gains.md", _md(comp["rows"], comp["summary"], pair))
        plot_gains(comp["rows"], folder / "gains.png", f"{pair}: per-class top-1 gain")
        summary = dict(comp["summary"], name=name, out=str(folder))
        write_atomic(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
        summaries.append(summary)
    return summaries
