"""``vcorr bench index``: memory and time of the dataset index (``index.csv``) at scale
(issue 24: with the index as a list of per-video dicts, a 650,000-video training process held
2.1 GB, each DataLoader worker 1.77 GB resident, and the workers' proportional share grew while
they read the dicts, copy-on-read of Python objects in forked workers).

:func:`make_index_folder` writes a Kinetics-like ``index.csv`` of any size in seconds (with
``classes.txt`` and ``prepare.json``; the shards it names are not written: the benchmark
measures the index, not the shard reader, which ``vcorr bench shards`` covers).
:func:`measure_process` does, in one process, what a training process does with the index:
load it, build the train and val datasets, then walk an epoch through a DataLoader with forked
workers reading, for every video, the fields :class:`VideoClipDataset` reads per item, while it
samples each process's resident (RSS), proportional (PSS) and private (USS) memory from
``/proc/<pid>/smaps_rollup``. :func:`bench_index` runs that in a fresh interpreter per variant
(the index as vcorr loads it now, and ``dicts``: the former list of dicts, for reference) and
times ``vcorr inspect`` on the folder.
"""
from __future__ import annotations

import csv
import functools
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from vcorr.pipelines.data.shards import INDEX_COLUMNS, shard_name
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.fileio import write_atomic

ROW_KINDS = ("vcorr", "dicts")


