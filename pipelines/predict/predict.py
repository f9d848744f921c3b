"""``vcorr predict``: class predictions of a trained checkpoint on raw videos.

Every video gets the view protocol of ``vcorr eval`` (``clips`` clips x ``crops`` crops,
softmax probabilities averaged; the checkpoint's clip length, interval, sampler, crop size,
short side and normalisation), on frames taken at the training data's rate
(:mod:`vcorr.pipelines.predict.plan`). Videos are decoded in DataLoader workers
(:mod:`vcorr.pipelines.predict.loader`) and their views batched across videos
(:class:`vcorr.pipelines.evaluate.batcher.ViewBatcher`). With ``window`` the video is also cut into
windows of ``window`` seconds every ``stride`` seconds by presentation time, each predicted
alone (same clips x crops): ``OUT/<id>.timeline.csv`` and ``.png``; ``render`` writes
``OUT/<id>.render.mp4`` with the current window's top-3 labels on the frames.

A video that cannot be read is one row with the reason in ``predictions.csv`` and the run goes
on. Outputs: ``predictions.csv``, ``predictions.json`` (and the per-video files) in ``OUT``;
an ``OUT`` holding results already is refused unless ``overwrite`` (moved aside).

The Python API (:class:`vcorr.pipelines.predict.api.Predictor`) runs the same steps:
:func:`open_checkpoint`, :func:`run_raw_videos` (or :func:`run_clip_items` for frames in
memory) and :func:`top_classes`.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vcorr.pipelines.data.swaps import checkpoint_swap_map
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.evaluate.batcher import Prefetched, ViewBatcher
from vcorr.pipelines.evaluate.evaluate import clip_settings, view_geometry
from vcorr.pipelines.evaluate.views import CROP_CHOICES, average_views, check_mirrored_views
from vcorr.pipelines.fileio import write_atomic
from vcorr.pipelines.outputs import check_folder, move_aside
from vcorr.pipelines.predict.inputs import collect_inputs
from vcorr.pipelines.predict.loader import ClipSpec, RawVideos
from vcorr.pipelines.predict.plan import WHOLE, checkpoint_data_meta, resolve_sampling
from vcorr.pipelines.runtime import resolve_device

PREDICT_OUTPUTS = ("predictions.csv", "predictions.json", "*.timeline.csv", "*.timeline.png",
                   "*.render.mp4")


@dataclass
class PredictSettings:
    """Options of :func:`predict_videos` (the CLI flags of ``vcorr predict``)."""

    top_k: int = 5
    clips: int = 10
    crops: int = 3
    window: float | None = None    # seconds; None: whole videos only
    stride: float | None = None    # seconds between window starts (default: ``window``)
    render: bool = False
    fps: float | None = None       # the training data's rate, if the checkpoint cannot say
    every: int | None = None
    max_views_per_batch: int = 64
    workers: int = 2
    amp: bool = True
    model_args: dict[str, Any] = field(default_factory=dict)  # test-time builder overrides
    swap_map: str = ""             # mirrored views: built-in map or CSV ("": the run's)

    def check(self) -> None:
        if self.crops not in CROP_CHOICES:
            raise UserError(f"--crops must be one of {', '.join(map(str, CROP_CHOICES))}")
        if self.clips < 1 or self.top_k < 1 or self.max_views_per_batch < 1:
            raise UserError("--clips, --top-k and --max-views-per-batch must be at least 1")
        if self.window is not None and self.window <= 0:
            raise UserError(f"--window must be positive, got {self.window}")
        if self.stride is not None and (self.window is None or self.stride <= 0):
            raise UserError("--stride needs --window and must be positive")


@dataclass
class Inference:
    """A checkpoint ready to run on raw videos: the model, its classes, how clips are cut
    (:class:`ClipSpec`) and viewed (crop size, normalisation, flip label swaps), and notes on
    what had to be assumed."""

    model: nn.Module
    classes: list[str]
    model_name: str
    spec: ClipSpec
    crop_size: int
    mean: Sequence[float] | None
    std: Sequence[float] | None
    swap_map: dict[int, int]
    notes: list[str]
    test_short_side: int | None  # the config's, for prepared frames (None: stored size)
    train_flip: str = "on"       # the training config's data.flip (mirrored views' rule)

    def describe(self) -> dict[str, Any]:
        s = self.spec
        return {"model_name": self.model_name, "frames": s.frames, "interval": s.interval,
                "sampler": s.sampler, "clips": s.clips, "crop_size": self.crop_size,
                "short_side": s.short_side, "normalize": self.mean is not None,
                "sampling": s.sampling.as_dict(), "window": s.window, "stride": s.stride,
                "notes": self.notes}


def load_inference(checkpoint: str | Path, *, clips: int, fps: float | None = None,
                   every: int | None = None, window: float | None = None,
                   stride: float | None = None, model_args: dict[str, Any] | None = None,
                   swap_map: str = "") -> Inference:
    """Build the model of ``checkpoint`` with its weights and the test settings of its config.

    Raises:
        UserError: the checkpoint does not load; bad ``fps``/``every``.
    """
    from vcorr.pipelines.train.trainer import model_from_checkpoint

    model, ckpt = model_from_checkpoint(checkpoint, model_args)
    cfg = ckpt["config"]
    sampling = resolve_sampling(ckpt, fps, every)
    notes = [f"sampling: {sampling.source}"] if sampling.assumed else []
    frames, interval, sampler = clip_settings(cfg)
    crop_size, test_short_side = view_geometry(cfg)
    short_side = test_short_side
    if short_side is None and sampling.short_side:  # test_short_side 0: as prepare stored them
        short_side = sampling.short_side
    elif short_side is None and sampling.short_side is None:
        notes.append("short side: frames keep their decoded size (the config's "
                     "test_short_side is 0, the size prepare stored, which is not known here)")
    meta, _ = checkpoint_data_meta(ckpt)  # older checkpoints: its dataset names the swaps
    swaps, _ = checkpoint_swap_map(ckpt, swap_map, meta.get("dataset", "") if meta else "",
                                   str(checkpoint))
    d = cfg["data"]
    normalize = bool(d["normalize"])
    spec = ClipSpec(sampling, sampler, frames, interval, clips, short_side, window,
                    (stride or window) if window else None, d["short_video"])
    return Inference(model.eval(), list(ckpt["classes"]), ckpt.get("model_name",
                     cfg["model"]["name"]), spec, crop_size, d["mean"] if normalize else None,
                     d["std"] if normalize else None, swaps, notes,
                     test_short_side, d["flip"])


def open_checkpoint(checkpoint: str | Path, *, clips: int, crops: int,
                    device: str | torch.device | None = None, fps: float | None = None,
                    every: int | None = None, window: float | None = None,
                    stride: float | None = None, model_args: dict[str, Any] | None = None,
                    swap_map: str = "") -> tuple[Inference, torch.device]:
    """:func:`load_inference`, the mirrored-views check of ``crops``
    (:func:`check_mirrored_views`) and the model moved to ``device`` (None: CUDA when present):
    what ``vcorr predict`` and :class:`vcorr.pipelines.predict.api.Predictor` both start from.

    Raises:
        UserError: the checkpoint does not load; bad ``fps``/``every``; ``crops`` with
            mirrored views the model cannot use; a device that is not there.
    """
    inf = load_inference(checkpoint, clips=clips, fps=fps, every=every, window=window,
                         stride=stride, model_args=model_args, swap_map=swap_map)
    check_mirrored_views(crops, inf.train_flip, inf.swap_map, checkpoint)
    dev = resolve_device(device)  # CUDA asked for where there is none: one line
    inf.model.to(dev)
    return inf, dev


# --- the loop ----------------------------------------------------------------------------------

def run_raw_videos(inf: Inference, paths: Sequence[str | Path], *, crops: int,
                   max_views: int, workers: int, device: torch.device, amp: bool = True,
                   forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   reduce: Callable[[torch.Tensor, list[bool]], torch.Tensor] | None = None,
                   progress: str | None = None, sync_timing: bool = False,
                   on_video: Callable[[int, dict[str, Any]], None] | None = None
                   ) -> dict[str, Any]:
    """Run every group of clips (whole video, windows) of ``paths`` through the model: the
    videos decoded in ``workers`` DataLoader workers (:class:`RawVideos`), their items through
    :func:`run_clip_items` (see there for the arguments and what is returned).
    """
    loader = torch.utils.data.DataLoader(
        RawVideos(paths, inf.spec), batch_size=None, num_workers=workers,
        pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)
    return run_clip_items(inf, loader, len(paths), crops=crops, max_views=max_views,
                          workers=workers, device=device, amp=amp, forward=forward,
                          reduce=reduce, progress=progress, sync_timing=sync_timing,
                          on_video=on_video)


def run_clip_items(inf: Inference, items: Iterable[dict[str, Any]], count: int, *,
                   crops: int, max_views: int, device: torch.device, workers: int = 0,
                   amp: bool = True,
                   forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
                   reduce: Callable[[torch.Tensor, list[bool]], torch.Tensor] | None = None,
                   progress: str | None = None, sync_timing: bool = False,
                   on_video: Callable[[int, dict[str, Any]], None] | None = None
                   ) -> dict[str, Any]:
    """Run the clip items of ``count`` videos (:func:`vcorr.pipelines.predict.loader.video_items`'
    items, from a DataLoader over :class:`RawVideos` with ``workers`` workers, or made in this
    process with ``workers=0``, e.g. from frames in memory) through the model, views batched
    across videos (:class:`ViewBatcher`: ``crops`` crops of ``inf.crop_size``, ``inf``'s
    normalisation, at most ``max_views`` views per forward pass).

    ``forward``/``reduce`` default to the model and the averaged softmax of ``vcorr eval``
    (flipped views label-swapped back). ``on_video(i, video)`` is called as soon as video
    ``i`` is done (scored or failed). Returns ``videos``: per video ``{"groups": {key:
    result}, "starts": {key: s}, "ends": {key: s}, "info": ..., "error": ""}``, ``timing``
    (seconds: ``data`` waiting for workers, ``views``, ``model``, ``wall``, ``first_item``: until
    the first clips arrived) and ``model_threads`` (the intra-op threads the model ran with:
    on CPU at most the cores left by the ``workers``).

    Shape: an item's ``clips`` uint8 (N, C, T, H, W); a result of the default ``reduce``
    float32 (K,) class probabilities.
    """
    forward = forward or inf.model
    reduce = reduce or (lambda out, flips: average_views(out, flips, inf.swap_map, "probs"))
    videos: dict[int, dict[str, Any]] = {
        i: {"groups": {}, "starts": {}, "ends": {}, "info": {}, "error": "", "closed": False,
            "emitted": 0, "counted": False, "gen": 0} for i in range(count)}
    bar = None
    if progress:
        from vcorr.pipelines.progress import make_progress

        bar = make_progress(count, progress, unit="video")

    def finish(i: int) -> None:
        v = videos[i]
        done = v["closed"] and (v["error"] or len(v["groups"]) == v["emitted"])
        if done and not v["counted"]:
            v["counted"] = True
            if on_video is not None:
                on_video(i, v)
            if bar is not None:
                bar.update(1)

    def on_done(key: tuple[int, int, int], result: torch.Tensor) -> None:
        i, g, gen = key
        # A result of groups voided by a reset (a stream that ended early) is dropped.
        if not videos[i]["error"] and gen == videos[i]["gen"]:
            videos[i]["groups"][g] = result.cpu()
            finish(i)

    batcher = ViewBatcher(forward, reduce, on_done, crops=crops, crop_size=inf.crop_size,
                          max_views=max_views, device=device, mean=inf.mean, std=inf.std,
                          amp=amp, sync_timing=sync_timing)
    threads = torch.get_num_threads()
    if device.type == "cpu" and workers:
        # The decoding workers need cores too: intra-op threads beyond the cores left make the
        # model's OpenMP threads wait for each other (`bench predict`, 2 cores, 1 worker:
        # 1.4-2.0 videos/s with 2 threads, 2.9-3.1 with 1).
        torch.set_num_threads(max(1, min(threads, _cores() - workers)))
    model_threads = torch.get_num_threads()
    t_start = time.perf_counter()
    # The model works on what it has while the workers decode the next videos.
    source = Prefetched(items, workers, on_idle=batcher.flush)
    with torch.inference_mode(), _restore_threads(threads):
        for item in source:
            v = videos[item["video"]]
            if item.get("done"):
                v.update(closed=True, emitted=item["groups"], info=item["info"])
                if item["error"] and not v["error"]:
                    v["error"] = item["error"]
                finish(item["video"])
                continue
            if item.get("reset"):  # the video is planned again over the frames it holds
                v.update(gen=v["gen"] + 1, groups={}, starts={}, ends={})
                continue
            if v["error"]:
                continue
            v["starts"][item["key"]], v["ends"][item["key"]] = item["start"], item["end"]
            try:
                batcher.add((item["video"], item["key"], v["gen"]), item["clips"])
            except ValueError as exc:  # the crop does not fit the frames
                v["error"] = f"{exc}"
        batcher.flush()
    wall = time.perf_counter() - t_start
    for i in videos:
        finish(i)
    if bar is not None:
        bar.close()
    return {"videos": [videos[i] for i in range(count)],
            "timing": {"data": source.waited, **batcher.timing, "wall": wall,
                       "first_item": source.first or 0.0},
            "model_threads": model_threads, "views_per_group": batcher.views_per_video}


@contextlib.contextmanager
def _restore_threads(threads: int) -> Iterator[None]:
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a SLURM allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- the command -------------------------------------------------------------------------------

def _top(scores: np.ndarray, k: int) -> list[int]:
    return [int(c) for c in np.argsort(-scores, kind="stable")[:k]]


def top_classes(scores: np.ndarray, classes: Sequence[str], k: int) -> list[tuple[str, float]]:
    """The ``k`` classes of highest score, best first (ties: the earlier class), with their
    scores: what ``vcorr predict`` lists per video.

    Shape: ``scores`` (K,), in ``classes`` order.
    """
    return [(classes[c], float(scores[c])) for c in _top(scores, k)]


def predict_videos(checkpoint: str | Path, inputs: Sequence[str | Path],
                   out: str | Path | None = None, settings: PredictSettings | None = None,
                   device: str | None = None, progress: bool = False,
                   overwrite: bool = False) -> dict[str, Any]:
    """Predict every video ``inputs`` name (:func:`collect_inputs`) and write ``out``
    (default ``CHECKPOINT's folder/predict``). Returns the summary (``predictions.json``'s
    content plus ``out``); ``predicted`` 0 means no video could be read.

    Raises:
        UserError: bad options or inputs, an ``out`` holding results (unless ``overwrite``),
            a checkpoint that does not load.
    """
    s = settings or PredictSettings()
    s.check()
    t_start = time.perf_counter()
    videos = collect_inputs(inputs)
    out = Path(out) if out is not None else Path(checkpoint).parent / "predict"
    move_old = check_folder(out, PREDICT_OUTPUTS, overwrite=overwrite,
                            what="the results of an earlier `vcorr predict`")
    inf, dev = open_checkpoint(checkpoint, clips=s.clips, crops=s.crops, device=device,
                               fps=s.fps, every=s.every, window=s.window, stride=s.stride,
                               model_args=s.model_args, swap_map=s.swap_map)
    r = run_raw_videos(inf, [v.path for v in videos], crops=s.crops,
                       max_views=s.max_views_per_batch, workers=s.workers, device=dev,
                       amp=s.amp, progress="predict" if progress else None)
    k = min(s.top_k, len(inf.classes))
    rows = []
    for v, res in zip(videos, r["videos"]):
        row: dict[str, Any] = {"id": v.id, "path": v.path, **res["info"], "error": res["error"]}
        if not res["error"]:
            sc = res["groups"][WHOLE].numpy()
            row["top"] = [{"class": c, "prob": p} for c, p in top_classes(sc, inf.classes, k)]
            windows = sorted(g for g in res["groups"] if g != WHOLE)
            row["windows"] = len(windows)
            row["_timeline"] = ([res["starts"][g] for g in windows],
                                [res["ends"][g] for g in windows],
                                np.stack([res["groups"][g].numpy() for g in windows])
                                if windows else None)
        rows.append(row)
    predicted = sum(1 for row in rows if not row["error"])
    summary = {"checkpoint": str(checkpoint), **inf.describe(), "crops": s.crops,
               "top_k": k, "device": str(dev), "predicted": predicted,
               "failed": len(rows) - predicted, "timing": r["timing"],
               "views_per_video": s.clips * s.crops, "settings": asdict(s)}
    if move_old:
        summary["moved_aside"] = str(move_aside(out))
    out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        starts, ends, scores = row.pop("_timeline", (None, None, None))
        if scores is not None:
            row["timeline"] = write_timeline(out, row["id"], starts, ends, scores,
                                             inf.classes, k)
    summary["seconds"] = time.perf_counter() - t_start
    summary["videos_per_s"] = len(rows) / max(r["timing"]["wall"], 1e-9)
    summary["videos"] = rows
    write_predictions(out, rows, k, summary)
    if s.render:
        summary["rendered"] = render_all(out, rows, r["videos"], inf, progress)
        write_predictions(out, rows, k, summary)
    summary["out"] = str(out)
    return summary


def write_predictions(out: Path, rows: list[dict[str, Any]], k: int,
                      summary: dict[str, Any]) -> None:
    """``predictions.csv`` (one row per video: top-k classes and probabilities, or the reason
    it failed) and ``predictions.json`` (``summary``), atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "path", "top1", "top1_prob", f"top{k}", f"top{k}_probs", "duration",
                "windows", "warning", "error"])
    for row in rows:
        top = row.get("top", [])
        w.writerow([row["id"], row["path"], top[0]["class"] if top else "",
                    f"{top[0]['prob']:.6f}" if top else "",
                    "|".join(t["class"] for t in top), "|".join(f"{t['prob']:.6f}" for t in top),
                    row.get("duration", ""), row.get("windows", ""), row.get("warning", ""),
                    row["error"]])
    write_atomic(out / "predictions.csv", buf.getvalue())
    write_atomic(out / "predictions.json", json.dumps(summary, indent=2) + "\n")


