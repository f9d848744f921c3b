"""Parsers for the annotation files of each supported dataset, in their official formats.

Every parser turns the user's files into a list of :class:`Sample` (id, label, split, source
path), the class list in the dataset's own order, and row-level :class:`Failure` records
(unparsable rows, unknown labels, duplicate ids), which never stop a run. A file that is
missing or not in the named format raises :class:`UserError` before anything is written.

Splits are normalised to ``train``, ``val`` and ``test`` ("validate"/"validation" -> ``val``).

Besides the datasets' own files, the layouts other toolkits use are read as they are: class
folders (``folders``, also Hugging Face's VideoFolder and PyTorchVideo's directory layout),
mmaction2's video and rawframe lists (``mmaction``, ``mmaction-rawframes``), PySlowFast's and
PyTorchVideo's ``train.csv``/``val.csv``/``test.csv`` (``slowfast``) and HMDB-51's split
files (``hmdb51``). vcorr is single-label: a list with several labels on one line is refused.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from vcorr.pipelines.data.decode import IMAGE_SUFFIXES
from vcorr.pipelines.data.index import load_index
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


# --------------------------------------------------------------------------- other toolkits
@dataclass(frozen=True)
class FormatOptions:
    """Options that only some formats read (the ``vcorr prepare`` flags of the same names;
    None: not given). :data:`OPTION_FORMATS` says which formats read which."""

    val_fraction: float | None = None  # folders without split folders: val share per class
    seed: int | None = None  # folders: seed of that split
    label_base: int | None = None  # mmaction, mmaction-rawframes, slowfast: label of class 0
    split_index: int | None = None  # hmdb51: which of the three official splits
    previous: Path | None = None  # folders: an OUT prepared before, whose splits are kept


DEFAULT_VAL_FRACTION = 0.2
DEFAULT_SEED = 0

OPTION_FORMATS: dict[str, tuple[str, ...]] = {
    "val_fraction": ("folders",), "seed": ("folders",),
    "label_base": ("mmaction", "mmaction-rawframes", "slowfast"),
    "split_index": ("hmdb51",)}

_INT = re.compile(r"[+-]?\d+$")
_SPLIT_NAMES = ("train", "val", "test")


def _visible(names: Sequence[str]) -> list[str]:
    """Sorted names without hidden entries (``.DS_Store``) and macOS zip debris."""
    return sorted(n for n in names if not n.startswith(".") and n != "__MACOSX")


def _suffix(name: str) -> str:
    return os.path.splitext(name)[1].lower()


def _is_int_list(text: str) -> bool:
    parts = text.split(",")
    return len(parts) > 1 and all(_INT.match(p.strip()) for p in parts)


def _several_labels(f: Path, n: int, line: str) -> UserError:
    return UserError(f"{f}:{n}: several labels on one line ({line.strip()!r}); vcorr trains "
                     "single-label classifiers: keep one label per video")


def _lines(f: Path) -> list[tuple[int, str]]:
    """Numbered non-empty lines of a text file, stripped."""
    return [(n, ln.strip()) for n, ln in enumerate(_read_text(f).splitlines(), start=1)
            if ln.strip()]


def _check_first_line(f: Path, lines: list[tuple[int, str]], ok: Callable[[list[str]], bool],
                      expected: str, tail: Callable[[str], str] = lambda line: "") -> None:
    """Refuse a file whose first line (split on whitespace) is not of its format: one line,
    ``F: not EXPECTED; line N is '...'TAIL)`` (``expected`` opens the parenthesis)."""
    if lines:
        n, line = lines[0]
        if not ok(line.split()):
            raise UserError(f"{f}: not {expected}; line {n} is {line!r}{tail(line)})")


# --- folders
def _class_folder_videos(folder: Path) -> list[Path]:
    """Video files under a class folder, at any depth, and frame folders (a folder of images
    and no video file, inside the class folder) as videos."""
    found: list[Path] = []
    top = str(folder)
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = _visible(dirnames)
        names = _visible(filenames)
        videos = [n for n in names if _suffix(n) in VIDEO_SUFFIXES]
        if dirpath != top and not videos and any(_suffix(n) in IMAGE_SUFFIXES for n in names):
            found.append(Path(dirpath))
            dirnames[:] = []  # a frame folder is one video: not searched further
            continue
        found.extend(Path(dirpath) / n for n in videos)
    return found


def val_count(n: int, fraction: float) -> int:
    """Videos of a class of ``n`` that go to val: ``fraction`` of them rounded half up, and
    at least one left for training."""
    return max(0, min(int(n * fraction + 0.5), n - 1))


def split_rank_key(seed: int, rel: str) -> bytes:
    """Rank of a video in its class for the seeded split: a hash of the seed and the video's
    path under --root (Unicode NFC, '/'), so the split depends on neither the order in which
    the file system lists files nor the machine."""
    text = f"{seed}\0{unicodedata.normalize('NFC', rel)}"
    return hashlib.sha256(text.encode("utf-8")).digest()


def _previous_splits(out: Path | None, fraction: float, seed: int) -> dict[str, str]:
    """id -> split of the videos in ``out``'s index, if ``out`` was prepared from class
    folders with the same --val-fraction and --seed (else nothing)."""
    if out is None:
        return {}
    try:
        meta = json.loads((out / "prepare.json").read_text(encoding="utf-8"))["data_options"]
        if (meta.get("format"), meta.get("val_fraction"), meta.get("seed")) != (
                "folders", fraction, seed):
            return {}
        index = load_index(out)
        kept = index.select(index.mask("split", "train") | index.mask("split", "val"))
        return dict(zip(kept.column("id"), kept.column("split")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UserError):
        return {}


def parse_folders(files: Sequence[Path], labels: Path | None, root: Path,
                  opts: FormatOptions) -> Annotations:
    """A folder per class under root, ``<class>/<video>``, or with a split level above,
    ``<split>/<class>/<video>`` (split folders named train, val/validation or test; Hugging
    Face's VideoFolder and PyTorchVideo's directory layout). Classes are the sorted folder
    names (or --labels). The id of a video is its path under root without the extension;
    a folder of images inside a class folder is a frame-folder video.

    Without split folders each class is split into train and val: ``val_count`` of its videos,
    those first in the order of :func:`split_rank_key` (seeded), go to val. Videos already in
    the index of ``opts.previous`` (prepared with the same fraction and seed) keep their split.
    """
    top = [d for d in _visible(os.listdir(root)) if (root / d).is_dir()]
    split_of = {d: normalise_split(d) for d in top}
    split_dirs = [d for d in top if split_of[d] in _SPLIT_NAMES]
    if not top:
        raise UserError(f"{root}: no class folders (expected <class>/<video> or "
                        "<split>/<class>/<video> under it)")
    if split_dirs and len(split_dirs) != len(top):
        others = [d for d in top if d not in split_dirs]
        raise UserError(f"{root}: split folders ({', '.join(split_dirs)}) beside other folders "
                        f"({', '.join(others[:5])}{', ...' if len(others) > 5 else ''}): put "
                        "every class folder in a split folder, or use no split folders")
    if split_dirs and (opts.val_fraction is not None or opts.seed is not None):
        raise UserError(f"{root}: its split folders ({', '.join(split_dirs)}) are the split; "
                        "--val-fraction and --seed are for class folders without split folders")
    fraction = DEFAULT_VAL_FRACTION if opts.val_fraction is None else opts.val_fraction
    seed = DEFAULT_SEED if opts.seed is None else opts.seed
    if not 0 <= fraction < 1:
        raise UserError(f"--val-fraction must be at least 0 and below 1, got {fraction}")
    col = _Collector(read_class_list(labels) if labels else None)
    bases = [(root / d, split_of[d]) for d in split_dirs] if split_dirs else [(root, "")]
    entries: list[tuple[str, str, str, Path]] = []  # path under root, class, split, source
    class_names: set[str] = set()
    for base, split in bases:
        for name in _visible(os.listdir(base)):
            p = base / name
            rel = p.relative_to(root).as_posix()
            if p.is_dir():
                inside = _visible(os.listdir(p))
                if inside and all(_suffix(n) in IMAGE_SUFFIXES and not (p / n).is_dir()
                                  for n in inside):
                    raise UserError(f"{p}: a folder of images where a class folder was "
                                    "expected (a frame folder goes inside its class folder: "
                                    f"{(base / '<class>' / name / inside[0]).as_posix()})")
                class_names.add(name)
                entries.extend((v.relative_to(root).as_posix(), name, split, v)
                               for v in _class_folder_videos(p))
            elif _suffix(name) in VIDEO_SUFFIXES:
                if split == "test":  # an unlabelled test video
                    entries.append((rel, "", split, p))
                else:
                    col.failures.append(Failure(str(PurePosixPath(rel).with_suffix("")), str(p),
                                                "missing label: not in a class folder"))
    if not split_dirs:
        pinned = _previous_splits(opts.previous, fraction, seed)
        by_class: dict[str, list[int]] = {}
        for i, (_, label, _, _) in enumerate(entries):
            by_class.setdefault(label, []).append(i)
        val: set[int] = set()
        for idx in by_class.values():
            ranked = sorted(idx, key=lambda i: (split_rank_key(seed, entries[i][0]),
                                                entries[i][0]))
            val.update(ranked[:val_count(len(idx), fraction)])
        for i, (rel, label, _, src) in enumerate(entries):
            split = pinned.get(_folder_id(rel, src)) or ("val" if i in val else "train")
            entries[i] = (rel, label, split, src)
    for rel, label, split, src in sorted(entries):
        id_ = _folder_id(rel, src)
        col.add(id_, label, split, str(src), rel,
                fix="the id is the path under --root without the extension: two files differ "
                    "only in their extension")
    if labels is None:
        col.classes = sorted(class_names)
    return col.result("folders")


def _folder_id(rel: str, src: Path) -> str:
    return rel if src.is_dir() else str(PurePosixPath(rel).with_suffix(""))


# --- integer labels (mmaction2, PySlowFast, PyTorchVideo)
@dataclass
class _IntRow:
    where: str  # file:line
    id: str
    label: int | None  # None: unlabelled (no label, or -1)
    split: str
    source: str
    problem: str = ""  # a failure reason found while reading the row


def _int_label_annotations(rows: list[_IntRow], labels: Path | None, base: int | None,
                           first: Path, dataset: str) -> Annotations:
    """Map integer labels onto class names: line ``label - base + 1`` of --labels, or, without
    --labels, the class named by its 0-based number (``--label-base`` required)."""
    seen = {r.label for r in rows if r.label is not None and not r.problem}
    if labels is not None:
        classes = read_class_list(labels)
        n = len(classes)
        if base is None:
            if seen and 0 not in seen and max(seen) == n:
                raise UserError(
                    f"{first}: labels run {min(seen)}..{n} with no 0, but {labels} numbers its "
                    f"{n} classes 0..{n - 1} (line 1 is label 0): 1-based labels? add "
                    "--label-base 1 (or --label-base 0 if they are 0-based)")
            base = 0
        span = f"{base}..{n - 1 + base} of {labels.name}"
    else:
        if base is None:
            raise UserError(f"{first}: integer labels need --labels (the class names, one per "
                            "line, line 1 for label 0) or --label-base 0|1 (classes named by "
                            "their number)")
        n = max((lab - base for lab in seen), default=-1) + 1
        classes = [str(i) for i in range(n)]
        span = f"{base}..{n - 1 + base}"
    col = _Collector(classes)
    for r in rows:
        if r.problem:
            col.failures.append(Failure(r.id, r.source or r.where, r.problem))
        elif r.label is None:
            col.add(r.id, "", r.split, r.source, r.where)
        elif 0 <= r.label - base < n:
            col.add(r.id, classes[r.label - base], r.split, r.source, r.where)
        else:
            hint = ""
            if base == 0 and r.label == n and 0 not in seen:
                hint = " (1-based labels? use --label-base 1)"
            elif base == 1 and r.label == 0:
                hint = " (0-based labels? use --label-base 0)"
            col.failures.append(Failure(r.id, r.source or r.where,
                                        f"unknown label: {r.label} at {r.where} outside "
                                        f"{span}{hint}"))
    return col.result(dataset)


def _int_label(text: str) -> int | None:
    """An integer label; -1 (PyTorchVideo's 'no label') is unlabelled."""
    value = int(text)
    return None if value == -1 else value


def _find_video(finder: _SourceFinder, root: Path, rel: str) -> str:
    return finder.by_path(rel) or finder.by_stem(PurePosixPath(rel).stem) or str(root / rel)


def parse_mmaction(files: Sequence[Path], labels: Path | None, root: Path,
                   opts: FormatOptions) -> Annotations:
    """mmaction2's video list: ``path label`` per line (space-separated, label an integer),
    paths relative to root (mmaction's ``data_prefix``); the split from the file name. The
    class names come from --labels (line 1 = label 0) or are the numbers (--label-base)."""
    rows: list[_IntRow] = []
    finder = _SourceFinder(root)
    for f in files:
        lines = _lines(f)
        _check_first_line(
            f, lines, lambda fields: (
                (len(fields) >= 2 and bool(_INT.match(fields[1]) or _is_int_list(fields[1])))
                or (len(fields) == 1 and _suffix(fields[0]) in VIDEO_SUFFIXES)),
            "an mmaction2 video list (expected 'path label' lines, the label an integer",
            lambda line: "; comma-separated lists are --format slowfast" if "," in line else "")
        split = split_from_filename(f)
        for n, line in lines:
            where = f"{f}:{n}"
            fields = line.split()
            if (len(fields) > 2 and all(_INT.match(x) for x in fields[1:])) \
                    or (len(fields) == 2 and _is_int_list(fields[1])):
                raise _several_labels(f, n, line)
            if len(fields) > 2 or (len(fields) == 2 and not _INT.match(fields[1])):
                rows.append(_IntRow(where, "", None, split, "",
                                    f"unparsable row: expected 'path label' (label an "
                                    f"integer), got {line!r}"))
                continue
            rel = fields[0]
            rows.append(_IntRow(where, PurePosixPath(rel).stem,
                                _int_label(fields[1]) if len(fields) == 2 else None, split,
                                _find_video(finder, root, rel)))
    return _int_label_annotations(rows, labels, opts.label_base, files[0], "mmaction")


def frame_folder_problem(folder: Path, listed: int, where: str) -> str:
    """Why a frame folder cannot be prepared as listed ("" if it can): images of several
    kinds (the decoding layer reads every image of the folder as a frame), or fewer frames
    than the list says."""
    names = sorted(n for n in os.listdir(folder) if _suffix(n) in IMAGE_SUFFIXES)
    kinds = sorted({re.sub(r"\d+$", "", os.path.splitext(n)[0]) for n in names})
    if len(kinds) > 1:
        return (f"unsupported frame folder: images of {len(kinds)} kinds "
                f"({', '.join(k + '*' for k in kinds[:4])}); every image in a frame folder is "
                "read as a frame: keep only the RGB frames there (move flow_x_*, flow_y_* out)")
    if len(names) < listed:
        return (f"missing file: the folder holds {len(names)} of the {listed} frames listed "
                f"at {where}")
    return ""


def parse_mmaction_rawframes(files: Sequence[Path], labels: Path | None, root: Path,
                             opts: FormatOptions) -> Annotations:
    """mmaction2's rawframe list: ``frame_dir total_frames label`` per line, or
    ``frame_dir offset total_frames label`` (four fields are read as this variant); frame
    folders ``frame_dir/img_00001.jpg ...`` under root. The frames in the folder are
    prepared; a folder with fewer frames than listed, or with flow images beside the RGB
    ones, is a failure row, and so is an offset other than 0 (a folder is stored whole)."""
    rows: list[_IntRow] = []
    finder = _SourceFinder(root)
    for f in files:
        lines = _lines(f)
        _check_first_line(
            f, lines, lambda fields: (
                len(fields) >= 3 and all(_INT.match(x) for x in fields[1:-1])
                and bool(_INT.match(fields[-1]) or _is_int_list(fields[-1]))),
            "an mmaction2 rawframe list (expected 'frame_dir total_frames label' lines")
        split = split_from_filename(f)
        for n, line in lines:
            where = f"{f}:{n}"
            fields = line.split()
            ints = all(_INT.match(x) for x in fields[1:])
            if (len(fields) > 4 and ints) or (len(fields) in (3, 4) and _is_int_list(fields[-1])):
                raise _several_labels(f, n, line)
            if len(fields) not in (3, 4) or not ints:
                rows.append(_IntRow(where, "", None, split, "",
                                    "unparsable row: expected 'frame_dir total_frames label' "
                                    f"or 'frame_dir offset total_frames label', got {line!r}"))
                continue
            rel = fields[0]
            offset = int(fields[1]) if len(fields) == 4 else 0
            total = int(fields[-2])
            src = finder.by_path(rel) or finder.by_stem(PurePosixPath(rel).name, folder=True)
            problem = ""
            if offset != 0:
                problem = (f"unsupported row: frame offset {offset} at {where} (vcorr prepares "
                           "a frame folder whole: give each clip its own folder)")
            elif src and os.path.isdir(src):
                problem = frame_folder_problem(Path(src), total, where)
            rows.append(_IntRow(where, PurePosixPath(rel).name, _int_label(fields[-1]), split,
                                src or str(root / rel), problem))
    return _int_label_annotations(rows, labels, opts.label_base, files[0],
                                  "mmaction-rawframes")


def parse_slowfast(files: Sequence[Path], labels: Path | None, root: Path,
                   opts: FormatOptions) -> Annotations:
    """PySlowFast's and PyTorchVideo's ``train.csv``, ``val.csv``, ``test.csv``: ``path label``
    per line, no header, separated by a space (some forks: a comma), label an integer (none
    or -1: unlabelled); paths relative to root (``PATH_PREFIX``) or absolute. The split comes
    from the file name; class names as for mmaction."""
    rows: list[_IntRow] = []
    finder = _SourceFinder(root)
    for f in files:
        lines = _lines(f)
        comma = False
        if lines:
            n, line = lines[0]
            fields = line.split()
            if len(fields) >= 2 and (_INT.match(fields[-1]) or _is_int_list(fields[-1])):
                comma = False
            elif "," in line and _INT.match(line.rsplit(",", 1)[1].strip()):
                comma = True
            elif not (len(fields) == 1 and _suffix(fields[0]) in VIDEO_SUFFIXES):
                raise UserError(f"{f}: not a SlowFast/PyTorchVideo CSV (expected 'path label' "
                                f"lines, the label an integer; line {n} is {line!r})")
        split = split_from_filename(f)
        for n, line in lines:
            where = f"{f}:{n}"
            if comma:
                parts = [p.strip() for p in line.split(",")]
                if len(parts) > 2 and all(_INT.match(p) for p in parts[1:]):
                    raise _several_labels(f, n, line)
                rel, lab = parts[0], parts[1] if len(parts) == 2 else ""
                bad = len(parts) > 2
            else:
                fields = line.split()
                if (len(fields) > 2 and all(_INT.match(x) for x in fields[1:])) \
                        or (len(fields) >= 2 and _is_int_list(fields[-1])):
                    raise _several_labels(f, n, line)
                rel, lab = (line.rsplit(None, 1) if len(fields) >= 2 else (line, ""))
                bad = False
            if bad or (lab and not _INT.match(lab)):
                rows.append(_IntRow(where, "", None, split, "",
                                    "unparsable row: expected 'path label' (label an "
                                    f"integer), got {line!r}"))
                continue
            rows.append(_IntRow(where, PurePosixPath(rel).stem,
                                _int_label(lab) if lab else None, split,
                                _find_video(finder, root, rel)))
    return _int_label_annotations(rows, labels, opts.label_base, files[0], "slowfast")


# --- HMDB-51
_HMDB_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<k>\d+)\.txt$", re.IGNORECASE)
_HMDB_SPLIT = {"1": "train", "2": "test"}  # 0: not used in this split


