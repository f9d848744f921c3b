"""``vcorr bench eval``: multi-view evaluation throughput and the share of time not spent in
the model (waiting for the next video, cutting and normalising views, moving data).

It runs the loop of ``vcorr eval`` (:func:`vcorr.pipelines.evaluate.evaluate.run_views`) with a
randomly initialised registered model, synchronising the device around each stage so that the
stage times are real. A first pass over ``warmup`` videos (worker start-up, cuDNN autotuning)
is left out.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

TARGET_OVERHEAD = 0.15


def bench_eval(data: str | Path, model: str = "c2d_r18", *, split: str | None = None,
               clips: int = 25, crops: int = 10, frames: int = 8, interval: int = 1,
               crop: int = 112, short_side: int | None = 128, max_views: int = 50,
               workers: int = 2, videos: int = 16, warmup: int = 2,
               device: str | None = None, amp: bool = True,
               compile: bool = False) -> dict[str, Any]:
    """Time the evaluation of ``videos`` videos of ``data`` at ``clips`` x ``crops`` views
    (``compile``: the model under ``torch.compile``; the warm-up videos compile it)."""
    from vcorr import models
    from vcorr.pipelines.data.inspect import read_classes, read_index
    from vcorr.pipelines.evaluate.evaluate import EvalSettings, run_views
    from vcorr.pipelines.runtime import compile_model, resolve_device

    classes = read_classes(data)
    if split is None:
        splits = {r["split"] for r in read_index(data)}
        split = "val" if "val" in splits else sorted(splits)[0]
    dev = resolve_device(device)
    net = models.create_model(model, num_classes=len(classes)).to(dev).eval()
    if compile:
        net = compile_model(net)
    s = EvalSettings(clips=clips, crops=crops, max_views_per_batch=max_views, workers=workers,
                     amp=amp)
    kw = dict(frames=frames, interval=interval, sampler="dense", crop_size=crop,
              short_side=short_side, normalize=True, settings=s, swap_map={}, device=dev,
              sync_timing=True)
    if warmup:
        run_views(net, data, split, limit=warmup, **kw)
    t0 = time.perf_counter()
    r = run_views(net, data, split, limit=videos, **kw)
    total = time.perf_counter() - t0
    done = len(r["ids"])
    if not done:
        raise ValueError(f"no video of {data} could be evaluated: {r['failed'][:1]}")
    t = r["timing"]
    loop = t["data"] + t["views"] + t["model"]
    overhead = (t["data"] + t["views"]) / max(loop, 1e-9)
    return {
        "model": model, "device": str(dev), "torch_threads": torch.get_num_threads(),
        "clips": clips, "crops": crops, "views_per_video": r["views_per_video"],
        "frames": frames, "crop": crop, "short_side": short_side, "max_views_per_batch": max_views,
        "workers": workers, "amp": amp and dev.type == "cuda", "compile": compile,
        "videos": done,
        "failed": len(r["failed"]), "seconds": total, "videos_per_s": done / total,
        "views_per_s": done * r["views_per_video"] / total,
        "data_wait_s": t["data"], "views_s": t["views"], "model_s": t["model"],
        "data_wait_share": t["data"] / max(loop, 1e-9), "views_share": t["views"] / max(loop, 1e-9),
        "overhead_share": overhead, "target_overhead_share": TARGET_OVERHEAD,
        "target_met": overhead <= TARGET_OVERHEAD,
    }
