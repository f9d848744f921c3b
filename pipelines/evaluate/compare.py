"""``vcorr compare``: per-class top-1 accuracy gain of models over a baseline (CPNet
supplementary Figures 3 and 5): a sorted bar chart, ``gains.csv``, ``gains.md`` and a summary.

``vcorr compare ORIGINAL --order OTHER``: the temporal-order analysis. OTHER is the same
checkpoint evaluated with the same views but ``--frame-order reversed`` or ``shuffled``; per
class, the drop in top-1 accuracy (original - other) says how much the class depends on the
order of the frames, i.e. on motion: ``drop.csv``, ``drop.md``, ``drop.png``, a summary.
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


def _classes(n: int) -> str:
    """``"1 class"``, ``"3 classes"``."""
    return f"{n} class" if n == 1 else f"{n} classes"


def _name(m: dict[str, Any], default: str) -> str:
    return str(m.get("_path") or m.get("out") or default)


def _paired_classes(a: dict[str, Any], b: dict[str, Any], a_name: str,
                    b_name: str) -> tuple[list[tuple[dict, dict]], list[str], list[str]]:
    """Per-class entries of two results side by side (classes with videos in both), the
    classes without videos in one of them, and those whose support differs.

    Raises:
        UserError: the class lists differ (names or order).
    """
    ac = [p["class"] for p in a["per_class"]]
    bc = [p["class"] for p in b["per_class"]]
    if ac != bc:
        diff = sorted(set(ac) ^ set(bc))
        what = (f"{_classes(len(diff))} in only one of them (e.g. {', '.join(diff[:3])})" if diff
                else "the same classes in another order")
        raise UserError(f"{a_name} and {b_name} were evaluated on different class lists "
                        f"({len(ac)} vs {_classes(len(bc))}, {what}); compare results of the "
                        "same dataset")
    pairs, no_support, support_differs = [], [], []
    for pa, pb in zip(a["per_class"], b["per_class"]):
        if pa["accuracy"] is None or pb["accuracy"] is None:
            no_support.append(pa["class"])
            continue
        if pa["support"] != pb["support"]:
            support_differs.append(pa["class"])
        pairs.append((pa, pb))
    return pairs, no_support, support_differs


_EPS = 1e-12  # differences below this are "equal" (accuracies are ratios of small integers)


def _count_signs(values: list[float]) -> tuple[int, int, int]:
    """(above 0, below 0, equal to 0) within :data:`_EPS`."""
    return (sum(v > _EPS for v in values), sum(v < -_EPS for v in values),
            sum(abs(v) <= _EPS for v in values))


def class_gains(model: dict[str, Any], baseline: dict[str, Any], top: int = 10) -> dict[str, Any]:
    """Rows (class, baseline accuracy, model accuracy, gain, support) sorted by gain
    (largest first), and the summary. Classes without test videos have no gain."""
    pairs, no_support, support_differs = _paired_classes(
        model, baseline, _name(model, "the model"), _name(baseline, "the baseline"))
    rows = [{"class": m["class"], "baseline_accuracy": b["accuracy"],
             "model_accuracy": m["accuracy"], "gain": m["accuracy"] - b["accuracy"],
             "support": b["support"]} for m, b in pairs]
    rows.sort(key=lambda r: (-r["gain"], r["class"]))
    gains = [r["gain"] for r in rows]
    eps = _EPS
    improved, worse, equal = _count_signs(gains)
    summary = {
        "model": model["_path"], "baseline": baseline["_path"],
        "model_top1": model["top1"], "baseline_top1": baseline["top1"],
        "overall_gain": model["top1"] - baseline["top1"],
        "mean_per_class_gain": sum(gains) / len(gains) if gains else 0.0,
        "classes": len(rows),
        "improved": improved, "worse": worse, "equal": equal,
        "largest_gains": [r for r in rows[:top] if r["gain"] > eps],
        "largest_losses": [r for r in reversed(rows[-top:]) if r["gain"] < -eps] if top else [],
        "classes_without_videos": no_support, "classes_with_other_support": support_differs,
    }
    return {"rows": rows, "summary": summary}


# Evaluation settings that must match between an original-order and a reordered result (the
# keys `vcorr eval` writes; a key missing from either result, e.g. an older one, is not checked).
_SAME_EVALUATION = ("split", "clips", "crops", "full_frame", "averaging",
                    "crop_size", "short_side", "frames", "interval", "sampler")


def _check_order_pair(original: dict[str, Any], other: dict[str, Any], a: str, b: str) -> None:
    """Raises:
        UserError: ``original`` is not an original-order result, ``other`` not a reversed or
            shuffled one, their weights (or, for results without a weights digest, checkpoint
            paths) differ, or they were evaluated with other views."""
    a_order = original.get("frame_order", "original")
    b_order = other.get("frame_order", "original")
    if a_order != "original":
        raise UserError(f"{a}: evaluated with --frame-order {a_order}; give the original-order "
                        "result first and the reversed or shuffled one with --order")
    if b_order not in ("reversed", "shuffled"):
        raise UserError(f"{b}: evaluated with --frame-order {b_order}; --order takes a result "
                        "of `vcorr eval --frame-order reversed` or `--frame-order shuffled`")
    if original.get("weights_sha256") and other.get("weights_sha256"):
        if original["weights_sha256"] != other["weights_sha256"]:
            raise UserError(
                f"{a} and {b} were evaluated with different weights "
                f"({original.get('checkpoint')} vs {other.get('checkpoint')}); an order "
                "comparison needs one checkpoint evaluated twice")
    elif original.get("checkpoint") != other.get("checkpoint"):
        raise UserError(f"{a} and {b} were evaluated from different checkpoints "
                        f"({original.get('checkpoint')} vs {other.get('checkpoint')}); an "
                        "order comparison needs one checkpoint evaluated twice")
    for key in _SAME_EVALUATION:
        if key in original and key in other and original[key] != other[key]:
            raise UserError(f"{a} and {b} differ in {key} ({original[key]} vs {other[key]}); "
                            "an order comparison needs the same evaluation but for "
                            "--frame-order")


def order_drop(original: dict[str, Any], other: dict[str, Any],
               top: int = 10) -> dict[str, Any]:
    """Per-class top-1 drop when the frames are reversed or shuffled: ``original`` and
    ``other`` are ``metrics.json`` dicts of one checkpoint evaluated with the same views,
    ``--frame-order original`` and ``reversed``/``shuffled``.

    Returns ``rows`` (class, original accuracy, reordered accuracy, drop = original -
    reordered, support), sorted by drop (largest first, then class name), and ``summary``:
    top-1 of both and its drop, ``mean_drop`` (the mean of the per-class drops, i.e. the drop
    in mean class accuracy over the classes with videos), how many classes dropped, rose or
    stayed equal, the ``top`` largest drops and rises, the frame order and seed. A
    frame-order-invariant model (e.g. C2D with temporal average pooling) has zero drop; a
    class whose reversal is another class (SSv2 "pushing left to right") drops the most.

    Raises:
        UserError: the class lists differ, ``original`` is not an original-order result or
            ``other`` not a reordered one, the weights (checkpoints) differ, or the views do.
    """
    a, b = _name(original, "the original result"), _name(other, "the reordered result")
    _check_order_pair(original, other, a, b)
    pairs, no_support, support_differs = _paired_classes(original, other, a, b)
    rows = [{"class": o["class"], "original_accuracy": o["accuracy"],
             "reordered_accuracy": r["accuracy"], "drop": o["accuracy"] - r["accuracy"],
             "support": o["support"]} for o, r in pairs]
    rows.sort(key=lambda r: (-r["drop"], r["class"]))
    drops = [r["drop"] for r in rows]
    dropped, rose, equal = _count_signs(drops)
    summary = {
        "original": a, "reordered": b, "frame_order": other["frame_order"],
        "frame_order_seed": other.get("frame_order_seed"),
        "original_top1": original["top1"], "reordered_top1": other["top1"],
        "top1_drop": original["top1"] - other["top1"],
        "mean_drop": sum(drops) / len(drops) if drops else 0.0,
        "classes": len(rows), "dropped": dropped, "rose": rose, "equal": equal,
        "largest_drops": [r for r in rows[:top] if r["drop"] > _EPS],
        "largest_rises": [r for r in reversed(rows[-top:]) if r["drop"] < -_EPS] if top else [],
        "classes_without_videos": no_support, "classes_with_other_support": support_differs,
    }
    return {"rows": rows, "summary": summary}


def _csv(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> str:
    """``rows`` as CSV with the columns ``keys`` (accuracies and differences as fractions)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    for r in rows:
        w.writerow([f"{r[k]:.6f}" if isinstance(r[k], float) else r[k] for k in keys])
    return buf.getvalue()


