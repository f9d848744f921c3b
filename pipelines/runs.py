"""``vcorr runs``: training runs side by side, from what a run folder holds.

A run folder is what ``vcorr train --out`` writes: ``config.toml`` and ``metrics.jsonl`` (always),
``last.pt`` / ``best.pt`` (checkpoints), ``summary.json`` (after a call ends), ``curves.png``
and ``tb/``. A row of the comparison comes from the config (model, data, clip length, crop),
``metrics.jsonl`` (validation results, wall time, throughput, peak memory) and the checkpoint's
class list and position (read memory-mapped: its tensors are not loaded). Parameters and
GMACs are counted like ``vcorr models`` (:mod:`vcorr.pipelines.model_info`), for the run's model,
classes and evaluation clip (3 x last phase's frames x crop x crop), on the ``meta`` device.
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vcorr.pipelines.errors import UserError
from vcorr.pipelines.train.curves import plot_val_overlay, read_records


def _checkpoint_info(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(classes and position of ``last.pt``, or None; a note if it exists but does not load)."""
    import torch

    from vcorr.pipelines.train.checkpoint import FORMAT

    if not path.is_file():
        return None, None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - truncated, not a zip file, not weights-only
        return None, f"{path.name} does not load ({type(exc).__name__})"
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        return None, f"{path.name} is not a vcorr training checkpoint"
    return {"classes": list(ckpt.get("classes", [])), "position": ckpt.get("position")}, None


def _model_size(cfg: dict, num_classes: int) -> tuple[int, float]:
    """(parameters, GMACs of one evaluation clip) of the run's model, built on ``meta``."""
    import torch

    from vcorr.pipelines.model_info import count_gmacs
    from vcorr.pipelines.train.config import phases
    from vcorr.pipelines.train.trainer import build_model

    plan = phases(cfg)
    crop = cfg["data"]["crop"]
    with torch.device("meta"):
        model = build_model(cfg, num_classes, plan[0]["frames"])
    params = sum(p.numel() for p in model.parameters())
    return params, count_gmacs(model, (3, plan[-1]["frames"], crop, crop))


