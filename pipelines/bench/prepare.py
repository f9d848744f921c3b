"""``vcorr bench prepare VIDEO_DIR``: videos/s and frames/s per core of ``vcorr prepare``
against the ffmpeg command line extracting the same kept frames at the same size into JPEG
files (the usual way frames are extracted for other toolkits), on the same videos and cores,
in one run.

Both sides are run as a user runs them: ``vcorr prepare`` as a command (start-up included;
the time inside, from ``prepare.json``, is reported too) with ``--workers 1`` and
``--workers N``; ffmpeg as one process per video with one thread (``-threads 1``), one at a
time and N at a time. Each is timed ``repeats`` times, interleaved, and the best time kept,
so a busy moment hurts none of them. Target (issue 13): prepare at least as fast as the
ffmpeg command line, and faster with more workers.

ffmpeg's JPEG quality scale (``-q:v``, 2 best .. 31) is not libjpeg's (1 .. 100, ours): the
report gives the mean bytes per stored frame of both, so the comparison is at like quality.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from vcorr.pipelines.data.annotations import VIDEO_SUFFIXES
from vcorr.pipelines.data.decode import VideoError, probe
from vcorr.pipelines.data.prepare import _resize_shape
from vcorr.pipelines.data.video_io import ffmpeg_exe
from vcorr.pipelines.errors import UserError


def _videos(folder: Path) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not found:
        raise UserError(f"{folder}: no video files ({', '.join(VIDEO_SUFFIXES)}) in it")
    return found


def _ffmpeg_command(video: Path, out_dir: Path, size: tuple[int, int], every: int,
                    qscale: int) -> list[str]:
    """Extract frames 0, every, 2*every, ... scaled to ``size`` (height, width) as JPEG."""
    filters = []
    if every > 1:
        filters.append(f"select=not(mod(n\\,{every}))")
    filters.append(f"scale={size[1]}:{size[0]}")
    return [ffmpeg_exe(), "-loglevel", "error", "-threads", "1", "-i", str(video),
            "-vf", ",".join(filters), "-fps_mode", "passthrough", "-q:v", str(qscale),
            "-threads", "1", str(out_dir / "%06d.jpg")]


def _run_ffmpeg(commands: list[tuple[list[str], Path]], parallel: int) -> float:
    def one(job: tuple[list[str], Path]) -> None:
        cmd, out_dir = job
        out_dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(cmd, check=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(one, commands))
    return time.perf_counter() - t0


def _run_prepare(annotations: Path, root: Path, out: Path, workers: int, every: int,
                 short_side: int, quality: int) -> tuple[float, float]:
    """Wall time of the ``vcorr prepare`` command and the time inside it (seconds)."""
    cmd = [sys.executable, "-m", "vcorr.cli.main", "prepare", "--format", "list",
           "--annotations", str(annotations), "--root", str(root), "--out", str(out),
           "--every", str(every), "--short-side", str(short_side), "--quality", str(quality),
           "--workers", str(workers), "--no-progress"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    inside = json.loads((out / "prepare.json").read_text())["seconds"]
    return wall, float(inside)


def bench_prepare(video_dir: str | Path, workers: int = 2, every: int = 1,
                  short_side: int = 128, quality: int = 90, qscale: int = 3,
                  repeats: int = 2) -> dict:
    """Time ``vcorr prepare`` and the ffmpeg command line on the videos under ``video_dir``
    (see the module docstring). Returns the figures as a dict.

    Raises:
        UserError: no videos, or a video neither can read.
    """
    folder = Path(video_dir)
    if not folder.is_dir():
        raise UserError(f"{folder}: not a folder")
    videos = _videos(folder)
    sizes, kept = {}, 0
    for v in videos:
        try:
            info = probe(v)
        except VideoError as exc:
            raise UserError(f"{v}: {exc}") from None
        sizes[v] = _resize_shape(info.height, info.width, short_side)
        kept += len(info.select(every))
    runs: dict[str, list[float]] = {}
    inside: dict[str, list[float]] = {}
    frame_bytes = {}
    with tempfile.TemporaryDirectory(prefix="vcorr-bench-prepare-") as tmp:
        tmp = Path(tmp)
        ann = tmp / "videos.csv"
        ann.write_text("path,label,split,id\n" + "".join(
            f"{v.relative_to(folder)},video,train,v{i:06d}\n" for i, v in enumerate(videos)))
        for r in range(repeats):
            for n in sorted({1, workers}):
                out = tmp / f"prepared_{n}_{r}"
                wall, inner = _run_prepare(ann, folder, out, n, every, short_side, quality)
                runs.setdefault(f"prepare_workers_{n}", []).append(wall)
                inside.setdefault(f"prepare_workers_{n}", []).append(inner)
                shard_bytes = sum(p.stat().st_size for p in (out / "shards").glob("*.h5"))
                frame_bytes["prepare"] = shard_bytes / kept
            for n in sorted({1, workers}):
                jobs = [(_ffmpeg_command(v, tmp / f"ff_{n}_{r}" / f"{i:06d}", sizes[v], every,
                                         qscale), tmp / f"ff_{n}_{r}" / f"{i:06d}")
                        for i, v in enumerate(videos)]
                runs.setdefault(f"ffmpeg_parallel_{n}", []).append(_run_ffmpeg(jobs, n))
                files = list((tmp / f"ff_{n}_{r}").rglob("*.jpg"))
                frame_bytes["ffmpeg"] = sum(p.stat().st_size for p in files) / max(1, len(files))
                if len(files) != kept:
                    raise UserError(f"ffmpeg wrote {len(files)} frames where prepare keeps "
                                    f"{kept}: the comparison would not be like for like")
    best = {k: min(v) for k, v in runs.items()}
    result = {
        "videos": len(videos), "frames_kept": kept, "workers": workers, "every": every,
        "short_side": short_side, "quality": quality, "ffmpeg_qscale": qscale,
        "repeats": repeats, "cpu_count": os.cpu_count(),
        "seconds": best,
        "prepare_seconds_inside": {k: min(v) for k, v in inside.items()},
        "bytes_per_frame": frame_bytes,
    }
    rows = {}
    for key, secs in best.items():
        cores = workers if key.endswith(f"_{workers}") and workers > 1 else 1
        rows[key] = {"seconds": secs, "videos_per_s": len(videos) / secs,
                     "frames_per_s": kept / secs, "frames_per_s_per_core": kept / secs / cores}
    result["rates"] = rows
    result["prepare_vs_ffmpeg"] = {
        str(n): best[f"ffmpeg_parallel_{n}"] / best[f"prepare_workers_{n}"]
        for n in sorted({1, workers})}
    result["prepare_inside_vs_ffmpeg"] = {
        str(n): best[f"ffmpeg_parallel_{n}"] / result["prepare_seconds_inside"][
            f"prepare_workers_{n}"] for n in sorted({1, workers})}
    result["workers_speedup"] = best["prepare_workers_1"] / best[f"prepare_workers_{workers}"]
    return result
