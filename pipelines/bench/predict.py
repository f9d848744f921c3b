"""``vcorr bench predict``: the share of ``vcorr predict``'s wall time spent outside the model
(decoding, resizing, cutting views, waiting for workers) on raw videos.

It runs the loop of ``vcorr predict`` (:func:`vcorr.pipelines.predict.predict.run_raw_videos`) over
generated Kinetics-like videos with a randomly initialised registered model, synchronising the
device around the model so its time is real. A first pass over ``warmup`` videos (decoder and
thread-pool start-up, oneDNN kernel selection) is left out; the timed pass includes starting
its DataLoader workers, as every ``vcorr predict`` run does. Outside the model = wall - model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

TARGET_OUTSIDE = 0.25


def bench_predict(folder: str | Path, model: str = "c2d_r18", *, frames: int = 8,
                  crop: int = 112, short_side: int = 128, clips: int = 1, crops: int = 1,
                  videos: int = 16, seconds: float = 10.0, fps: int = 30, size: str = "320x240",
                  every: int = 4, workers: int = 1, warmup: int = 1, max_views: int = 64,
                  device: str | None = None) -> dict[str, Any]:
    """Time predicting ``videos`` generated videos (``size``, ``fps``, ``seconds``; made in
    ``folder`` if not there) at ``clips`` x ``crops`` views of ``frames`` x ``crop``^2, frames
    taken every ``every``-th source frame and resized to ``short_side``.

    Raises:
        ValueError: no video could be predicted.
    """
    from vcorr import models
    from vcorr.pipelines.bench.loader import make_synthetic_videos
    from vcorr.pipelines.predict.loader import ClipSpec
    from vcorr.pipelines.predict.plan import Sampling
    from vcorr.pipelines.predict.predict import Inference, run_raw_videos
    from vcorr.pipelines.runtime import resolve_device

    dev = resolve_device(device)  # before generating videos: a bad --device fails at once
    paths = make_synthetic_videos(folder, videos + warmup, seconds, fps, size)
    net = models.create_model(model, num_classes=400).to(dev).eval()
    spec = ClipSpec(Sampling(every=every, source="bench"), "dense", frames, 1, clips,
                    short_side or None)
    inf = Inference(net, [str(k) for k in range(400)], model, spec, crop,
                    (0.45, 0.45, 0.45), (0.225, 0.225, 0.225), {}, [], short_side or None)
    kw = {"crops": crops, "max_views": max_views, "workers": workers, "device": dev,
          "sync_timing": True}
    if warmup:
        run_raw_videos(inf, paths[:warmup], **kw)
    r = run_raw_videos(inf, paths[warmup:], **kw)
    done = sum(1 for v in r["videos"] if not v["error"])
    if not done:
        raise ValueError(f"no video of {folder} could be predicted: {r['videos'][0]['error']}")
    t = r["timing"]
    outside = t["wall"] - t["model"]
    share = outside / max(t["wall"], 1e-9)
    return {
        "model": model, "device": str(dev), "torch_threads": r["model_threads"],
        "clips": clips, "crops": crops, "frames": frames, "crop": crop,
        "short_side": short_side, "every": every, "workers": workers,
        "video": {"size": size, "fps": fps, "seconds": seconds, "codec": "H.264 CRF 23"},
        "videos": done, "failed": len(r["videos"]) - done, "wall_s": t["wall"],
        "model_s": t["model"], "outside_model_s": outside, "data_wait_s": t["data"],
        "first_clips_s": t["first_item"],
        "views_s": t["views"], "videos_per_s": done / max(t["wall"], 1e-9),
        "outside_model_share": share, "target_outside_model_share": TARGET_OUTSIDE,
        "target_met": share <= TARGET_OUTSIDE,
    }