def run_row(folder: str | Path) -> dict[str, Any]:
    """One run's row: ``run``, ``model``, ``params`` (and ``params_2p20``: in 2^20), ``gmacs``,
    ``data``, ``frames`` (per phase), ``crop``, ``best`` / ``last`` val (``epoch``, ``top1``,
    ``top5``, 0-1; best = the validation with the highest top-1, first of equals: what
    ``best.pt`` holds), ``epochs_done`` / ``epochs``, ``seconds`` (training wall time over
    every call of the run, validation included), ``clips_per_s`` (median of the train
    records), ``peak_mem_mib`` (largest recorded, with ``peak_mem``: cuda or rss), ``notes``.
    Missing values are None.

    Raises:
        UserError: ``folder`` is not a run folder, or its config does not load.
    """
    from vcorr.pipelines.train.config import load_config, phases
    from vcorr.pipelines.train.preflight import run_epochs

    folder = Path(folder)
    missing = [n for n in ("config.toml", "metrics.jsonl") if not (folder / n).is_file()]
    if not folder.is_dir() or missing:
        what = "not a folder" if not folder.is_dir() else f"no {' and no '.join(missing)}"
        raise UserError(f"{folder}: not a training run ({what}); give folders written by "
                        "`vcorr train --out`")
    cfg = load_config(folder / "config.toml")
    plan = phases(cfg)
    records = read_records(folder / "metrics.jsonl")
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    notes: list[str] = []
    info, note = _checkpoint_info(folder / "last.pt")
    if note:
        notes.append(note)
    classes = info["classes"] if info else None
    if not classes:
        try:
            from vcorr.pipelines.data.inspect import read_classes
            classes = read_classes(cfg["data"]["root"])
        except UserError:
            notes.append("no class list (no last.pt, data folder not found): params and "
                         "GMACs unknown")
    params = gmacs = None
    if classes:
        try:
            params, gmacs = _model_size(cfg, len(classes))
        except (UserError, TypeError, RuntimeError) as exc:
            notes.append(f"model not built ({str(exc).splitlines()[0][:120]})")
    total = sum(p["epochs"] for p in plan)
    if info and info.get("position"):
        done = run_epochs(cfg, info["position"])[0]
    else:
        done = int(max((r["epoch"] for r in val), default=0))
        notes.append("epochs done counted from metrics.jsonl (no checkpoint)")

    def val_result(r: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if r is None else {"epoch": r["epoch"], "top1": r["top1"],
                                       "top5": r.get("top5")}

    best = max(val, key=lambda r: r["top1"], default=None)  # max() keeps the first of equals
    seconds = [r["seconds"] for r in records if isinstance(r.get("seconds"), (int, float))]
    rates = [r["clips_per_s"] for r in train if isinstance(r.get("clips_per_s"), (int, float))]
    mems = [r for r in train if isinstance(r.get("peak_mem_mib"), (int, float))]
    return {
        "run": str(folder), "model": cfg["model"]["name"], "model_args": cfg["model"]["args"],
        "params": params, "params_2p20": None if params is None else params / 2 ** 20,
        "gmacs": gmacs, "data": cfg["data"]["root"], "train_split": cfg["data"]["train_split"],
        "val_split": cfg["data"]["val_split"], "frames": [p["frames"] for p in plan],
        "crop": cfg["data"]["crop"], "best": val_result(best),
        "last": val_result(val[-1] if val else None), "epochs_done": done, "epochs": total,
        "seconds": seconds[-1] if seconds else None,
        "clips_per_s": statistics.median(rates) if rates else None,
        "peak_mem_mib": max((r["peak_mem_mib"] for r in mems), default=None),
        "peak_mem": mems[-1].get("peak_mem") if mems else None,
        "notes": notes,
    }


def compare_runs(folders: Sequence[str | Path], plot: str | Path | None = None, *,
                 overwrite: bool = False) -> list[dict[str, Any]]:
    """Rows of :func:`run_row` for ``folders`` (all checked before anything is written), and
    with ``plot`` a PNG of their validation curves overlaid (val top-1 and loss against
    epochs, :func:`vcorr.pipelines.train.curves.plot_val_overlay`). An existing ``plot`` is
    refused, or with ``overwrite`` moved aside (:mod:`vcorr.pipelines.outputs`).

    Raises:
        UserError: a folder is not a run folder (the first one, by name), or ``plot`` exists.
    """
    from vcorr.pipelines.outputs import check_files, move_aside

    if not folders:
        raise UserError("give one or more run folders (written by `vcorr train --out`)")
    old = check_files([plot], overwrite=overwrite, option="--plot") if plot is not None else []
    rows = [run_row(f) for f in folders]
    if plot is not None:
        for path in old:
            move_aside(path)
        plot_val_overlay([(r["run"], read_records(Path(r["run"]) / "metrics.jsonl"))
                          for r in rows], plot)
    return rows


def _pct(result: dict[str, Any] | None, key: str) -> str:
    value = None if result is None else result.get(key)
    return "-" if value is None else f"{100 * value:.1f}"


def _num(value: float | None) -> str:
    """Two decimals, or three significant digits below 1 (toy models: 0.00167 M2)."""
    if value is None:
        return "-"
    return f"{value:.2f}" if value >= 1 else f"{value:.3g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


_CAPTION = ("M2 = 2^20 parameters; GMACs of one clip (3 x frames x crop x crop); best = the "
            "validation with the highest top-1 (best.pt); top-1/top-5 in %; wall = training "
            "time over all calls (h:mm:ss); clips/s = median of the train records")


def _cells(r: dict[str, Any]) -> list[tuple[str, str]]:
    """(column, text) of one row of the table."""
    return [
        ("run", r["run"]),
        ("model", r["model"] + (" *" if r["model_args"] else "")),
        ("M2", _num(r["params_2p20"])), ("GMACs", _num(r["gmacs"])),
        ("data", Path(r["data"]).name or r["data"]),
        ("frames x crop", ",".join(map(str, r["frames"])) + f" x {r['crop']}"),
        ("best top-1", _pct(r["best"], "top1")), ("best top-5", _pct(r["best"], "top5")),
        ("last top-1", _pct(r["last"], "top1")), ("last top-5", _pct(r["last"], "top5")),
        ("epochs", f"{r['epochs_done']}/{r['epochs']}"), ("wall", _duration(r["seconds"])),
        ("clips/s", "-" if r["clips_per_s"] is None else f"{r['clips_per_s']:.1f}"),
    ]


def render_runs(rows: list[dict[str, Any]], console: Any) -> None:
    """Print ``rows`` (:func:`run_row`) as one rich table on ``console`` (a row per run), notes
    below it. Where that table is wider than the console (80 columns: a pipe, a log file), the
    runs are columns instead (a row per field), as many side by side as fit."""
    from rich import box
    from rich.table import Table

    def table(**kw: Any) -> Table:
        return Table(box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                     collapse_padding=True, **kw)

    wide = table(title="vcorr runs")
    for name, _ in _cells(rows[0]):
        right = name not in ("run", "model", "data", "frames x crop")
        wide.add_column(name.replace(" top", "\ntop"), no_wrap=True,
                        justify="right" if right else "left")
    for r in rows:
        wide.add_row(*(text for _, text in _cells(r)))
    natural = console.measure(wide, options=console.options.update(max_width=10**6)).maximum
    if natural <= console.width:
        console.print(wide)
    else:
        cells = [_cells(r) for r in rows]
        label_w = max(len(name) for name, _ in cells[0])
        widths = [max(len(t) for _, t in c) for c in cells]
        start = 0
        while start < len(rows):  # as many runs as fit the width, at least one
            end, used = start + 1, label_w + 1 + widths[start]
            while end < len(rows) and used + 1 + widths[end] <= console.width:
                used += 1 + widths[end]
                end += 1
            tall = table(title="vcorr runs" if start == 0 else None, show_header=False)
            tall.add_column("field", no_wrap=True)
            for _ in range(start, end):
                tall.add_column(overflow="fold", justify="right")
            for k, (name, _) in enumerate(cells[0]):
                tall.add_row(name, *(cells[i][k][1] for i in range(start, end)))
            console.print(tall)
            start = end
    console.print(_CAPTION)
    if any(r["model_args"] for r in rows):
        console.print("* model.args: " + "; ".join(
            f"{r['run']}: {r['model_args']}" for r in rows if r["model_args"]))
    for r in rows:
        for note in r["notes"]:
            console.print(f"note: {r['run']}: {note}")
