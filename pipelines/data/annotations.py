"""Parsers for the annotation files of each supported dataset, in their official formats.

Every parser turns the user's files into a list of :class:`Sample` (id, label, split, source
path), the class list in the dataset's own order, and row-level :class:`Failure` records
(unparsable rows, unknown labels, duplicate ids), which never stop a run. A file that is
missing or not in the named format raises :class:`UserError` before anything is written.

Splits are normalised to ``train``, ``val`` and ``test`` ("validate"/"validation" -> ``val``).
"""
from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vcorr.pipelines.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv")


@dataclass(frozen=True)
class Sample:
    """One video to prepare. ``label`` is "" for unlabelled test videos."""

    id: str
    label: str
    split: str
    source: str  # absolute path of a video file or frame folder ("" if not found)


@dataclass(frozen=True)
class Failure:
    """A video or annotation row that could not be prepared, and why."""

    id: str
    path: str
    reason: str


@dataclass
class Annotations:
    """What a parser returns."""

    samples: list[Sample]
    classes: list[str]
    failures: list[Failure] = field(default_factory=list)
    dataset: str = ""  # e.g. "ssv2", "jester": selects built-in label-swap maps for flips


def normalise_split(name: str) -> str:
    """Map the datasets' split names onto train/val/test."""
    s = name.strip().lower()
    if s in ("validate", "validation", "valid", "val"):
        return "val"
    if s in ("train", "training"):
        return "train"
    if s in ("test", "testing"):
        return "test"
    return s


def split_from_filename(path: Path) -> str:
    """Split named by an annotation file (e.g. ``jester-v1-validation.csv`` -> ``val``)."""
    name = path.name.lower()
    for key, split in (("validation", "val"), ("train", "train"), ("test", "test"),
                       ("val", "val")):
        if key in name:
            return split
    raise UserError(f"{path}: cannot tell the split from the file name "
                    "(expected 'train', 'validation' or 'test' in it)")


class _SourceFinder:
    """Finds a video by relative path or, failing that, by file stem anywhere under root."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._by_stem: dict[str, str] | None = None

    def by_path(self, rel: str) -> str:
        p = self.root / rel
        return str(p) if p.exists() else ""

    def by_stem(self, stem: str, folder: bool = False) -> str:
        direct = self.root / stem
        if folder and direct.is_dir():
            return str(direct)
        if not folder:
            for suffix in (".mp4", ".webm"):
                if (direct.with_name(direct.name + suffix)).is_file():
                    return str(direct.with_name(direct.name + suffix))
        if self._by_stem is None:
            # One walk of the tree serves flat and per-class (or per-split) layouts.
            self._by_stem = {}
            for dirpath, dirnames, filenames in os.walk(self.root):
                for d in dirnames:
                    self._by_stem.setdefault("dir:" + d, os.path.join(dirpath, d))
                for f in filenames:
                    base, ext = os.path.splitext(f)
                    if ext.lower() in VIDEO_SUFFIXES:
                        self._by_stem.setdefault(base, os.path.join(dirpath, f))
        return self._by_stem.get(("dir:" if folder else "") + stem, "")


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise UserError(f"{path}: annotation file not found")
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file") from None


def _read_json(path: Path) -> object:
    try:
        return json.loads(_read_text(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


class _Collector:
    """Accumulates samples, checking labels against the class list and ids for duplicates."""

    def __init__(self, classes: Sequence[str] | None) -> None:
        self.classes = list(classes) if classes is not None else None
        self.samples: list[Sample] = []
        self.failures: list[Failure] = []
        self._seen: dict[str, str] = {}

    def add(self, id_: str, label: str, split: str, source: str, where: str,
            fix: str = "") -> None:
        """``fix``: how to tell this row apart from another with the same id, added to a
        duplicate's reason."""
        if id_ in self._seen:
            self.failures.append(Failure(id_, source or where,
                                         f"duplicate id: first at {self._seen[id_]}"
                                         + (f"; {fix}" if fix else "")))
            return
        self._seen[id_] = where
        if self.classes is not None and label and label not in self.classes:
            self.failures.append(Failure(id_, source or where, f"unknown label: {label!r}"))
            return
        if not label and split != "test":
            self.failures.append(Failure(id_, source or where, "missing label"))
            return
        self.samples.append(Sample(id_, label, split, source))

    def bad_row(self, where: str, why: str) -> None:
        self.failures.append(Failure("", where, f"unparsable row: {why}"))

    def result(self, dataset: str) -> Annotations:
        classes = self.classes
        if classes is None:  # no official list: sorted names, the usual convention
            classes = sorted({s.label for s in self.samples if s.label})
        return Annotations(self.samples, classes, self.failures, dataset)