def _md_table(rows: list[dict[str, Any]], headers: tuple[str, ...],
              keys: tuple[str, ...]) -> list[str]:
    """Markdown table lines: accuracies as percentages, the last numeric column (a gain or a
    drop) as signed points."""
    lines = ["| " + " | ".join(headers) + " |", "|---" + "|---:" * (len(headers) - 1) + "|"]
    for r in rows:
        cells = [r[keys[0]].replace("|", "\\|")]
        cells += [f"{100 * r[k]:.1f}%" for k in keys[1:-2]]
        cells += [f"{100 * r[keys[-2]]:+.1f}", str(r[keys[-1]])]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


GAIN_COLUMNS = ("class", "baseline_accuracy", "model_accuracy", "gain", "support")
DROP_COLUMNS = ("class", "original_accuracy", "reordered_accuracy", "drop", "support")


def _md(rows: list[dict[str, Any]], summary: dict[str, Any], name: str) -> str:
    s = summary
    lines = [f"# Per-class top-1 gain: {name}", "",
             f"- model top-1 {100 * s['model_top1']:.2f}%, baseline {100 * s['baseline_top1']:.2f}%"
             f", overall gain {100 * s['overall_gain']:+.2f} points",
             f"- mean per-class gain {100 * s['mean_per_class_gain']:+.2f} points; "
             f"{_classes(s['improved'])} improved, {s['worse']} worse, {s['equal']} equal", ""]
    lines += _md_table(rows, ("class", "baseline accuracy", "model accuracy", "gain",
                              "support"), GAIN_COLUMNS)
    return "\n".join(lines) + "\n"


