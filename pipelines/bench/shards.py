"""``vcorr bench shards``: resident memory and open files of one loader process while it walks
a dataset of many shards (issue 17: a reader that kept every shard open ran out of file
descriptors at 1000 shards and grew by about 0.5 MiB per shard).

The dataset is written directly with :class:`ShardWriter` (tiny JPEG frames, no decoding), so
that a thousand shards take seconds. The walk reads one clip of every video in shard order
through :class:`VideoClipDataset`, in this process, as a DataLoader worker would.
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from vcorr.pipelines.data.shards import INDEX_COLUMNS, MAX_OPEN_SHARDS, ShardWriter, shard_name
from vcorr.pipelines.fileio import write_atomic


def make_many_shards(folder: str | Path, shards: int = 1000, videos_per_shard: int = 2,
                     frames: int = 4, size: int = 16) -> Path:
    """A prepared-looking dataset (``index.csv``, ``classes.txt``, ``shards/``) of ``shards``
    train shards with ``videos_per_shard`` videos of ``frames`` JPEG frames of ``size`` x
    ``size`` pixels each (all frames the same image). Returns the folder."""
    import torch
    from torchvision.io import encode_jpeg

    folder = Path(folder)
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    image = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, size, size),
                                                               dtype=np.uint8))
    jpeg = bytes(encode_jpeg(image).numpy())
    rows = []
    for s in range(shards):
        name = shard_name("train", s)
        writer = ShardWriter(folder / "shards" / name, "bench")
        for v in range(videos_per_shard):
            row = {"id": f"s{s:05d}_v{v}", "split": "train", "label": f"c{v % 2}",
                   "label_index": v % 2, "num_frames": frames, "fps": 12.0,
                   "source_fps": 12.0, "height": size, "width": size, "duration": frames / 12,
                   "variable_rate": 0}
            writer.add_jpeg(row, [jpeg] * frames)
            rows.append({**row, "shard": name})
        writer.close()
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(INDEX_COLUMNS), lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_atomic(folder / "index.csv", buf.getvalue())
    write_atomic(folder / "classes.txt", "c0\nc1\n")
    return folder


def open_files() -> int:
    """File descriptors open in this process (Linux ``/proc/self/fd``)."""
    return len(os.listdir("/proc/self/fd"))


def resident_mib() -> float:
    """Resident set size of this process in MiB (Linux ``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def walk_shards(folder: str | Path, max_open: int = MAX_OPEN_SHARDS,
                every: int = 100) -> dict[str, Any]:
    """Read one clip of every video of ``folder`` in shard order with a reader that keeps at
    most ``max_open`` shards open. Returns samples ``[(shards walked, open fds, RSS MiB,
    reader's open shards, cached offsets)]`` every ``every`` shards, and the first and last."""
    from vcorr.pipelines.data.dataset import VideoClipDataset
    from vcorr.pipelines.data.samplers import DenseSampler
    from vcorr.pipelines.data.shards import ShardReader

    ds = VideoClipDataset(folder, "train", DenseSampler(2), None, train=False)
    ds.reader = ShardReader(Path(folder) / "shards", max_open=max_open)
    samples = [(0, open_files(), resident_mib(), 0, 0)]
    seen: set[str] = set()
    for i, v in enumerate(ds.videos):
        ds[i]
        if v["shard"] not in seen:
            seen.add(v["shard"])
            if len(seen) % every == 0:
                samples.append((len(seen), open_files(), resident_mib(), ds.reader.open_files,
                                ds.reader.cached_offsets[0]))
    ds.reader.close()
    return {"shards": len(seen), "videos": len(ds), "max_open": max_open,
            "samples": samples, "fds_growth": samples[-1][1] - samples[1][1],
            "rss_growth_mib": samples[-1][2] - samples[1][2]}