def read_class_list(path: Path) -> list[str]:
    """A plain class list, one name per line (``classes.txt``, ``jester-v1-labels.csv``)."""
    names = [line.strip() for line in _read_text(path).splitlines() if line.strip()]
    if not names:
        raise UserError(f"{path}: empty class list")
    if len(set(names)) != len(names):
        raise UserError(f"{path}: class list has duplicate names")
    return names


# --------------------------------------------------------------------------- formats
def parse_list(files: Sequence[Path], labels: Path | None, root: Path,
               default_split: str = "train") -> Annotations:
    """Generic CSV with header ``path,label[,split][,id]`` (label = class name).

    The id defaults to the file name without extension; paths are relative to ``root``.
    """
    col = _Collector(read_class_list(labels) if labels else None)
    finder = _SourceFinder(root)
    for f in files:
        rows = list(csv.reader(_read_text(f).splitlines()))
        header = [h.strip().lower() for h in rows[0]] if rows else []
        if "path" not in header or "label" not in header:
            raise UserError(f"{f}: not a 'list' CSV (expected a header with path,label"
                            f"[,split][,id]; got {','.join(header) or 'nothing'})")
        ip, il = header.index("path"), header.index("label")
        isp = header.index("split") if "split" in header else None
        iid = header.index("id") if "id" in header else None
        for n, row in enumerate(rows[1:], start=2):
            if not row or not any(c.strip() for c in row):
                continue
            if len(row) != len(header):
                col.bad_row(f"{f}:{n}", f"{len(row)} fields, expected {len(header)}")
                continue
            rel = row[ip].strip()
            given = iid is not None and row[iid].strip()
            id_ = row[iid].strip() if given else Path(rel).stem
            # e.g. a/test.mp4 and b/test.avi: both "test" by default
            fix = "" if given else (f"the id defaults to the file name without its extension "
                                    f"({rel} -> {id_}); give each row a unique value in an "
                                    "'id' column (header path,label,split,id)")
            split = normalise_split(row[isp]) if isp is not None and row[isp].strip() \
                else default_split
            col.add(id_, row[il].strip(), split, finder.by_path(rel) or str(root / rel),
                    f"{f}:{n}", fix)
    return col.result("list")


def parse_kinetics(files: Sequence[Path], labels: Path | None, root: Path) -> Annotations:
    """Kinetics-400/600/700 official CSV: ``label,youtube_id,time_start,time_end,split``.

    Videos are ``<youtube_id>_<start:06d>_<end:06d>.<ext>`` anywhere under root (flat or in
    per-class / per-split folders).
    """
    col = _Collector(read_class_list(labels) if labels else None)
    finder = _SourceFinder(root)
    for f in files:
        reader = list(csv.reader(_read_text(f).splitlines()))
        header = [h.strip().lower() for h in reader[0]] if reader else []
        need = ("youtube_id", "time_start", "time_end")
        if not all(k in header for k in need):
            raise UserError(f"{f}: not a Kinetics CSV (expected columns label,youtube_id,"
                            f"time_start,time_end,split; got {','.join(header) or 'nothing'})")
        ix = {k: header.index(k) for k in header}
        for n, row in enumerate(reader[1:], start=2):
            if not row or not any(c.strip() for c in row):
                continue
            try:
                yid = row[ix["youtube_id"]].strip()
                start, end = int(float(row[ix["time_start"]])), int(float(row[ix["time_end"]]))
                label = row[ix["label"]].strip() if "label" in ix else ""
                split = normalise_split(row[ix["split"]]) if "split" in ix \
                    else split_from_filename(f)
            except (IndexError, ValueError) as exc:
                col.bad_row(f"{f}:{n}", str(exc) or "missing field")
                continue
            if not yid:
                col.bad_row(f"{f}:{n}", "empty youtube_id")
                continue
            id_ = f"{yid}_{start:06d}_{end:06d}"
            col.add(id_, label, split, finder.by_stem(id_), f"{f}:{n}")
    return col.result("kinetics")