def _drop_md(rows: list[dict[str, Any]], summary: dict[str, Any], name: str) -> str:
    s = summary
    order = s["frame_order"]
    lines = [f"# Per-class top-1 drop, frames original vs {order}: {name}", "",
             (f"- top-1 {100 * s['original_top1']:.2f}% with the frames in their original "
              f"order, {100 * s['reordered_top1']:.2f}% {order}: "
              f"{100 * s['top1_drop']:+.2f} points"),
             (f"- mean per-class drop {100 * s['mean_drop']:+.2f} points; "
              f"{_classes(s['dropped'])} dropped, {s['rose']} rose, {s['equal']} equal"), ""]
    lines += _md_table(rows, ("class", "original accuracy", f"{order} accuracy", "drop",
                              "support"), DROP_COLUMNS)
    return "\n".join(lines) + "\n"


def plot_gains(rows: list[dict[str, Any]], path: Path, title: str, key: str = "gain",
               ylabel: str = "top-1 accuracy gain (points)") -> None:
    """Sorted bar chart of the per-class ``key`` (a gain or a drop, in points) with class
    names, written atomically."""
    from vcorr.pipelines.visualize.figures import plt, save

    n = max(len(rows), 1)
    fig, ax = plt().subplots(figsize=(max(6.0, 0.16 * n + 1.5), 4.8))
    gains = [100 * r[key] for r in rows]
    colors = ["tab:green" if g > 0 else "tab:red" if g < 0 else "tab:gray" for g in gains]
    ax.bar(range(len(rows)), gains, color=colors, width=0.8)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([r["class"] for r in rows], rotation=90,
                       fontsize=7 if n <= 60 else 5)
    ax.set_xlim(-0.6, n - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    save(fig, path, [], dpi=120)


COMPARE_OUTPUTS = ("gains.csv", "gains.md", "gains.png", "drop.csv", "drop.md", "drop.png",
                   "summary.json")


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


def _check_out(out: Path, overwrite: bool) -> bool:
    patterns = COMPARE_OUTPUTS + tuple(f"*/{name}" for name in COMPARE_OUTPUTS)
    return check_folder(out, patterns, overwrite=overwrite, what="an earlier `vcorr compare`")


def _compute(out: Path, overwrite: bool, first: str | Path, others: list[str | Path],
             pair: Any) -> list[dict[str, Any]]:
    """``pair(first's metrics, other's metrics)`` for each of ``others``, every check (output
    folder, loading, the pair's own) done before the earlier comparison is moved aside."""
    move_old = _check_out(out, overwrite)
    base = load_result(first)
    comps = [pair(base, load_result(r)) for r in others]
    if move_old:
        move_aside(out)
    return comps


def _write_summary(folder: Path, comp: dict[str, Any], **extra: Any) -> dict[str, Any]:
    summary = dict(comp["summary"], **extra, out=str(folder))
    write_atomic(folder / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _folders(out: Path, names: list[str]) -> tuple[list[str], list[Path]]:
    """Unique names (a repeated one gets ``_`` appended) and their output folders: ``out``
    itself for one, ``out/<name>`` for several (created)."""
    unique: list[str] = []
    for name in names:
        while name in unique:
            name += "_"
        unique.append(name)
    folders = [out if len(unique) == 1 else out / name for name in unique]
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
    return unique, folders


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
    comps = _compute(out, overwrite, baseline, results,
                     lambda base, m: class_gains(m, base, top))
    summaries = []
    for name, folder, comp in zip(*_folders(out, [result_name(r) for r in results]), comps):
        pair = f"{name} vs {result_name(baseline)}"
        write_atomic(folder / "gains.csv", _csv(comp["rows"], GAIN_COLUMNS))
        write_atomic(folder / "gains.md", _md(comp["rows"], comp["summary"], pair))
        plot_gains(comp["rows"], folder / "gains.png", f"{pair}: per-class top-1 gain")
        summaries.append(_write_summary(folder, comp, name=name))
    return summaries


def compare_orders(original: str | Path, reordered: list[str | Path], out: str | Path,
                   top: int = 10, overwrite: bool = False) -> list[dict[str, Any]]:
    """The temporal-order analysis (:func:`order_drop`) of the ``original``-order result
    against each of ``reordered`` (results of the same checkpoint with ``--frame-order
    reversed`` or ``shuffled``): ``drop.csv``, ``drop.md``, ``drop.png`` (sorted bar chart)
    and ``summary.json`` in ``out`` for one, in ``out/<frame order>`` for several.

    Raises:
        UserError: ``out`` holds an earlier comparison (with ``overwrite`` it is moved aside),
            a result does not load, or a pair does not qualify (:func:`order_drop`).
    """
    if not reordered:
        raise UserError("give at least one reversed or shuffled result with --order")
    out = Path(out)
    comps = _compute(out, overwrite, original, reordered,
                     lambda base, m: order_drop(base, m, top))
    model = result_name(original)
    names = [c["summary"]["frame_order"] for c in comps]
    summaries = []
    for name, folder, comp in zip(*_folders(out, names), comps):
        order = comp["summary"]["frame_order"]
        title = f"{model}: original vs {order} frames"
        write_atomic(folder / "drop.csv", _csv(comp["rows"], DROP_COLUMNS))
        write_atomic(folder / "drop.md", _drop_md(comp["rows"], comp["summary"], model))
        plot_gains(comp["rows"], folder / "drop.png", f"{title}: per-class top-1 drop",
                   key="drop", ylabel=f"top-1 accuracy drop, {order} (points)")
        summaries.append(_write_summary(folder, comp, name=name, model=model))
    return summaries
