"""``vcorr prepare``: decode, temporally downsample, resize and store videos in HDF5 shards.

The work is planned deterministically from the annotations: each split's videos, in annotation
order, are cut into shards of ``videos_per_shard``; shard j belongs to part ``j % N`` of
``--part I/N``. Every shard carries a hash of its plan (options, classes and its videos), so a
rerun skips shards that are complete and current, redoes the rest, and the index is always
rebuilt from the shards on disk: a killed run loses nothing finished and duplicates nothing.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import platform
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
# Imported here, before workers fork, so that they start at once.
import torch
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg
from torchvision.transforms.v2 import functional as TF

from pipelines.data.annotations import Annotations, Failure, Sample, parse_annotations
from pipelines.data.shards import (FAILURE_COLUMNS, INDEX_COLUMNS, ShardWriter,
                                   read_shard_tables, shard_name)
from pipelines.data.video_io import VideoSource, select_frames, stored_fps
from pipelines.errors import UserError
from pipelines.fileio import write_atomic

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
    workers: int = 1
    part: tuple[int, int] = (0, 1)
    progress: bool = True

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
        return {k: getattr(self, k) for k in _DATA_OPTIONS}


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
    shards_written: int
    shards_skipped: int
    shards_pending: list[str] = field(default_factory=list)
    seconds: float = 0.0


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


def process_video(sample: Sample, opt: PrepareOptions, classes: list[str]) -> dict:
    """Decode, downsample, resize and encode one video.

    Returns ``{"row": index row, "jpegs": [bytes]}`` or ``{"frames": array}`` for raw, or
    ``{"failure": reason}``. Never raises for bad input: every problem becomes a reason.
    """
    src = Path(sample.source) if sample.source else None
    if src is None or not src.exists():
        return {"failure": "missing video file or frame folder"}
    if src.is_file() and src.stat().st_size == 0:
        return {"failure": "empty file (0 bytes)"}
    try:
        video = VideoSource(src, folder_fps=opt.folder_fps)
    except Exception as exc:  # decord raises RuntimeError/DECORDError for bad containers
        return {"failure": f"undecodable or truncated video: {_first_line(exc)}"}
    if video.num_frames == 0:
        return {"failure": "no frames" + (" in folder" if src.is_dir() else "")}
    keep = select_frames(video.num_frames, video.fps, opt.every, opt.fps)
    if len(keep) < opt.min_frames:
        return {"failure": f"too short: {len(keep)} frames after downsampling, "
                           f"need {opt.min_frames}"}
    jpegs: list[bytes] = []
    raw: list[np.ndarray] = []
    size = None
    try:
        for start in range(0, len(keep), 32):
            idx = keep[start:start + 32]
            # Frame folders of JPEGs at their own size keep their bytes: no re-encoding loss.
            if (opt.codec == "jpeg" and opt.short_side == 0 and video.frame_file(0) is not None
                    and video.frame_file(0).suffix.lower() in (".jpg", ".jpeg")):
                chunk = [video.frame_file(i).read_bytes() for i in idx]
                # Decode them once anyway: a truncated or corrupt frame must be a failure
                # here, not a crash in training, and all frames must share one size.
                for d in decode_jpeg([torch.frombuffer(bytearray(b), dtype=torch.uint8)
                                      for b in chunk], mode=ImageReadMode.RGB):
                    if size is None:
                        size = tuple(d.shape[1:])
                    elif tuple(d.shape[1:]) != size:
                        raise ValueError(f"frame size {tuple(d.shape[1:])} differs from {size}")
                jpegs.extend(chunk)
                continue
            frames = torch.from_numpy(video.get(idx)).permute(0, 3, 1, 2)  # (N, 3, H, W)
            target = _resize_shape(frames.shape[2], frames.shape[3], opt.short_side)
            if target != tuple(frames.shape[2:]):
                frames = TF.resize(frames, list(target), antialias=True)
            size = target
            if opt.codec == "raw":
                raw.append(frames.permute(0, 2, 3, 1).contiguous().numpy())
            else:
                jpegs.extend(bytes(b.numpy()) for b in encode_jpeg(list(frames),
                                                                   quality=opt.quality))
    except Exception as exc:
        return {"failure": f"undecodable or truncated video: {_first_line(exc)}"}
    row = {"id": sample.id, "split": sample.split, "label": sample.label,
           "label_index": classes.index(sample.label) if sample.label else -1,
           "num_frames": len(keep), "fps": round(stored_fps(video.fps, opt.every, opt.fps), 6),
           "source_fps": round(video.fps, 6), "height": size[0], "width": size[1]}
    if opt.codec == "raw":
        return {"row": row, "frames": np.concatenate(raw)}
    return {"row": row, "jpegs": jpegs}


# decord prefixes its messages with the time and its source file ("[20:28:41] /github/.../
# video_reader.cc:486: Error: ..."): dropped, so that failures.csv is the same on every run.
_DECORD_PREFIX = re.compile(r"^\[\d{2}:\d{2}:\d{2}\] \S+:\d+: ")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return _DECORD_PREFIX.sub("", text[0] if text else type(exc).__name__)[:200]


def _worker_init() -> None:
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
    ann = parse_annotations(opt.format, opt.annotations, opt.labels, opt.root)
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
    try:
        for s in todo:
            writer = ShardWriter(out / "shards" / s.name, s.plan_hash)
            try:
                for smp in s.samples:
                    r = next(results)
                    if "failure" in r:
                        writer.add_failure(smp.id, smp.source, r["failure"])
                    elif "frames" in r:
                        writer.add_raw(r["row"], r["frames"])
                    else:
                        writer.add_jpeg(r["row"], r["jpegs"])
                    bar.update(1)
            except BaseException:
                writer.abort()
                raise
            writer.close()
            written += 1
    finally:
        bar.close()
        results.close()
    result = build_index(out, shards, ann.failures)
    result.shards_written, result.shards_skipped = written, len(mine) - len(todo)
    result.seconds = round(time.time() - t0, 3)
    write_atomic(out / "classes.txt", "".join(c + "\n" for c in ann.classes))
    meta = {"options": {**asdict(opt), "part": f"{part}/{nparts}"},
            "data_options": opt.data_options(), "dataset": ann.dataset,
            "num_classes": len(ann.classes), "versions": _versions(),
            "counts": {"videos": result.videos, "per_split": result.per_split,
                       "failures": result.failures, "shards": len(shards),
                       "shards_pending": result.shards_pending},
            "seconds": result.seconds, "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_atomic(out / "prepare.json", json.dumps(meta, indent=2) + "\n")
    return result


def build_index(out: Path, shards: list, annotation_failures: list[Failure]) -> PrepareResult:
    """Rebuild ``index.csv`` and ``failures.csv`` from the complete, current shards.

    Shards of other parts that are not finished yet are listed as pending.
    """
    rows: list[dict] = []
    fails = [asdict(f) for f in annotation_failures]
    pending = []
    for s in shards:
        path = out / "shards" / s.name
        if _shard_hash(path) != s.plan_hash:
            pending.append(s.name)
            continue
        _, manifest, failures = read_shard_tables(path)
        rows.extend(manifest)
        fails.extend(failures)
    _write_csv(out / "index.csv", INDEX_COLUMNS, rows)
    _write_csv(out / "failures.csv", FAILURE_COLUMNS, fails)
    per_split = dict(sorted(Counter(r["split"] for r in rows).items()))
    return PrepareResult(str(out), len(rows), per_split, len(fails), 0, 0, pending)


def _shard_hash(path: Path) -> str | None:
    """Plan hash of a complete shard at ``path``, or None if absent or unreadable."""
    if not path.is_file():
        return None
    try:
        return read_shard_tables(path)[0]
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
    import decord
    import h5py
    import torch
    import torchvision

    try:
        from importlib.metadata import version
        vcorr = version("vcorr")
    except Exception:
        vcorr = "unknown"
    return {"vcorr": vcorr, "python": platform.python_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "decord": decord.__version__,
            "h5py": h5py.__version__, "numpy": np.__version__}


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):
    if not enabled or total == 0:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="video", desc="prepare", smoothing=0.1)
