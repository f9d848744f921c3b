"""``vcorr inspect``: summary of a prepared dataset, optionally verifying every shard."""
from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from vcorr.pipelines.data.shards import ShardReader
from vcorr.pipelines.errors import UserError


def read_index(out: str | Path) -> list[dict]:
    """Rows of ``OUT/index.csv`` with numeric columns converted."""
    path = Path(out) / "index.csv"
    if not path.is_file():
        raise UserError(f"{path}: not found (is {out} a folder written by 'vcorr prepare'?)")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("label_index", "num_frames", "height", "width"):
            r[k] = int(r[k])
        for k in ("fps", "source_fps"):
            r[k] = float(r[k])
        # Folders prepared before these columns existed have none: None, not a guess.
        r["duration"] = float(r["duration"]) if r.get("duration") else None
        r["variable_rate"] = bool(int(r["variable_rate"])) if r.get("variable_rate") else None
    return rows


def _read_rows(path: Path) -> list[dict]:
    """Rows of a CSV written by prepare, or [] where it does not exist (older folders)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def read_classes(out: str | Path) -> list[str]:
    path = Path(out) / "classes.txt"
    if not path.is_file():
        raise UserError(f"{path}: not found")
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def read_meta(out: str | Path) -> dict:
    """``OUT/prepare.json`` (what prepare did, incl. ``dataset``: the annotation format), or
    ``{}`` for a folder without one."""
    path = Path(out) / "prepare.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def summarize(out: str | Path, verify: bool = False, sample_frames: int = 3,
              progress: bool = False) -> dict:
    """Videos per split and class, frames, bytes and failures of a prepared ``out``.

    With ``verify`` every shard is opened and ``sample_frames`` frames (first, middle, last)
    of every video are decoded; problems are listed under ``verify_errors``.
    """
    out = Path(out)
    rows = read_index(out)
    classes = read_classes(out)
    failures = _read_rows(out / "failures.csv")
    warnings = _read_rows(out / "warnings.csv")
    meta = read_meta(out)
    splits: dict[str, dict] = {}
    per_class: dict[str, Counter] = defaultdict(Counter)
    for r in rows:
        s = splits.setdefault(r["split"], {"videos": 0, "frames": 0, "bytes": 0, "shards": set()})
        s["videos"] += 1
        s["frames"] += r["num_frames"]
        s["shards"].add(r["shard"])
        per_class[r["split"]][r["label"]] += 1
    for s in splits.values():
        s["bytes"] = sum((out / "shards" / name).stat().st_size for name in s["shards"]
                         if (out / "shards" / name).is_file())
        s["shards"] = len(s["shards"])
    summary = {
        "out": str(out), "dataset": meta.get("dataset", ""), "num_classes": len(classes),
        "videos": len(rows), "frames": sum(r["num_frames"] for r in rows),
        "bytes": sum(s["bytes"] for s in splits.values()), "splits": splits,
        "per_class": {sp: dict(sorted(c.items())) for sp, c in per_class.items()},
        # Classes of the class list (which sets the model's outputs) with no video at all,
        # e.g. because every one of their videos failed.
        "classes_without_videos": [c for c in classes
                                   if not any(c in pc for pc in per_class.values())],
        "failures": len(failures),
        "failure_reasons": dict(Counter(f["reason"].split(":")[0] for f in failures)),
        "warnings": len(warnings),
        "warning_examples": [f"{w['id']}: {w['warning']}" for w in warnings[:3]],
        "data_options": meta.get("data_options", {}),
    }
    if verify:
        summary["verify_errors"] = verify_shards(out, rows, sample_frames, progress)
    return summary


def verify_shards(out: Path, rows: list[dict], sample_frames: int = 3,
                  progress: bool = False) -> list[dict]:
    """Decode a sample of frames of every video; return a list of problems found."""
    import torch
    from torchvision.io import decode_jpeg

    reader = ShardReader(out / "shards")
    errors = []
    it = rows
    if progress:
        from vcorr.pipelines.progress import make_progress
        it = make_progress(len(rows), "verify", unit="video", iterable=rows)
    for r in it:
        n = r["num_frames"]
        idx = sorted({0, n // 2, n - 1})[:max(1, sample_frames)]
        try:
            data = reader.read_encoded(r["shard"], r["id"], idx)
            if isinstance(data, np.ndarray):
                shape = data.shape[1:3]
            else:
                frames = decode_jpeg([torch.from_numpy(np.asarray(b)) for b in data])
                shape = frames[0].shape[1:]
            if tuple(shape) != (r["height"], r["width"]):
                raise ValueError(f"frame size {tuple(shape)} != index "
                                 f"{(r['height'], r['width'])}")
        except Exception as exc:
            errors.append({"id": r["id"], "shard": r["shard"], "error": str(exc)[:200]})
    reader.close()
    return errors
