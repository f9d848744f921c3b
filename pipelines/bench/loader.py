"""``vcorr bench loader``: clips per second per core of the shard loader, of decoding the same
clips from the source videos (through the decoding layer: decord, scaling in the decoder), and
of decoding only the clips' stored JPEGs (the floor: the shard loader cannot beat pure JPEG
decoding of the same bytes).

Everything runs in this one process with one thread (torch and decord), so the numbers are
per core. Targets (issue 2): shards >= 10x decord, and within 1.5x of the JPEG floor.
"""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from vcorr.pipelines.data.annotations import FormatOptions, parse_annotations
from vcorr.pipelines.data.dataset import VideoClipDataset, decode_frames
from vcorr.pipelines.data.samplers import DenseSampler
from vcorr.pipelines.data.transforms import train_transform
from vcorr.pipelines.data.decode import VideoReader
from vcorr.pipelines.data.video_io import ffmpeg_exe
from vcorr.pipelines.errors import UserError


def make_synthetic_videos(folder: str | Path, videos: int = 24, seconds: float = 10.0,
                          fps: int = 30, size: str = "320x240") -> list[Path]:
    """``videos`` Kinetics-like clips ``folder/clip_NNN.mp4``: noisy testsrc2, H.264
    (veryfast, CRF 23, yuv420p), ``size`` ("WxH"), ``fps``, ``seconds`` long. Files already
    there are kept."""
    src = Path(folder)
    src.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(videos):
        path = src / f"clip_{i:03d}.mp4"
        if not path.exists():
            subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                            f"testsrc2=size={size}:rate={fps}:duration={seconds}",
                            "-vf", f"noise=alls=12:allf=t+u:all_seed={i},hue=h={i * 15}",
                            "-c:v", "libx264", "-preset", "veryfast", "-crf", "23",
                            "-pix_fmt", "yuv420p", str(path)], check=True)
        paths.append(path)
    return paths


def make_synthetic_dataset(folder: str | Path, videos: int = 24, seconds: float = 10.0,
                           fps: int = 30, size: str = "320x240", every: int = 4,
                           short_side: int = 128, workers: int = 2) -> Path:
    """Kinetics-like test data: ``videos`` noisy testsrc2 clips (H.264, ``size``, ``fps``)
    prepared with ``--every`` and ``--short-side``. Returns the prepared folder."""
    from vcorr.pipelines.data.prepare import PrepareOptions, prepare

    folder = Path(folder)
    rows = ["path,label,split"]
    for i, path in enumerate(make_synthetic_videos(folder / "videos", videos, seconds, fps,
                                                   size)):
        rows.append(f"videos/{path.name},class{i % 4},train")
    (folder / "annotations.csv").write_text("\n".join(rows) + "\n")
    out = folder / "prepared"
    prepare(PrepareOptions(format="list", annotations=[str(folder / "annotations.csv")],
                           root=str(folder), out=str(out), every=every,
                           short_side=short_side, workers=workers, progress=False))
    return out


def _sources(out: Path) -> dict[str, str]:
    """Source video of every id, from the annotations named in ``OUT/prepare.json``."""
    opts = json.loads((out / "prepare.json").read_text())["options"]
    fmt = FormatOptions(*(opts.get(k) for k in ("val_fraction", "seed", "label_base",
                                                "split_index")), previous=out)
    ann = parse_annotations(opts["format"], opts["annotations"], opts["labels"], opts["root"],
                            fmt)
    return {s.id: s.source for s in ann.samples}


def bench_loader(out: str | Path, clips: int = 200, frames: int = 8, interval: int = 1,
                 seed: int = 0, repeats: int = 3) -> dict:
    """Time the three ways of getting the same ``clips`` clips (see the module docstring)."""
    out = Path(out)
    if not (out / "index.csv").is_file():
        raise UserError(f"{out}: not a prepared dataset (no index.csv)")
    torch.set_num_threads(1)
    meta = json.loads((out / "prepare.json").read_text())
    data_opts = meta["data_options"]
    split = next(iter(meta["counts"]["per_split"]))
    ds = VideoClipDataset(out, split, DenseSampler(frames, interval), train=True, seed=seed)
    sources = _sources(out)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(ds), clips)
    plan = [(int(i), ds.sampler.train(ds.videos[i]["num_frames"], rng)) for i in picks]

    encoded = [ds.reader.read_encoded(ds.videos[i]["shard"], ds.videos[i]["id"], idx)
               for i, idx in plan]  # also warms the page cache and open files
    aug = train_transform(crop=112, short_side=(128, 160))
    ds_aug = VideoClipDataset(out, split, DenseSampler(frames, interval), transform=aug,
                              train=True, seed=seed)
    def shard() -> None:  # one HDF5 read of the clip's bytes + JPEG decode, as training does
        for i, idx in plan:
            ds.read_clips(i, [idx])

    def augmented() -> None:  # the same plus scale jitter, crop and normalisation
        for i in picks:
            ds_aug[int(i)]

    def floor() -> None:  # decoding the very same JPEG bytes, already in memory
        for enc in encoded:
            decode_frames(enc)

    def on_the_fly() -> None:  # open the source, seek, decode and resize the same frames
        for i, idx in plan:
            v = ds.videos[i]
            # The decoding layer scales in the decoder (its fastest path); one open per clip,
            # as a loader without a cache of open videos does.
            src = VideoReader(sources[v["id"]])
            keep = src.info.select(data_opts["every"], data_opts["fps"])
            src.read([keep[j] for j in idx], size=(v["height"], v["width"]))

    # Best of `repeats` rounds, methods interleaved, so a busy moment hurts none of them.
    times = {"shard": [], "aug": [], "floor": [], "decord": []}
    for _ in range(repeats):
        for key, fn in (("shard", shard), ("aug", augmented), ("floor", floor),
                        ("decord", on_the_fly)):
            t0 = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - t0)
    t_shard, t_aug, t_floor, t_decord = (min(times[k]) for k in ("shard", "aug", "floor",
                                                                   "decord"))

    r = {
        "clips": clips, "repeats": repeats, "frames": frames, "interval": interval,
        "frame_size": [ds.videos[0]["height"], ds.videos[0]["width"]],
        "every": data_opts["every"], "jpeg_quality": data_opts["quality"],
        "shard_clips_per_s": clips / t_shard,
        "shard_augmented_clips_per_s": clips / t_aug,
        "decord_clips_per_s": clips / t_decord,
        "jpeg_floor_clips_per_s": clips / t_floor,
    }
    r["shard_vs_decord"] = r["shard_clips_per_s"] / r["decord_clips_per_s"]
    r["floor_vs_shard"] = r["jpeg_floor_clips_per_s"] / r["shard_clips_per_s"]
    r["targets_met"] = bool(r["shard_vs_decord"] >= 10 and r["floor_vs_shard"] <= 1.5)
    return r