def write_timeline(out: Path, vid: str, starts: list[float], ends: list[float],
                   scores: np.ndarray, classes: list[str], k: int) -> str:
    """``OUT/<vid>.timeline.csv`` (window, start, end, top-k classes and probabilities) and
    ``.png``; returns the CSV's name."""
    from vcorr.pipelines.predict.render import timeline_figure

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["window", "start", "end"] + [f"{x}{j}" for j in range(1, k + 1)
                                             for x in ("class", "prob")])
    for n, (a, b, sc) in enumerate(zip(starts, ends, scores)):
        w.writerow([n, f"{a:.6f}", f"{b:.6f}"] + [x for c in _top(sc, k)
                                                  for x in (classes[c], f"{sc[c]:.6f}")])
    name = f"{vid}.timeline.csv"
    write_atomic(out / name, buf.getvalue())
    timeline_figure(out / f"{vid}.timeline.png", starts, ends, scores, classes,
                    f"{vid}: class probabilities per window")
    return name


def render_all(out: Path, rows: list[dict[str, Any]], results: list[dict[str, Any]],
               inf: Inference, progress: bool) -> list[str]:
    """``OUT/<id>.render.mp4`` for every predicted video (see :func:`render_video`): the
    windows' top-3 labels, or the whole video's without windows. A video that fails to render
    gets a ``render_error`` in its row."""
    from vcorr.pipelines.predict.render import render_video

    done = [(row, res) for row, res in zip(rows, results) if not row["error"]]
    bar = None
    if progress:
        from vcorr.pipelines.progress import make_progress

        bar = make_progress(len(done), "render", unit="video")
    written = []
    for row, res in done:
        keys = sorted(g for g in res["groups"] if g != WHOLE) or [WHOLE]
        starts = [res["starts"][g] if g != WHOLE else 0.0 for g in keys]
        scores = np.stack([res["groups"][g].numpy() for g in keys])
        name = f"{row['id']}.render.mp4"
        try:
            row["rendered_frames"] = render_video(row["path"], out / name, starts, scores,
                                                  inf.classes, inf.spec.sampling.folder_fps)
            row["render"] = name
            written.append(name)
        except Exception as exc:  # noqa: BLE001 - one video's render must not stop the others
            row["render_error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return written
