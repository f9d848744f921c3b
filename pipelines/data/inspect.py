"""``vcorr inspect``: summary of a prepared dataset, optionally verifying every shard."""
from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

from vcorr.pipelines.data.index import VideoTable, load_index
from vcorr.pipelines.data.shards import ShardReader
from vcorr.pipelines.errors import UserError


def read_index(out: str | Path) -> VideoTable:
    """The rows of ``OUT/index.csv``, as a :class:`~vcorr.pipelines.data.index.VideoTable`:
    a read-only sequence of row dicts (numeric columns converted; ``duration`` and
    ``variable_rate`` None in folders prepared before those columns existed) held as
    columns, about 80 bytes per video (:func:`vcorr.pipelines.data.index.load_index`).

    Raises:
        UserError: no ``index.csv`` in ``out``, or a malformed one.
    """
    return load_index(out)


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


def _one_edit(a: str, b: str) -> bool:
    """``a`` and ``b`` (case-insensitive) differ by one insertion, deletion, substitution or
    swap of adjacent letters."""
    a, b = a.lower(), b.lower()
    if a == b:
        return False
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    if len(long_) - len(short) != 1:
        return False
    i = next((k for k in range(len(short)) if short[k] != long_[k]), len(short))
    return short[i:] == long_[i + 1:]


def _label_split_counts(rows: VideoTable | list[dict]) -> dict[str, Counter]:
    """Videos per label and split: ``{label: Counter({split: videos})}``."""
    per: dict[str, Counter] = defaultdict(Counter)
    if isinstance(rows, VideoTable):
        lab, labels = rows.codes("label")
        spl, splits = rows.codes("split")
        pair = lab.astype(np.int64) * len(splits) + spl
        found, n = np.unique(pair, return_counts=True)
        for p, k in zip(found.tolist(), n.tolist()):
            per[labels[p // len(splits)]][splits[p % len(splits)]] = k
        return per
    for r in rows:
        per[r["label"]][r["split"]] += 1
    return per


def class_checks(rows: VideoTable | list[dict], classes: list[str], train_split: str = "train"
                 ) -> list[str]:
    """Class-list hygiene, one line each: classes with no video in ``train_split`` (the model
    cannot learn them), classes with training videos that no other split has, and rare classes
    (at most max(2, a tenth of the median class's videos)) whose name is one edit (a letter
    inserted, deleted, changed, or two swapped: "wrestel" and "wrestle") from a bigger class,
    or from one with training videos where the rare one has none --
    a typo in a few rows makes a new class without a word otherwise."""
    per = _label_split_counts(rows)
    splits = sorted({sp for c in per.values() for sp in c})
    lines = []

    def where(c: str) -> str:
        return ", ".join(f"{n} {sp}" for sp, n in sorted(per[c].items())) or "no video"

    def listed(what: str, names: list[str]) -> str:
        return (f"{len(names)} {'class' if len(names) == 1 else 'classes'} {what}: "
                + "; ".join(f"{c!r} ({where(c)})" for c in names[:5])
                + ("; ..." if len(names) > 5 else ""))

    if train_split in splits:
        empty = [c for c in classes if not per[c][train_split]]
        if empty:
            lines.append(listed(f"with no {train_split} video", empty))
        if len(splits) > 1:
            alone = [c for c in classes if per[c][train_split] and len(per[c]) == 1]
            if alone:
                lines.append(listed(f"only in {train_split}", alone))
    # A typo makes a small class next to a bigger one whose name is one edit away.
    totals = {c: sum(per[c].values()) for c in classes}
    ordered = sorted(totals.values())
    rare_at = max(2, ordered[len(ordered) // 2] // 10) if ordered else 0
    close = [(c, o) for c in classes if totals[c] <= rare_at for o in classes
             if (totals[o] > totals[c] or per[o][train_split] > per[c][train_split] == 0)
             and abs(len(o) - len(c)) <= 1 and _one_edit(c, o)
             and not (c.isdigit() and o.isdigit())]   # numbered classes are not typos
    if close:
        lines.append("close spellings (a typo?): " + "; ".join(
            f"{a!r} ({where(a)}) ~ {b!r} ({where(b)})" for a, b in close[:5])
            + ("; ..." if len(close) > 5 else ""))
    return lines


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
    # Whole columns at once, no Python object per video (650,000 videos: 0.6 s, cached).
    split_codes, split_names = rows.codes("split")
    shard_codes, shard_names = rows.codes("shard")
    frames = rows.column("num_frames")
    per = _label_split_counts(rows)
    splits: dict[str, dict] = {}
    for name in rows.counts("split"):   # in order of first appearance, as before
        m = split_codes == split_names.index(name)
        names = [shard_names[k] for k in np.unique(shard_codes[m]).tolist()]
        splits[name] = {"videos": int(m.sum()), "frames": int(frames[m].sum(dtype=np.int64)),
                        "bytes": sum((out / "shards" / n).stat().st_size for n in names
                                     if (out / "shards" / n).is_file()),
                        "shards": len(names)}
    per_class: dict[str, Counter] = {sp: Counter() for sp in splits}
    for label, by_split in per.items():
        for sp, n in by_split.items():
            per_class[sp][label] += n
    summary = {
        "out": str(out), "dataset": meta.get("dataset", ""), "num_classes": len(classes),
        "videos": len(rows), "frames": int(frames.sum(dtype=np.int64)),
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
        "class_checks": class_checks(rows, classes),
    }
    if verify:
        summary["verify_errors"] = verify_shards(out, rows, sample_frames, progress)
    return summary


def verify_shards(out: Path, rows: VideoTable | list[dict], sample_frames: int = 3,
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