def _hmdb_files(files: Sequence[Path], split_index: int | None
                ) -> list[tuple[Path, str, int]]:
    """(file, class, split number) of the split files given, folders expanded; one split."""
    if split_index is not None and split_index not in (1, 2, 3):
        raise UserError(f"--split-index must be 1, 2 or 3, got {split_index}")
    found: list[tuple[Path, str, int]] = []
    for p in files:
        if p.is_dir():
            inside = [p / n for n in sorted(os.listdir(p)) if _HMDB_FILE.match(n)]
            if not inside:
                raise UserError(f"{p}: no HMDB-51 split files (<class>_test_split<N>.txt) in "
                                "the folder")
            if split_index is not None:
                inside = [q for q in inside if int(_HMDB_FILE.match(q.name)["k"]) == split_index]
                if not inside:
                    raise UserError(f"{p}: no split files of --split-index {split_index} "
                                    f"(<class>_test_split{split_index}.txt) in the folder")
        else:
            inside = [p]
        for q in inside:
            m = _HMDB_FILE.match(q.name)
            if not m:
                raise UserError(f"{q}: not an HMDB-51 split file (expected "
                                "<class>_test_split<N>.txt)")
            k = int(m["k"])
            if split_index is not None and k != split_index:
                raise UserError(f"{q}: a file of split {k}, but --split-index {split_index}")
            found.append((q, m["cls"], k))
    numbers = sorted({k for _, _, k in found})
    if len(numbers) > 1:
        raise UserError(f"{files[0]}: split files of splits {', '.join(map(str, numbers))}: "
                        "HMDB-51's three splits are alternatives; give one split's files or "
                        "choose with --split-index 1|2|3")
    return found


