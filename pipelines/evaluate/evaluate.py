"""``vcorr eval``: multi-view testing of a training checkpoint.

Every video gives ``clips`` evenly spaced clips (the training clip length, interval and
sampler, from the checkpoint's config), read once and resized once in DataLoader workers (the
dataset's test mode with ``num_clips`` and no crop); the ``crops`` spatial views are cut from
that tensor on the device, batched across videos up to ``max_views_per_batch``, and the view
scores averaged per video (softmax probabilities or logits; flipped views label-swapped back).
A video that cannot be read is reported in ``failed_videos`` and counted, never dropped.
``frame_order`` reversed or shuffled feeds every clip's frames in that order
(:func:`vcorr.pipelines.evaluate.views.order_frames`, in the workers, after sampling), for the
temporal-order analysis of ``vcorr compare --order``.

Outputs (atomic): ``metrics.json``, ``predictions.csv``, ``scores.npz``. A folder that holds
them already is refused before the model runs (:mod:`vcorr.pipelines.outputs`), unless
``overwrite``, which moves it aside once the new results are ready.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from vcorr.pipelines.data.dataset import VideoClipDataset
from vcorr.pipelines.data.inspect import read_classes, read_meta
from vcorr.pipelines.data.samplers import make_sampler
from vcorr.pipelines.data.swaps import checkpoint_swap_map
from vcorr.pipelines.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ToModelLayout
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.evaluate.batcher import Prefetched, ViewBatcher
from vcorr.pipelines.evaluate.views import (CROP_CHOICES, FRAME_ORDERS, average_views,
                                            check_mirrored_views,
                                            order_frames)
from vcorr.pipelines.fileio import write_atomic
from vcorr.pipelines.outputs import check_folder, move_aside

# What `vcorr eval` writes into its output folder.
EVAL_OUTPUTS = ("metrics.json", "predictions.csv", "scores.npz")


@dataclass
class EvalSettings:
    clips: int = 10
    crops: int = 3
    crop_size: int | None = None      # None: the checkpoint's data.crop
    short_side: int | None = None     # None: data.test_short_side; 0 keeps the stored size
    full_frame: bool = False
    average: str = "probs"            # probs | logits
    max_views_per_batch: int = 64
    workers: int = 2
    amp: bool = True                  # autocast on CUDA
    compile: bool = False             # torch.compile the model (pipelines.runtime)
    frame_order: str = "original"     # original | reversed | shuffled (views.FRAME_ORDERS)
    frame_order_seed: int = 0         # shuffled: seeds each clip's permutation with its video
    model_args: dict = field(default_factory=dict)  # builder overrides at test time (e.g. k)
    swap_map: str = ""                # mirrored views: a built-in map or a CSV file ("": the run's)


# --- data --------------------------------------------------------------------------------------

class _Resize(nn.Module):
    """uint8 (T, C, H, W) video -> uint8 (C, T, H', W'): only the short-side resize, so that
    workers send uint8 and every crop is cut later from the one resized tensor."""

    def __init__(self, short_side: int | None) -> None:
        super().__init__()
        ops: list = [v2.Resize(short_side, antialias=True)] if short_side else []
        self.tf = v2.Compose(ops + [ToModelLayout()])

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.tf(video)


class _SafeVideos(torch.utils.data.Dataset):
    """Items of a test-mode dataset as dicts, the clips' frames in ``frame_order``; a video
    that fails to read gives its error."""

    def __init__(self, ds: VideoClipDataset, frame_order: str = "original",
                 seed: int = 0) -> None:
        self.ds, self.frame_order, self.seed = ds, frame_order, seed

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            clips, _ = self.ds[index]
            if clips.dim() == 4:  # num_clips == 1
                clips = clips.unsqueeze(0)
            clips = order_frames(clips, self.frame_order, self.ds.videos[index]["id"], self.seed)
            return {"index": index, "clips": clips, "error": ""}
        except Exception as exc:  # noqa: BLE001 - reported per video, never dropped
            return {"index": index, "clips": None,
                    "error": f"{type(exc).__name__}: {str(exc)[:200]}"}


def _failure(ds: VideoClipDataset, index: int, error: str) -> dict[str, str]:
    v = ds.videos[index]
    return {"id": v["id"], "label": ds.classes[v["label_index"]], "error": error}


def _first(batch: list) -> Any:
    return batch[0]


def clip_settings(cfg: dict) -> tuple[int, int, str]:
    """(frames, interval, sampler) of the last training phase."""
    from vcorr.pipelines.train.config import phases

    last = phases(cfg)[-1]
    return last["frames"], last["interval"], cfg["data"]["sampler"]


# --- the evaluation loop -----------------------------------------------------------------------

def view_geometry(cfg: dict, crop_size: int | None = None,
                  short_side: int | None = None) -> tuple[int, int | None]:
    """(crop size, short side) of test views: the options given, else the checkpoint config's
    ``data.crop`` and ``data.test_short_side`` (None: frames keep their size)."""
    crop = crop_size or cfg["data"]["crop"]
    side = cfg["data"]["test_short_side"] if short_side is None else short_side
    if isinstance(side, list):
        side = side[0] if side else 0
    return int(crop), int(side) or None


def check_settings(s: EvalSettings) -> None:
    """Raises:
        UserError: ``crops`` or ``frame_order`` is not one of the choices."""
    if s.crops not in CROP_CHOICES:
        raise UserError(f"--crops must be one of {', '.join(map(str, CROP_CHOICES))}")
    if s.frame_order not in FRAME_ORDERS:
        raise UserError(f"--frame-order must be one of {', '.join(FRAME_ORDERS)}, "
                        f"got {s.frame_order!r}")


def run_views(model: nn.Module, root: str | Path, split: str, *, frames: int, interval: int,
              sampler: str, crop_size: int, short_side: int | None, normalize: bool,
              settings: EvalSettings, swap_map: dict[int, int], device: torch.device,
              limit: int | None = None, sync_timing: bool = False,
              progress: bool = False, rank: int = 0, world_size: int = 1,
              short_video: str = "loop",
              mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> dict[str, Any]:
    """Scores of every video of ``split`` (under torchrun: of this rank's share, every
    ``world_size``-th video): returns ids, labels, (V, K) averaged scores, failures and the time
    spent waiting for data, building views and in the model. ``normalize``: subtract ``mean``
    and divide by ``std`` (0-1 RGB; the checkpoint's ``data.mean``/``data.std``)."""
    s = settings
    check_settings(s)
    model.eval()
    scores: dict[int, torch.Tensor] = {}

    def done(idx: int, result: torch.Tensor) -> None:
        scores[idx] = result.cpu()

    batcher = ViewBatcher(model, lambda out, flips: average_views(out, flips, swap_map, s.average),
                          done, crops=None if s.full_frame else s.crops, crop_size=crop_size,
                          max_views=s.max_views_per_batch, device=device,
                          mean=mean if normalize else None, std=std, amp=s.amp,
                          sync_timing=sync_timing)
    r = feed_prepared(batcher, root, split, frames=frames, interval=interval, sampler=sampler,
                      short_video=short_video, short_side=short_side, clips=s.clips,
                      workers=s.workers, device=device,
                      limit=limit, rank=rank, world_size=world_size,
                      progress="eval" if progress else None, frame_order=s.frame_order,
                      seed=s.frame_order_seed)
    ds = r["dataset"]
    order = sorted(scores)
    return {
        "indices": order,
        "ids": [ds.videos[i]["id"] for i in order],
        "labels": [ds.videos[i]["label_index"] for i in order],
        "scores": (torch.stack([scores[i] for i in order]).numpy() if order
                   else np.zeros((0, len(ds.classes)), np.float32)),
        "failed": r["failed"], "classes": ds.classes, "views_per_video": batcher.views_per_video,
        "timing": {"data": r["data_wait"], **batcher.timing}, "num_videos": r["num_videos"],
    }


def feed_prepared(batcher: ViewBatcher, root: str | Path, split: str, *, frames: int,
                  interval: int, sampler: str, short_side: int | None, clips: int, workers: int,
                  device: torch.device, limit: int | None = None, rank: int = 0,
                  world_size: int = 1, progress: str | None = None,
                  only: Sequence[int] | None = None, frame_order: str = "original",
                  short_video: str = "loop",
                  seed: int = 0) -> dict[str, Any]:
    """Read the ``clips`` test clips of every video of a prepared ``split`` (this rank's share;
    ``only``: just these video indices) in DataLoader workers and ``batcher.add`` them under
    the video's index; flushes at the end. ``frame_order``/``seed``: the order of each clip's
    frames (:func:`vcorr.pipelines.evaluate.views.order_frames`).

    Returns the dataset, the failed videos (id, label, error), the number of videos and the
    seconds spent waiting for data. ``progress``: a bar with this title counting videos done
    (scored or failed)."""
    ds = VideoClipDataset(root, split, make_sampler(sampler, frames, interval, short_video),
                          _Resize(short_side), train=False, num_clips=clips)
    n_videos = len(ds) if limit is None else min(limit, len(ds))
    order = list(range(rank, n_videos, world_size)) if only is None else list(only)
    bar = None
    if progress:
        from vcorr.pipelines.progress import make_progress

        bar = make_progress(len(order), progress, unit="video")
        scored = batcher.on_done

        def on_done(key: Any, result: torch.Tensor) -> None:
            scored(key, result)
            bar.update(1)  # the bar counts videos scored, not videos read

        batcher.on_done = on_done
    loader = torch.utils.data.DataLoader(
        _SafeVideos(ds, frame_order, seed), batch_size=1, sampler=order,
        num_workers=workers, collate_fn=_first, pin_memory=device.type == "cuda",
        prefetch_factor=2 if workers else None)
    failed: list[dict[str, Any]] = []
    # The model works on what it has while the workers read the next videos.
    items = Prefetched(loader, workers, on_idle=batcher.flush)
    with torch.inference_mode():
        for item in items:
            idx = item["index"]
            error = item["error"]
            if item["clips"] is not None:
                try:
                    batcher.add(idx, item["clips"])
                except ValueError as exc:
                    error = f"ValueError: {exc}"
            if error:
                failed.append(_failure(ds, idx, error))
                if bar is not None:
                    bar.update(1)
        batcher.flush()
    if bar is not None:
        bar.close()
    return {"dataset": ds, "failed": failed, "num_videos": n_videos, "data_wait": items.waited}


# --- metrics -----------------------------------------------------------------------------------

def compute_metrics(scores: np.ndarray, labels: list[int] | np.ndarray,
                    classes: list[str]) -> dict[str, Any]:
    """Top-1/top-5, mean class accuracy, per-class accuracy and support, and the confusion
    matrix (rows: true class, columns: predicted) of (V, K) scores. ``top5`` is None for
    fewer than 6 classes (it would always be 1)."""
    labels = np.asarray(labels, dtype=np.int64)
    k = len(classes)
    n = len(labels)
    conf = np.zeros((k, k), dtype=np.int64)
    if n:
        pred = scores.argmax(axis=1)
        np.add.at(conf, (labels, pred), 1)
        top = np.argsort(-scores, axis=1, kind="stable")[:, :min(5, k)]
        top1 = float((pred == labels).mean())
        top5 = float((top == labels[:, None]).any(axis=1).mean())
    else:
        top1 = top5 = 0.0
    support = conf.sum(axis=1)
    per_class = []
    for c in range(k):
        acc = float(conf[c, c] / support[c]) if support[c] else None
        per_class.append({"class": classes[c], "accuracy": acc, "support": int(support[c])})
    accs = [p["accuracy"] for p in per_class if p["accuracy"] is not None]
    return {"top1": top1, "top5": top5 if k > 5 else None,
            "mean_class_accuracy": float(np.mean(accs)) if accs else 0.0,
            "per_class": per_class, "confusion_matrix": conf.tolist()}


# --- the command -------------------------------------------------------------------------------

def default_out(checkpoint: str | Path, split: str, settings: EvalSettings) -> Path:
    """``CHECKPOINT's folder/eval_<split>_<clips>x<crops or full>`` for ``best.pt`` and
    ``eval_<stem>_<split>_...`` for any other checkpoint (``last.pt`` and ``best.pt`` of one
    run get their own folders), then ``_reversed`` or ``_shuffled`` (``_shuffled_seed<N>`` for
    a seed other than 0) when the frames are not in their original order, so that the order
    runs sit beside the original one."""
    s = settings
    stem = Path(checkpoint).stem
    name = (f"eval_{'' if stem == 'best' else stem + '_'}{split}_"
            f"{s.clips}x{'full' if s.full_frame else s.crops}")
    if s.frame_order != "original":
        name += f"_{s.frame_order}"
        if s.frame_order == "shuffled" and s.frame_order_seed:
            name += f"_seed{s.frame_order_seed}"
    return Path(checkpoint).parent / name


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes, in order): two results
    with the same digest were computed with the same weights, wherever the checkpoint lay."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def evaluate_checkpoint(checkpoint: str | Path, data: str | Path | None, out: str | Path | None,
                        split: str = "val", settings: EvalSettings | None = None,
                        device: str | None = None, progress: bool = False,
                        overwrite: bool = False) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``split`` of the prepared ``data`` and write ``out``
    (default :func:`default_out`).

    Raises:
        UserError: ``out`` holds results of an earlier evaluation (unless ``overwrite``: then
            they are moved aside to ``out.old-N`` when the new ones are written), the
            checkpoint or data do not load, or the classes differ.
    """
    from vcorr.pipelines.train.distributed import cleanup_distributed, setup_distributed
    from vcorr.pipelines.train.trainer import model_from_checkpoint

    s = settings or EvalSettings()
    t_start = time.perf_counter()
    out = Path(out) if out is not None else default_out(checkpoint, split, s)
    check_settings(s)
    # The checkpoint first: a typo in its name is the problem to report, not the folder.
    model, ckpt = model_from_checkpoint(checkpoint, s.model_args)
    move_old = check_folder(out, EVAL_OUTPUTS, overwrite=overwrite,
                            what="the results of an earlier `vcorr eval`")
    digest = weights_digest(model)
    cfg = ckpt["config"]
    root = Path(data or cfg["data"]["root"])
    if not (root / "index.csv").is_file():
        whose = "" if data else " (the checkpoint's data.root)"
        raise UserError(f"{root}: not a prepared dataset{whose} (no index.csv); give --data")
    classes = read_classes(root)
    if list(classes) != list(ckpt["classes"]):
        raise UserError(f"{root}: its {len(classes)} classes differ from the checkpoint's "
                        f"{len(ckpt['classes'])}; evaluate on the dataset the model was trained on")
    frames, interval, sampler = clip_settings(cfg)
    crop_size, short_side = view_geometry(cfg, s.crop_size, s.short_side)
    swap_map, swap_pairs_used = checkpoint_swap_map(ckpt, s.swap_map,
                                                    read_meta(root).get("dataset", ""),
                                                    str(checkpoint))
    if not s.full_frame:
        check_mirrored_views(s.crops, cfg["data"]["flip"], swap_map, checkpoint)
    env = setup_distributed(device)
    dev = env.device
    try:
        model.to(dev)
        if s.compile:
            from vcorr.pipelines.runtime import compile_model
            model = compile_model(model)
        r = run_views(model, root, split, frames=frames, interval=interval, sampler=sampler,
                      crop_size=crop_size, short_side=short_side,
                      normalize=bool(cfg["data"]["normalize"]), mean=cfg["data"]["mean"],
                      std=cfg["data"]["std"], settings=s, swap_map=swap_map,
                      short_video=cfg["data"]["short_video"],
                      device=dev, progress=progress and env.is_main, rank=env.rank,
                      world_size=env.world_size)
        r = gather_results(r, env.world_size)
    finally:
        cleanup_distributed()
    metrics = compute_metrics(r["scores"], r["labels"], classes)
    n_eval, n_failed = len(r["ids"]), len(r["failed"])
    metrics.update({
        "num_videos": n_eval, "num_failed": n_failed, "failed_videos": r["failed"],
        "top1_counting_failed_as_wrong": (metrics["top1"] * n_eval / (n_eval + n_failed)
                                          if n_eval + n_failed else 0.0),
        "views_per_video": s.clips * (1 if s.full_frame else s.crops),
        "clips": s.clips, "crops": 1 if s.full_frame else s.crops, "full_frame": s.full_frame,
        "averaging": s.average, "crop_size": None if s.full_frame else crop_size,
        "short_side": short_side, "frames": frames, "interval": interval, "sampler": sampler,
        "label_swap": bool(swap_map), "swap_pairs": swap_pairs_used, "dataset": str(root), "split": split,
        "checkpoint": str(checkpoint), "model_name": ckpt.get("model_name", cfg["model"]["name"]),
        "weights_sha256": digest, "frame_order": s.frame_order,
        "frame_order_seed": s.frame_order_seed if s.frame_order == "shuffled" else None,
        "device": str(dev), "settings": asdict(s), "timing": r["timing"],
    })
    metrics["seconds"] = time.perf_counter() - t_start
    if env.is_main:  # under torchrun, rank 0 writes the gathered results
        if move_old:
            metrics["moved_aside"] = str(move_aside(out))
        out.mkdir(parents=True, exist_ok=True)
        write_outputs(out, metrics, r, classes)
    metrics["out"] = str(out)
    return metrics


def gather_results(r: dict[str, Any], world_size: int) -> dict[str, Any]:
    """Under torchrun, every rank's share of :func:`run_views` merged back into video order
    (``all_gather_object``: works on gloo and nccl); alone, ``r`` unchanged."""
    if world_size == 1:
        return r
    import torch.distributed as dist

    keys = ("indices", "ids", "labels", "scores", "failed", "timing", "views_per_video")
    parts: list[Any] = [None] * world_size
    dist.all_gather_object(parts, {k: r[k] for k in keys})
    rows = sorted((i, vid, lab, sc) for p in parts
                  for i, vid, lab, sc in zip(p["indices"], p["ids"], p["labels"], p["scores"]))
    merged = dict(r)
    merged["indices"] = [row[0] for row in rows]
    merged["ids"] = [row[1] for row in rows]
    merged["labels"] = [row[2] for row in rows]
    merged["scores"] = (np.stack([row[3] for row in rows]) if rows
                        else np.zeros((0, r["scores"].shape[1]), np.float32))
    merged["failed"] = [f for p in parts for f in p["failed"]]
    merged["timing"] = {k: sum(p["timing"][k] for p in parts) for k in r["timing"]}
    merged["views_per_video"] = max(p["views_per_video"] for p in parts)
    return merged


def write_outputs(out: Path, metrics: dict[str, Any], r: dict[str, Any],
                  classes: list[str]) -> None:
    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id", "label", "predicted", "correct", "top5", "error"])
    k5 = min(5, len(classes))
    for vid, label, sc in zip(r["ids"], r["labels"], r["scores"]):
        top = np.argsort(-sc, kind="stable")[:k5]
        w.writerow([vid, classes[label], classes[int(top[0])], int(top[0] == label),
                    "|".join(classes[int(c)] for c in top), ""])
    for f in r["failed"]:
        w.writerow([f["id"], f["label"], "", 0, "", f["error"]])
    write_atomic(out / "predictions.csv", buf.getvalue())
    npz = io.BytesIO()
    np.savez(npz, ids=np.asarray(r["ids"], dtype=str), labels=np.asarray(r["labels"], np.int64),
             scores=np.asarray(r["scores"], np.float32), classes=np.asarray(classes, dtype=str))
    write_atomic(out / "scores.npz", npz.getvalue())