def parse_ssv2(files: Sequence[Path], labels: Path | None, root: Path) -> Annotations:
    """Something-Something v2: ``something-something-v2-{train,validation,test}.json`` (lists
    of ``{"id", "label", "template", "placeholders"}``) and the labels JSON
    (``{"Approaching something with your camera": "0", ...}``); videos ``<id>.webm``.

    The class of a video is its template with the brackets removed.
    """
    if labels is None:
        raise UserError("ssv2 needs --labels something-something-v2-labels.json")
    table = _read_json(labels)
    if not isinstance(table, dict) or not table:
        raise UserError(f"{labels}: not a Something-Something v2 labels JSON "
                        "(expected an object mapping class name to index)")
    try:
        classes = [name for name, _ in sorted(table.items(), key=lambda kv: int(kv[1]))]
    except (TypeError, ValueError):
        raise UserError(f"{labels}: label indices must be integers") from None
    col = _Collector(classes)
    finder = _SourceFinder(root)
    for f in files:
        items = _read_json(f)
        if not isinstance(items, list) or (items and not isinstance(items[0], dict)) \
                or (items and "id" not in items[0]):
            raise UserError(f"{f}: not a Something-Something v2 JSON (expected a list of "
                            "objects with 'id', 'template')")
        split = split_from_filename(f)
        for n, item in enumerate(items):
            if not isinstance(item, dict) or "id" not in item:
                col.bad_row(f"{f}[{n}]", "entry without 'id'")
                continue
            id_ = str(item["id"]).strip()
            template = str(item.get("template", ""))
            label = template.replace("[", "").replace("]", "").strip()
            col.add(id_, label, split, finder.by_stem(id_), f"{f}[{n}]")
    return col.result("ssv2")


def _parse_semicolon_csv(files: Sequence[Path], labels: Path | None, root: Path,
                         dataset: str) -> Annotations:
    """Shared by Jester and Something-Something v1: ``id;label`` rows, frame folders."""
    if labels is None:
        raise UserError(f"{dataset} needs --labels (the dataset's *-labels.csv)")
    col = _Collector(read_class_list(labels))
    finder = _SourceFinder(root)
    for f in files:
        lines = [ln for ln in _read_text(f).splitlines() if ln.strip()]
        if lines and ";" not in lines[0] and not lines[0].strip().isdigit():
            raise UserError(f"{f}: not a {dataset} CSV (expected rows 'id;label')")
        split = split_from_filename(f)
        for n, line in enumerate(lines, start=1):
            parts = line.split(";")
            if len(parts) > 2 or not parts[0].strip():
                col.bad_row(f"{f}:{n}", f"expected 'id;label', got {line!r}")
                continue
            id_ = parts[0].strip()
            label = parts[1].strip() if len(parts) == 2 else ""
            col.add(id_, label, split, finder.by_stem(id_, folder=True), f"{f}:{n}")
    return col.result(dataset)


def parse_jester(files: Sequence[Path], labels: Path | None, root: Path) -> Annotations:
    """20BN-Jester v1: ``jester-v1-{train,validation,test}.csv`` (``id;label``),
    ``jester-v1-labels.csv``; each video a folder ``<id>/00001.jpg ...``."""
    return _parse_semicolon_csv(files, labels, root, "jester")


def parse_ssv1(files: Sequence[Path], labels: Path | None, root: Path) -> Annotations:
    """Something-Something v1: ``something-something-v1-{train,validation,test}.csv``
    (``id;label``), ``something-something-v1-labels.csv``; frame folders."""
    return _parse_semicolon_csv(files, labels, root, "ssv1")


