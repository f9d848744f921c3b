"""``vcorr bench train``: training throughput and the share of step time spent waiting for data.

It runs the real training loop (:func:`vcorr.pipelines.train.train`) for a few steps with per-step
metrics, so what it measures is what ``vcorr train`` does: the shard loader in DataLoader
workers feeding a model's forward, loss, backward and SGD step. The first ``warmup`` steps
(worker start-up, allocator warm-up) are left out of the figures.
"""
from __future__ import annotations

import copy
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import torch

from vcorr.pipelines.train.config import DEFAULTS


def bench_train(data: str | Path, model: str = "c2d_r18", *, frames: int = 8, crop: int = 112,
                batch: int = 8, workers: int = 1, steps: int = 12, warmup: int = 2,
                device: str | None = None) -> dict[str, Any]:
    """Time ``steps`` training steps of ``model`` on the prepared dataset ``data``."""
    from vcorr.pipelines.train import train

    cfg = copy.deepcopy(DEFAULTS)
    cfg["data"].update(root=str(data), frames=frames, crop=crop, workers=workers,
                       short_side=[crop + crop // 7, crop + crop // 7 * 3])
    cfg["model"]["name"] = model
    cfg["optim"].update(batch_size=batch, epochs=1)
    cfg["train"].update(log_every=1, val_every=0, max_steps_per_epoch=steps + warmup)
    with tempfile.TemporaryDirectory(prefix="vcorr-bench-train-") as tmp:
        train(cfg, tmp, progress=False, device=device)
        records = [json.loads(line) for line in (Path(tmp) / "metrics.jsonl").read_text().splitlines()]
    timed = [r for r in records if r["split"] == "train"][warmup:]
    if not timed:
        raise ValueError("no timed steps: the dataset is smaller than warmup + 1 batches")
    step_s = [batch / r["clips_per_s"] for r in timed]
    wait = [r["data_wait"] for r in timed]
    total = sum(step_s)
    return {
        "model": model, "frames": frames, "crop": crop, "batch": batch, "workers": workers,
        "device": device or ("cuda" if torch.cuda.is_available() else "cpu"),
        "torch_threads": torch.get_num_threads(), "steps": len(timed),
        "clips_per_s": batch * len(timed) / total,
        "step_s_median": statistics.median(step_s),
        "data_wait_share": sum(w * s for w, s in zip(wait, step_s)) / total,
        "data_wait_share_max_step": max(wait),
        "target_data_wait_share": 0.10,
        "target_met": sum(w * s for w, s in zip(wait, step_s)) / total < 0.10,
    }