def _hmdb_row(fields: list[str]) -> bool:
    """A row of an HMDB-51 split file: a video and 0 (not in this split), 1 or 2."""
    return len(fields) == 2 and fields[1] in ("0", "1", "2")


def parse_hmdb51(files: Sequence[Path], labels: Path | None, root: Path,
                 opts: FormatOptions) -> Annotations:
    """HMDB-51: the split files ``<class>_test_split<N>.txt`` (``video.avi 1|2|0``: train,
    test, not in this split), given one by one or as their folder (``--split-index`` picks
    the split); the class from the file name, classes sorted (or --labels). Videos are
    ``<class>/<video>.avi`` under root, or found by name anywhere under it."""
    col = _Collector(read_class_list(labels) if labels else None)
    finder = _SourceFinder(root)
    class_names: set[str] = set()
    for f, cls, _ in _hmdb_files(files, opts.split_index):
        class_names.add(cls)
        lines = _lines(f)
        _check_first_line(f, lines, _hmdb_row,
                          "an HMDB-51 split file (expected 'video.avi 0|1|2' lines")
        for n, line in lines:
            fields = line.split()
            if not _hmdb_row(fields):
                col.bad_row(f"{f}:{n}", f"expected 'video.avi 0|1|2', got {line!r}")
                continue
            if fields[1] == "0":
                continue
            name = fields[0]
            col.add(PurePosixPath(name).stem, cls, _HMDB_SPLIT[fields[1]],
                    _find_video(finder, root, f"{cls}/{name}"), f"{f}:{n}")
    if labels is None:
        col.classes = sorted(class_names)
    return col.result("hmdb51")