def parse_ucf101(files: Sequence[Path], labels: Path | None, root: Path) -> Annotations:
    """UCF-101: ``classInd.txt`` (``1 ApplyEyeMakeup``) as --labels and
    ``trainlistNN.txt`` (``Class/v_..avi 1``) / ``testlistNN.txt`` (``Class/v_..avi``)."""
    if labels is None:
        raise UserError("ucf101 needs --labels classInd.txt")
    index: dict[int, str] = {}
    for n, line in enumerate(_read_text(labels).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise UserError(f"{labels}:{n}: not a classInd.txt line ('<index> <class>')")
        index[int(parts[0])] = parts[1]
    classes = [index[k] for k in sorted(index)]
    col = _Collector(classes)
    finder = _SourceFinder(root)
    for f in files:
        name = f.name.lower()
        split = "train" if "train" in name else "test" if "test" in name else None
        if split is None:
            raise UserError(f"{f}: expected a trainlistNN.txt or testlistNN.txt")
        for n, line in enumerate(_read_text(f).splitlines(), start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
                col.bad_row(f"{f}:{n}", f"expected '<path> [<index>]', got {line!r}")
                continue
            rel = parts[0]
            label = rel.split("/")[0] if "/" in rel else ""
            if len(parts) == 2:
                label = index.get(int(parts[1]), f"#{parts[1]}")
            source = finder.by_path(rel) or finder.by_stem(Path(rel).stem)
            col.add(Path(rel).stem, label, split, source, f"{f}:{n}")
    return col.result("ucf101")


DIVING48_CLASSES = 48


def parse_diving48(files: Sequence[Path], labels: Path | None, root: Path) -> Annotations:
    """Diving48: ``Diving48_V2_{train,test}.json`` (lists of ``{"vid_name", "label",
    "start_frame", "end_frame"}``), optional ``Diving48_vocab.json`` as --labels (the class
    names, each a list of four sub-labels); videos ``<vid_name>.mp4``."""
    classes = None
    if labels is not None:
        vocab = _read_json(labels)
        if not isinstance(vocab, list) or not vocab:
            raise UserError(f"{labels}: not a Diving48 vocab JSON (expected a list)")
        classes = [" ".join(map(str, v)) if isinstance(v, list) else str(v) for v in vocab]
    col = _Collector(classes)
    finder = _SourceFinder(root)
    top = -1
    for f in files:
        items = _read_json(f)
        if not isinstance(items, list) or (items and not (
                isinstance(items[0], dict) and "vid_name" in items[0])):
            raise UserError(f"{f}: not a Diving48 JSON (expected a list of objects with "
                            "'vid_name', 'label')")
        split = split_from_filename(f)
        for n, item in enumerate(items):
            try:
                id_ = str(item["vid_name"]).strip()
                lab = int(item["label"])
            except (KeyError, TypeError, ValueError) as exc:
                col.bad_row(f"{f}[{n}]", f"bad entry ({exc})")
                continue
            if classes is not None:
                label = classes[lab] if 0 <= lab < len(classes) else f"#{lab}"
            elif lab < 0:
                col.bad_row(f"{f}[{n}]", f"negative label {lab}")
                continue
            else:
                label = f"{lab:02d}"
                top = max(top, lab)
            col.add(id_, label, split, finder.by_stem(id_), f"{f}[{n}]")
    if classes is None:
        # Two-digit names "00".."47" for every class number (not only those seen), so that
        # label_index is the official class number even for a subset of the videos.
        col.classes = [f"{i:02d}" for i in range(max(DIVING48_CLASSES, top + 1))]
    return col.result("diving48")


FORMATS: dict[str, Callable[[Sequence[Path], Path | None, Path], Annotations]] = {
    "list": parse_list,
    "kinetics": parse_kinetics,
    "ssv2": parse_ssv2,
    "ssv1": parse_ssv1,
    "jester": parse_jester,
    "ucf101": parse_ucf101,
    "diving48": parse_diving48,
}


def parse_annotations(fmt: str, files: Sequence[str | Path], labels: str | Path | None,
                      root: str | Path) -> Annotations:
    """Parse the annotation files of dataset format ``fmt`` (see :data:`FORMATS`)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: root folder not found")
    if not files:
        raise UserError("no --annotations file given")
    paths = [Path(f) for f in files]
    for p in paths + ([Path(labels)] if labels else []):
        if not p.is_file():
            raise UserError(f"{p}: file not found")
    ann = FORMATS[fmt](paths, Path(labels) if labels else None, root)
    if not ann.samples and not ann.failures:
        raise UserError(f"{paths[0]}: no videos listed")
    return ann


_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def safe_key(id_: str) -> str:
    """HDF5 group name for a video id (ids may hold '/', which HDF5 would nest)."""
    return _SAFE.sub(lambda m: f"%{ord(m.group()):02X}", id_)
