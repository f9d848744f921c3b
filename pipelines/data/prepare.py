"""``vcorr prepare``: decode, temporally downsample, resize and store videos in HDF5 shards.

The work is planned deterministically from the annotations: each split's videos, in annotation
order, are cut into shards of ``videos_per_shard``; shard j belongs to part ``j % N`` of
``--part I/N``. Every shard carries a hash of its plan (options, classes and its videos), so a
rerun skips shards that are complete and current, redoes the rest, and the index is always
rebuilt from the shards on disk: a killed run loses nothing finished and duplicates nothing.

Videos are read through :mod:`vcorr.pipelines.data.decode` (display orientation, frames selected by
presentation time, PyAV where decord is wrong). A video whose frames decode only in part is
stored from the frames that decode and listed in ``warnings.csv`` (a failure with
``--strict``); it is a failure only when no frame decodes. Decoder messages go to
``OUT/prepare.log``, prefixed with the video id.

A shard in which every video failed is not written (no empty shards); its failures are kept in
``shards/<split>-NNNNN.failures.json`` for ``failures.csv``, and a rerun tries those videos
again. A run after which its shards hold no video at all raises :class:`UserError` (exit 2)
naming the most common failure reasons, after writing ``failures.csv``.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vcorr.pipelines.data.annotations import (DEFAULT_SEED, DEFAULT_VAL_FRACTION, Annotations,
                                              Failure, FormatOptions, Sample,
                                              parse_annotations)
from vcorr.pipelines.data.decode import (DAMAGED, MISSING_FILE, FrameChunk, VideoError,
                                         VideoReader, first_line, stored_fps)
from vcorr.pipelines.data.shards import (FAILURE_COLUMNS, INDEX_COLUMNS, WARNING_COLUMNS,
                                         ShardWriter, read_shard_tables, shard_name)
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.fileio import write_atomic

# Options that change what is stored; a rerun into the same OUT must agree on them.
_DATA_OPTIONS = ("format", "every", "fps", "short_side", "codec", "quality",
                 "videos_per_shard", "min_frames", "folder_fps")


@dataclass
class PrepareOptions:
    """Options of :func:`prepare` (the CLI flags of ``vcorr prepare``)."""

    format: str
    annotations: list[str]
    root: str
    out: str
    labels: str | None = None
    every: int = 1
    fps: float | None = None
    short_side: int = 128
    codec: str = "jpeg"
    quality: int = 90
    videos_per_shard: int = 1000
    min_frames: int = 1
    folder_fps: float = 12.0
    strict: bool = False
    workers: int = 1
    part: tuple[int, int] = (0, 1)
    progress: bool = True
    # Options of some formats only (None: not given; see annotations.OPTION_FORMATS).
    val_fraction: float | None = None
    seed: int | None = None
    label_base: int | None = None
    split_index: int | None = None

    def check(self) -> None:
        if self.every < 1:
            raise UserError(f"--every must be at least 1, got {self.every}")
        if self.fps is not None and self.fps <= 0:
            raise UserError(f"--fps must be positive, got {self.fps}")
        if self.fps is not None and self.every != 1:
            raise UserError("use either --every or --fps, not both")
        if self.short_side < 0:
            raise UserError(f"--short-side must be >= 0, got {self.short_side}")
        if self.codec not in ("jpeg", "raw"):
            raise UserError(f"--codec must be jpeg or raw, got {self.codec!r}")
        if not 1 <= self.quality <= 100:
            raise UserError(f"--quality must be in 1..100, got {self.quality}")
        if self.videos_per_shard < 1:
            raise UserError("--videos-per-shard must be at least 1")
        i, n = self.part
        if not (n >= 1 and 0 <= i < n):
            raise UserError(f"--part must be I/N with 0 <= I < N, got {i}/{n}")

    def data_options(self) -> dict:
        opts = {k: getattr(self, k) for k in _DATA_OPTIONS}
        # Only when set: folders prepared before --strict existed keep their plan hashes.
        if self.strict:
            opts["strict"] = True
        if self.format == "folders":  # the seeded split: a rerun must draw the same one
            fo = self.format_options()
            opts["val_fraction"] = (DEFAULT_VAL_FRACTION if fo.val_fraction is None
                                    else fo.val_fraction)
            opts["seed"] = DEFAULT_SEED if fo.seed is None else fo.seed
        return opts

    def format_options(self) -> FormatOptions:
        """The options the annotation parsers read (``previous``: OUT, whose index keeps the
        splits of class folders drawn by an earlier run)."""
        return FormatOptions(self.val_fraction, self.seed, self.label_base, self.split_index,
                             previous=Path(self.out))


@dataclass
class _Shard:
    name: str
    samples: list[Sample]
    plan_hash: str


@dataclass
class PrepareResult:
    """What :func:`prepare` did (also saved as ``OUT/prepare.json``)."""

    out: str
    videos: int
    per_split: dict[str, int]
    failures: int
    warnings: int
    shards_written: int
    shards_skipped: int
    shards_pending: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # failures.csv counted by reason phrase (the text before the first ':'), most common first
    failure_reasons: dict[str, int] = field(default_factory=dict)
    videos_per_shard: dict[str, int] = field(default_factory=dict)
    # class-list hygiene (:func:`vcorr.pipelines.data.inspect.class_checks`), one line each
    class_checks: list[str] = field(default_factory=list)


def plan_shards(ann: Annotations, opt: PrepareOptions) -> list[_Shard]:
    """Cut each split's samples, in annotation order, into shards with their plan hashes."""
    by_split: dict[str, list[Sample]] = {}
    for s in ann.samples:
        by_split.setdefault(s.split, []).append(s)
    base = json.dumps([opt.data_options(), ann.classes], sort_keys=True)
    shards = []
    for split in sorted(by_split):
        items = by_split[split]
        for k in range(0, len(items), opt.videos_per_shard):
            chunk = items[k:k + opt.videos_per_shard]
            h = hashlib.sha256(base.encode())
            for s in chunk:
                h.update(f"\0{s.id}\0{s.label}\0{s.split}".encode())
                # A video not found changes the plan: once it is there (downloaded later), a
                # rerun redoes its shard. (Only then, so shards of found videos keep their
                # hashes from before this rule.)
                if not s.source or not os.path.exists(s.source):
                    h.update(b"\0missing")
            shards.append(_Shard(shard_name(split, k // opt.videos_per_shard), chunk,
                                 h.hexdigest()[:16]))
    return shards


# --------------------------------------------------------------------------- one video
def _resize_shape(h: int, w: int, short_side: int) -> tuple[int, int]:
    if short_side <= 0:
        return h, w
    if h <= w:
        return short_side, max(1, round(w * short_side / h))
    return max(1, round(h * short_side / w)), short_side


def _torch_ops():
    """torch, ``encode_jpeg`` and torchvision's functional transforms, imported when a video
    is first resized or encoded (or by :func:`prepare` before its workers fork, so that they
    start with them): checking the options and annotations, and a rerun with nothing left to
    do, never pay for importing torch (seconds)."""
    import torch
    from torchvision.io import encode_jpeg
    from torchvision.transforms.v2 import functional as TF

    return torch, encode_jpeg, TF


def process_video(sample: Sample, opt: PrepareOptions, classes: list[str]) -> dict:
    """Decode, downsample, resize and encode one video, through the one decoding layer.

    Returns ``{"row": index row, "jpegs": [bytes]}`` (or ``"frames"``: array, for raw), with
    ``"warning"`` when only part of the video decoded, or ``{"failure": reason}``; and
    ``"log"``: the decoder's messages. Never raises for bad input: every problem becomes a
    reason that starts with a fixed phrase (:mod:`vcorr.pipelines.data.decode`).
    """
    src = Path(sample.source) if sample.source else None
    if src is None:
        return {"failure": f"{MISSING_FILE}: no video file or frame folder for it under "
                           f"{opt.root}", "log": []}
    try:
        reader = VideoReader(src, folder_fps=opt.folder_fps)
    except VideoError as exc:
        return {"failure": str(exc), "log": []}
    info = reader.info
    planned = info.select(opt.every, opt.fps)
    if len(planned) < opt.min_frames:
        cut = (f" (the container holds {info.num_frames} of the {info.header_frames} frames "
               "its header announces)" if info.header_frames > info.num_frames else "")
        return {"failure": _too_short(len(planned), opt) + cut, "log": info.log}
    jpegs: list[bytes] = []
    raw: list[np.ndarray] = []
    size = _resize_shape(info.height, info.width, opt.short_side)
    # Frame folders of JPEGs at their own size keep their bytes: no re-encoding loss (the
    # decoding layer decodes each once anyway, so a corrupt image is left out and counted).
    keep_bytes = (opt.codec == "jpeg" and opt.short_side == 0 and info.frame_folder
                  and all(f.suffix.lower() in (".jpg", ".jpeg") for f in info.files))

    def store(chunk: FrameChunk) -> None:
        if keep_bytes:
            jpegs.extend(f.read_bytes() for f in chunk.files)
            return
        if opt.codec == "raw" and size == tuple(chunk.frames.shape[1:3]):
            raw.append(np.ascontiguousarray(chunk.frames))  # stored as decoded
            return
        torch, encode_jpeg, TF = _torch_ops()
        frames = torch.from_numpy(chunk.frames).permute(0, 3, 1, 2)  # (N, 3, H, W)
        if size != tuple(frames.shape[2:]):
            frames = TF.resize(frames, list(size), antialias=True)
        if opt.codec == "raw":
            raw.append(frames.permute(0, 2, 3, 1).contiguous().numpy())
        else:
            jpegs.extend(bytes(b.numpy()) for b in encode_jpeg(list(frames),
                                                               quality=opt.quality))

    try:
        report = reader.decode(store, every=opt.every, fps=opt.fps)
    except VideoError as exc:
        return {"failure": str(exc), "log": info.log}
    except Exception as exc:  # a bug of ours must not stop a dataset-wide run: record it
        return {"failure": f"internal error: {type(exc).__name__}: {first_line(exc)}",
                "log": info.log}
    kept = len(jpegs) or sum(len(r) for r in raw)
    log = report.log
    problem = report.problem()
    if problem and opt.strict:
        return {"failure": f"{DAMAGED}: {problem} (--strict)", "log": log}
    if kept < opt.min_frames:
        return {"failure": _too_short(kept, opt) + (f" ({problem})" if problem else ""),
                "log": log}
    row = {"id": sample.id, "split": sample.split, "label": sample.label,
           "label_index": classes.index(sample.label) if sample.label else -1,
           "num_frames": kept, "fps": round(stored_fps(info.fps, opt.every, opt.fps,
                                                   info.nominal_rate is not None), 6),
           "source_fps": round(info.fps, 6), "height": size[0], "width": size[1],
           "duration": round(info.duration, 6), "variable_rate": int(info.variable_rate)}
    result = {"row": row, "log": log, "warning": problem}
    if opt.codec == "raw":
        result["frames"] = np.concatenate(raw)
    else:
        result["jpegs"] = jpegs
    return result


def _too_short(kept: int, opt: PrepareOptions) -> str:
    return f"too short: {kept} frames after downsampling, need {opt.min_frames}"


def _worker_init() -> None:
    torch = _torch_ops()[0]  # already imported by the parent (fork): no cost
    torch.set_num_threads(1)  # parallelism comes from processes, not intra-op threads


def _process_star(args: tuple) -> dict:
    return process_video(*args)


def _ordered_map(tasks: Iterable[tuple], workers: int) -> Iterator[dict]:
    """``map(process_video, tasks)`` in order, over ``workers`` processes, with a bounded
    number of videos in flight (memory stays flat on datasets of any size)."""
    if workers <= 1:
        for t in tasks:
            yield _process_star(t)
        return
    _torch_ops()  # imported before the workers fork, so that they start at once
    with ProcessPoolExecutor(workers, initializer=_worker_init) as pool:
        window: list[Future] = []
        for t in tasks:
            window.append(pool.submit(_process_star, t))
            if len(window) >= 4 * workers:
                yield window.pop(0).result()
        for fut in window:
            yield fut.result()


# --------------------------------------------------------------------------- the run
def prepare(opt: PrepareOptions) -> PrepareResult:
    """Prepare a dataset into ``opt.out`` (see the module docstring)."""
    t0 = time.time()
    opt.check()
    ann = parse_annotations(opt.format, opt.annotations, opt.labels, opt.root,
                            opt.format_options())
    out = Path(opt.out)
    previous = _read_previous_options(out)
    if previous is not None and previous != opt.data_options():
        diff = ", ".join(f"{k}: {previous.get(k)!r} -> {v!r}"
                         for k, v in opt.data_options().items() if previous.get(k) != v)
        raise UserError(f"{out}: already prepared with other options ({diff}); "
                        "use another --out or delete it")
    shards = plan_shards(ann, opt)
    part, nparts = opt.part
    mine = [s for j, s in enumerate(shards) if j % nparts == part]
    (out / "shards").mkdir(parents=True, exist_ok=True)
    todo = [s for s in mine if _shard_hash(out / "shards" / s.name) != s.plan_hash]
    written = 0
    total = sum(len(s.samples) for s in todo)
    tasks = ((smp, opt, ann.classes) for s in todo for smp in s.samples)
    results = _ordered_map(tasks, opt.workers)
    bar = _progress(total, opt.progress)
    # Decoder messages go to the log, prefixed with the video id, never to the terminal; one
    # log per part, so that parts on several machines never interleave their lines.
    log_name = "prepare.log" if nparts == 1 else f"prepare.part{part}of{nparts}.log"
    log = open(out / log_name, "a", encoding="utf-8")
    log.write(f"# vcorr prepare part {part}/{nparts}, {time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
    try:
        for s in todo:
            writer = ShardWriter(out / "shards" / s.name, s.plan_hash)
            try:
                for smp in s.samples:
                    r = next(results)
                    bar.update(1)
                    if r.get("log"):
                        log.write("".join(f"[{smp.id}] {line}\n" for line in r["log"]))
                    if "failure" in r:
                        writer.add_failure(smp.id, smp.source, r["failure"])
                        continue
                    if r["warning"]:
                        writer.add_warning(smp.id, smp.source, r["warning"])
                    if "frames" in r:
                        writer.add_raw(r["row"], r["frames"])
                    else:
                        writer.add_jpeg(r["row"], r["jpegs"])
            except BaseException:
                writer.abort()
                raise
            sidecar = _failures_path(out, s.name)
            if not writer.manifest:
                # Every video failed: no empty shard. Its failures go to a small file instead,
                # so that failures.csv stays complete and a rerun (with a fixed --root, say)
                # tries these videos again.
                writer.abort()
                write_atomic(sidecar, json.dumps({"plan_hash": s.plan_hash,
                                                  "failures": writer.failures,
                                                  "warnings": writer.warnings}) + "\n")
                continue
            writer.close()
            sidecar.unlink(missing_ok=True)
            written += 1
    finally:
        bar.close()
        results.close()
        log.close()
    result = build_index(out, shards, ann.failures)
    result.shards_written, result.shards_skipped = written, len(mine) - len(todo)
    result.seconds = round(time.time() - t0, 3)
    write_atomic(out / "classes.txt", "".join(c + "\n" for c in ann.classes))
    if not result.shards_pending:
        from vcorr.pipelines.data.inspect import class_checks, read_index

        result.class_checks = class_checks(read_index(out), list(ann.classes))
    meta = {"options": {**asdict(opt), "part": f"{part}/{nparts}"},
            "data_options": opt.data_options(), "dataset": ann.dataset,
            "num_classes": len(ann.classes), "versions": _versions(),
            "counts": {"videos": result.videos, "per_split": result.per_split,
                       "failures": result.failures, "warnings": result.warnings,
                       "shards": len(shards),
                       "shards_pending": result.shards_pending},
            "class_checks": result.class_checks,
            "seconds": result.seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_atomic(out / "prepare.json", json.dumps(meta, indent=2) + "\n")
    # A part with no shard to do (more parts than shards) is not a failure; a dataset whose
    # every annotation row failed, or a part whose every video failed, is.
    mine_videos = sum(result.videos_per_shard.get(s.name, 0) for s in mine)
    if not shards or (mine and mine_videos == 0):
        raise UserError(_nothing_prepared(out, opt, sum(len(s.samples) for s in mine), result))
    return result


def _nothing_prepared(out: Path, opt: PrepareOptions, tried: int, r: PrepareResult) -> str:
    """The error of a run after which its shards hold no video (every one failed)."""
    part = "" if opt.part == (0, 1) else f" in part {opt.part[0]}/{opt.part[1]}"
    reasons = ", ".join(f"{v} x {k}" for k, v in list(r.failure_reasons.items())[:3])
    hint = ""
    if next(iter(r.failure_reasons), "") == MISSING_FILE:
        hint = f"; are the videos under --root {opt.root}?"
    return (f"{out}: no video was prepared{part} ({tried} tried; failures: "
            f"{reasons or 'none'}; see {out / 'failures.csv'}){hint}")


def _failures_path(out: Path, shard: str) -> Path:
    """Where the failures of a shard in which no video could be stored are kept."""
    return out / "shards" / (Path(shard).stem + ".failures.json")


def _read_failed_shard(out: Path, shard) -> dict | None:
    """The failures file of ``shard`` if it is that plan's (else None)."""
    path = _failures_path(out, shard.name)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("plan_hash") == shard.plan_hash else None


def build_index(out: Path, shards: list, annotation_failures: list[Failure]) -> PrepareResult:
    """Rebuild ``index.csv``, ``failures.csv`` and ``warnings.csv`` from the complete,
    current shards (and the failures files of planned shards in which no video could be
    stored: those are not written).

    Shards of other parts that are not finished yet are listed as pending.
    """
    rows: list[dict] = []
    fails = [asdict(f) for f in annotation_failures]
    warns: list[dict] = []
    pending = []
    for s in shards:
        path = out / "shards" / s.name
        if _shard_hash(path) != s.plan_hash:
            failed = _read_failed_shard(out, s)
            if failed is None:
                pending.append(s.name)
            else:  # every video of it failed: no shard, its failures are still listed
                fails.extend(failed["failures"])
                warns.extend(failed["warnings"])
            continue
        tables = read_shard_tables(path)
        rows.extend(tables.manifest)
        fails.extend(tables.failures)
        warns.extend(tables.warnings)
    _write_csv(out / "index.csv", INDEX_COLUMNS, rows)
    _write_csv(out / "failures.csv", FAILURE_COLUMNS, fails)
    _write_csv(out / "warnings.csv", WARNING_COLUMNS, warns)
    per_split = dict(sorted(Counter(r["split"] for r in rows).items()))
    result = PrepareResult(str(out), len(rows), per_split, len(fails), len(warns), 0, 0, pending)
    result.failure_reasons = dict(Counter(f["reason"].split(":")[0] for f in fails).most_common())
    result.videos_per_shard = dict(Counter(r["shard"] for r in rows))
    return result


def _shard_hash(path: Path) -> str | None:
    """Plan hash of a complete shard at ``path``, or None if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        return read_shard_tables(path).options_hash
    except Exception:  # half-written or corrupt: redo it
        return None


def _read_previous_options(out: Path) -> dict | None:
    meta = out / "prepare.json"
    if not meta.is_file():
        return None
    try:
        return json.loads(meta.read_text())["data_options"]
    except (ValueError, KeyError):
        raise UserError(f"{meta}: unreadable; delete it to prepare into {out}") from None


def _write_csv(path: Path, columns: tuple, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore",
                       lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_atomic(path, buf.getvalue())


def _versions() -> dict:
    """The versions of the packages that prepare the data. A package this run has not
    imported (torch on a rerun with nothing left to do) is read from its installed metadata
    instead of imported; that version lacks the local build tag (``+cu130``)."""
    from importlib.metadata import version

    def installed(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "unknown"

    def of(name: str) -> str:
        module = sys.modules.get(name)
        return str(getattr(module, "__version__", None) or installed(name))

    return {"vcorr": installed("vcorr"), "python": platform.python_version(),
            "torch": of("torch"), "torchvision": of("torchvision"), "decord": of("decord"),
            "av": of("av"), "h5py": of("h5py"), "numpy": np.__version__}


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return _NoBar()
    from vcorr.pipelines.progress import make_progress

    return make_progress(total, "prepare", unit="video")