def make_index_folder(folder: str | Path, videos: int = 650_000, classes: int = 700,
                      val_fraction: float = 0.054, videos_per_shard: int = 1000,
                      seed: int = 0) -> Path:
    """Write a Kinetics-like prepared folder of ``videos`` index rows into ``folder``.

    ``index.csv`` has YouTube-like ids (``<11 characters>_<start>_<end>``), ``classes``
    classes with Kinetics-length names, a ``val_fraction`` share in split ``val``, shard names
    of ``videos_per_shard`` videos, 250-300 frames at 30 fps and 240-340 px frames;
    ``classes.txt`` and ``prepare.json`` go beside it and ``shards/`` stays empty.

    Returns:
        The folder.

    Raises:
        ValueError: ``videos`` or ``classes`` below 1.
    """
    if videos < 1 or classes < 1:
        raise ValueError(f"videos and classes must be at least 1, got {videos}, {classes}")
    folder = Path(folder)
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    words = ["playing", "riding", "making", "throwing", "dancing", "cleaning", "juggling",
             "washing", "skiing", "drumming", "climbing", "folding"]
    things = ["guitar", "horse", "bread", "frisbee", "tango", "windows", "balls", "dishes",
              "slalom", "fingers", "rope", "napkins", "paper", "snow"]
    names = [f"{words[c % len(words)]} {things[(c // len(words)) % len(things)]} {c}"
             for c in range(classes)]
    n_val = round(videos * val_fraction)
    split_of = ["train"] * (videos - n_val) + ["val"] * n_val
    label = rng.integers(0, classes, videos)
    frames = rng.integers(250, 301, videos)
    src_fps = np.array([29.97003, 30.0, 25.0, 24.0])[rng.integers(0, 4, videos)]
    height = rng.choice([240, 256, 320], videos)
    width = rng.choice([320, 340, 426], videos)
    variable = (rng.random(videos) < 0.01).astype(int)
    alphabet = np.frombuffer(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
                             np.uint8)
    yt = alphabet[rng.integers(0, 64, (videos, 11))].view("S11").ravel()
    start = rng.integers(0, 300, videos)
    path = folder / "index.csv"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(INDEX_COLUMNS)
        counts = {"train": 0, "val": 0}
        for i in range(videos):
            sp = split_of[i]
            k = counts[sp]
            counts[sp] += 1
            w.writerow((f"{yt[i].decode()}_{start[i]:06d}_{start[i] + 10:06d}", sp,
                        names[label[i]], int(label[i]), shard_name(sp, k // videos_per_shard),
                        int(frames[i]), 30.0, float(src_fps[i]), int(height[i]), int(width[i]),
                        round(frames[i] / 30.0, 6), int(variable[i])))
    os.replace(tmp, path)
    write_atomic(folder / "classes.txt", "".join(f"{c}\n" for c in names))
    write_atomic(folder / "prepare.json", json.dumps(
        {"dataset": "", "data_options": {"fps": 30.0, "short_side": 256},
         "counts": {"videos": videos, "per_split": {"train": videos - n_val, "val": n_val}}},
        indent=2) + "\n")
    return folder


def memory_mib(pid: int | str = "self") -> dict[str, float | None]:
    """RSS, PSS and USS (private clean + dirty) of process ``pid`` in MiB, from
    ``/proc/<pid>/smaps_rollup`` (Linux 4.14+); ``None`` each where it cannot be read."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            kb = {ln.split(":")[0]: int(ln.split()[1]) for ln in f if ln.endswith("kB\n")}
    except (OSError, ValueError, IndexError):
        return {"rss": None, "pss": None, "uss": None}
    return {"rss": kb["Rss"] / 1024, "pss": kb["Pss"] / 1024,
            "uss": (kb["Private_Clean"] + kb["Private_Dirty"]) / 1024}


def dict_rows(folder: str | Path) -> list[dict]:
    """The reference: ``index.csv`` as vcorr read it before issue 24, one dict per video with
    numeric columns converted (only to measure it)."""
    with open(Path(folder) / "index.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("label_index", "num_frames", "height", "width"):
            r[k] = int(r[k])
        for k in ("fps", "source_fps"):
            r[k] = float(r[k])
        r["duration"] = float(r["duration"]) if r.get("duration") else None
        r["variable_rate"] = bool(int(r["variable_rate"])) if r.get("variable_rate") else None
    return rows


class _MetadataWalk:
    """A map-style dataset reading, per item, the index fields that
    :meth:`VideoClipDataset.__getitem__` reads (id, shard, frames, label), and no frames."""

    def __init__(self, videos: Any) -> None:
        self.videos = videos

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, index: int) -> tuple[int, int, int]:
        v = self.videos[index]
        return v["num_frames"], v["label_index"], len(v["id"]) + len(v["shard"])


def _record_pid(pids: Any, worker: int) -> None:
    pids[worker] = os.getpid()


def measure_process(folder: str | Path, rows: str = "vcorr", workers: int = 2,
                    batch: int = 64, steps: int | None = None, samples: int = 10,
                    model: str = "", seed: int = 0) -> dict[str, Any]:
    """What a training process does with the index, in this process, measured.

    Loads ``folder``'s index and keeps it (as the trainer does for its checks), builds the
    train and val datasets, then iterates a shuffled DataLoader with ``workers`` forked workers
    and batches of ``batch`` videos for ``steps`` steps (``None``: one epoch of the train
    split), each item reading the video's id, shard, frames and label, and samples every
    process's memory about ``samples`` times.

    Args:
        rows: ``vcorr`` (:func:`vcorr.pipelines.data.inspect.read_index` and
            :class:`VideoClipDataset`, what vcorr does now) or ``dicts`` (the former list of
            per-video dicts).
        model: a model name whose construction (700 classes, CPU) is timed too, for scale;
            ``""`` for none.

    Returns:
        Times in seconds (``load_s``: reading the index, from its cache where ``cached``;
        ``parse_s``: parsing index.csv alone, vcorr only; ``datasets_s``: building the train
        and val datasets; ``first_batch_s``: from creating the loader to its first batch;
        ``epoch_s``; ``model_s``), memory in MiB (``main_before``, ``main_loaded``,
        ``main_end``: the main process before loading, after and after the walk;
        ``workers``: per worker, the first and last sample; ``samples``: ``(step, [per
        worker {rss, pss, uss}])``) and ``index_mib`` (the index's own arrays, vcorr only).

    Raises:
        UserError: ``rows`` is not one of :data:`ROW_KINDS`; the folder has no train split.
    """
    import multiprocessing as mp

    import torch

    from vcorr.pipelines.data.dataset import VideoClipDataset
    from vcorr.pipelines.data.index import CACHE_NAME, parse_index
    from vcorr.pipelines.data.inspect import read_index
    from vcorr.pipelines.data.samplers import DenseSampler

    if rows not in ROW_KINDS:
        raise UserError(f"rows must be one of {', '.join(ROW_KINDS)}, got {rows!r}")
    torch.set_num_threads(1)
    gc.collect()
    before = memory_mib()
    t0 = time.perf_counter()
    cached = (Path(folder) / CACHE_NAME).is_file()
    if rows == "dicts":   # as before issue 24: the trainer's rows, and each dataset its own
        index = dict_rows(folder)
        load_s = time.perf_counter() - t0
        train = [r for r in dict_rows(folder) if r["split"] == "train" and r["num_frames"] >= 1]
        val = [r for r in dict_rows(folder) if r["split"] == "val" and r["num_frames"] >= 1]
        videos: Any = train
        held: tuple = (index, train, val)
    else:
        index = read_index(folder)
        load_s = time.perf_counter() - t0
        train_ds = VideoClipDataset(folder, "train", DenseSampler(8), train=True)
        val_ds = VideoClipDataset(folder, "val", DenseSampler(8), train=False)
        videos = train_ds.videos
        held = (index, train_ds, val_ds)
    datasets_s = time.perf_counter() - t0 - load_s
    gc.collect()
    loaded = memory_mib()
    nbytes = getattr(index, "nbytes", None)

    ctx = mp.get_context("fork")
    pids = ctx.Array("i", max(workers, 1))
    loader = torch.utils.data.DataLoader(
        _MetadataWalk(videos), batch_size=batch, shuffle=True, num_workers=workers,
        multiprocessing_context=ctx if workers else None,
        generator=torch.Generator().manual_seed(seed),
        worker_init_fn=functools.partial(_record_pid, pids) if workers else None)
    total = len(loader) if steps is None else min(steps, len(loader))
    every = max(1, total // max(samples, 1))
    t1 = time.perf_counter()
    it = iter(loader)
    next(it)
    first_batch_s = time.perf_counter() - t1
    deadline = time.monotonic() + 60
    while 0 in pids[:workers] and time.monotonic() < deadline:   # every worker has started
        time.sleep(0.01)
    worker_pids = list(pids[:workers])
    trace = [(1, [memory_mib(p) for p in worker_pids])]
    step = 1
    for step in range(2, total + 1):
        next(it)
        if step % every == 0 or step == total:
            trace.append((step, [memory_mib(p) for p in worker_pids]))
    epoch_s = time.perf_counter() - t1
    del it
    end = memory_mib()
    model_s = None
    if model:
        from vcorr import models

        t2 = time.perf_counter()
        models.create_model(model, num_classes=700)
        model_s = time.perf_counter() - t2
    del held
    parse_s = None
    if rows == "vcorr":   # the parse alone, as without (or before writing) the cache
        t3 = time.perf_counter()
        parse_index(Path(folder) / "index.csv")
        parse_s = time.perf_counter() - t3
    return {
        "rows": rows, "videos": len(index), "train_videos": len(videos), "workers": workers,
        "batch": batch, "steps": step, "cached": cached and rows == "vcorr", "load_s": load_s,
        "parse_s": parse_s, "datasets_s": datasets_s,
        "first_batch_s": first_batch_s, "epoch_s": epoch_s, "model": model,
        "model_s": model_s, "index_mib": None if nbytes is None else nbytes / 2**20,
        "main_before": before, "main_loaded": loaded, "main_end": end,
        "workers_first": trace[0][1], "workers_last": trace[-1][1], "samples": trace,
    }


def time_inspect(folder: str | Path) -> dict[str, float]:
    """Wall time (s) and peak resident memory (MiB) of ``vcorr inspect FOLDER --json`` in a
    fresh interpreter (imports included).

    Raises:
        UserError: the command failed.
    """
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "vcorr.cli", "inspect", str(folder),
                             "--json"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise UserError(f"vcorr inspect {folder} failed: {err.strip()[-500:]}")
    return {"seconds": seconds, "peak_rss_mib": usage.ru_maxrss / 1024}


def scale(run: dict[str, Any], workers_per_gpu: int = 16, gpus_per_node: int = 8
          ) -> dict[str, float]:
    """The index's memory at scale from one :func:`measure_process` result, in MiB.

    ``main``: what loading it added to the training process's RSS; ``worker_rss``: a
    worker's RSS at the end (all it maps, shared pages included, as ``top`` shows it);
    ``worker_copied``: what a worker made its own while reading rows (USS growth from its
    first to its last sample); ``per_gpu``: one training process and ``workers_per_gpu``
    workers after an epoch (``main + workers_per_gpu * worker_copied``: the pages only the
    index costs, counted once); ``per_node``: ``gpus_per_node`` of those.
    """
    first, last = run["workers_first"], run["workers_last"]
    if not last or any(w[k] is None for w in first + last + [run["main_loaded"],
                                                            run["main_before"]]
                       for k in ("rss", "pss", "uss")):
        raise UserError("no memory figures: /proc/<pid>/smaps_rollup (Linux 4.14+) could not "
                        "be read")

    def mean(ws: list[dict], key: str) -> float:
        return sum(w[key] for w in ws) / len(ws)

    copied = mean(last, "uss") - mean(first, "uss")
    main = run["main_loaded"]["rss"] - run["main_before"]["rss"]
    per_gpu = main + workers_per_gpu * copied
    return {"main": main, "worker_rss": max(w["rss"] for w in last),
            "worker_pss_first": mean(first, "pss"), "worker_pss_last": mean(last, "pss"),
            "worker_copied": copied, "per_gpu": per_gpu, "per_node": gpus_per_node * per_gpu,
            "workers_per_gpu": workers_per_gpu, "gpus_per_node": gpus_per_node}


def bench_index(folder: str | Path, rows: tuple[str, ...] = ROW_KINDS, workers: int = 2,
                batch: int = 64, steps: int | None = None, model: str = "c2d_r50",
                inspect: bool = True, workers_per_gpu: int = 16,
                gpus_per_node: int = 8) -> dict[str, Any]:
    """:func:`time_inspect` twice (``inspect``: the first after removing ``folder``'s index
    cache, :data:`vcorr.pipelines.data.index.CACHE_NAME`, which it writes again; the second
    reads it), then :func:`measure_process` for each of ``rows`` in a fresh interpreter, on
    the prepared ``folder``.

    Returns:
        ``{"folder", "videos", "runs": {kind: measure_process's result with "scale":
        :func:`scale`'s}, "inspect": {"parse": {...}, "cached": {...}} or None}``.

    Raises:
        UserError: ``folder`` has no ``index.csv``; a measurement failed.
    """
    if not (Path(folder) / "index.csv").is_file():
        raise UserError(f"{folder}: no index.csv (make one with make_index_folder)")
    from vcorr.pipelines.data.index import CACHE_NAME

    timed = None
    if inspect:   # without the index cache (it writes it), then with it
        (Path(folder) / CACHE_NAME).unlink(missing_ok=True)
        timed = {"parse": time_inspect(folder), "cached": time_inspect(folder)}
    runs = {}
    for kind in rows:
        args = json.dumps({"folder": str(folder), "rows": kind, "workers": workers,
                           "batch": batch, "steps": steps, "model": model})
        code = ("import json, sys; from vcorr.pipelines.bench.index import measure_process; "
                "print('\\nRESULT ' + json.dumps(measure_process(**json.loads(sys.argv[1]))))")
        proc = subprocess.run([sys.executable, "-c", code, args], capture_output=True,
                              text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode or line is None:
            raise UserError(f"measuring {kind} rows failed: {proc.stderr.strip()[-800:]}")
        runs[kind] = json.loads(line[len("RESULT "):])
        runs[kind]["scale"] = scale(runs[kind], workers_per_gpu, gpus_per_node)
    first = next(iter(runs.values()), {})
    return {"folder": str(folder), "videos": first.get("videos"), "runs": runs,
            "inspect": timed}