FORMATS: dict[str, Callable[..., Annotations]] = {
    "list": parse_list,
    "kinetics": parse_kinetics,
    "ssv2": parse_ssv2,
    "ssv1": parse_ssv1,
    "jester": parse_jester,
    "ucf101": parse_ucf101,
    "diving48": parse_diving48,
    "folders": parse_folders,
    "mmaction": parse_mmaction,
    "mmaction-rawframes": parse_mmaction_rawframes,
    "slowfast": parse_slowfast,
    "hmdb51": parse_hmdb51,
}
# Parsers called with the FormatOptions as a fourth argument.
_TAKE_OPTIONS = ("folders", "mmaction", "mmaction-rawframes", "slowfast", "hmdb51")


def parse_annotations(fmt: str, files: Sequence[str | Path], labels: str | Path | None,
                      root: str | Path, options: FormatOptions | None = None) -> Annotations:
    """Parse the annotation files of dataset format ``fmt`` (see :data:`FORMATS`).

    ``options``: the options of the formats that read some (:data:`OPTION_FORMATS`); one
    given to a format that does not read it is refused. ``folders`` takes no files (the
    layout of ``root`` is its annotation); ``hmdb51`` also takes the folder of its split files.
    """
    opts = options or FormatOptions()
    if fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    for name, formats in OPTION_FORMATS.items():
        if getattr(opts, name) is not None and fmt not in formats:
            raise UserError(f"--{name.replace('_', '-')} is an option of --format "
                            f"{', '.join(formats)} only, not of --format {fmt}")
    if opts.label_base not in (None, 0, 1):
        raise UserError(f"--label-base must be 0 or 1, got {opts.label_base}")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: root folder not found")
    if fmt == "folders" and files:
        raise UserError(f"{files[0]}: --format folders reads the class folders under --root "
                        f"({root}) and takes no --annotations")
    if fmt != "folders" and not files:
        raise UserError(f"--format {fmt} needs --annotations (only --format folders reads its "
                        "layout from --root)")
    paths = [Path(f) for f in files]
    for p in paths + ([Path(labels)] if labels else []):
        if not (p.is_file() or (fmt == "hmdb51" and p in paths and p.is_dir())):
            raise UserError(f"{p}: file not found")
    parser = FORMATS[fmt]
    label_path = Path(labels) if labels else None
    ann = parser(paths, label_path, root, opts) if fmt in _TAKE_OPTIONS \
        else parser(paths, label_path, root)
    if not ann.samples and not ann.failures:
        if fmt == "folders":
            raise UserError(f"{root}: no videos in class folders (expected "
                            "<class>/<video> or <split>/<class>/<video> under it)")
        raise UserError(f"{paths[0]}: no videos listed")
    return ann


_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def safe_key(id_: str) -> str:
    """HDF5 group name for a video id (ids may hold '/', which HDF5 would nest)."""
    return _SAFE.sub(lambda m: f"%{ord(m.group()):02X}", id_)
