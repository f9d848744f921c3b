"""``vcorr extract``: features of a trained model for downstream work (retrieval, temporal
localisation, linear probes), one HDF5 dataset per video.

The clips and views are those of ``vcorr eval`` (prepared data, ``--data``) or ``vcorr predict``
(raw videos). A forward hook on the chosen stage of the generic :class:`VideoResNet` (X3D
included: ``res2``..``res5``) takes its output and stops the forward pass there (the later
stages and the head do not run). ``pool`` is the global average of the last stage's output,
the map every classification head starts from. Maps are averaged over (T, H, W) unless
``keep_spatial``; then over views (one vector per video) or over each clip's crops
(``per_clip``: one per clip, in time order). Flipped views (10 crops) are averaged as they are.
The model runs in float32 (no autocast on CUDA): the features are the float32 model's.

Resumable and safe to kill: each video's array is written as an anonymous dataset (no name,
so nothing a reader iterating the file sees) with its attributes and flushed, then linked at
``<id>`` and the file flushed again, so a dataset at ``<id>`` is always complete and the file's
only names are video ids; a kill before the link leaves unreachable bytes, never a name; a
rerun skips every ``<id>`` present. A rerun with other settings (checkpoint, layer, views,
...) is refused; ``overwrite`` starts a new file instead, the old one moved aside to
``STEM.old-N.h5`` (:mod:`vcorr.pipelines.outputs`), never deleted. (HDF5 itself is not
journaled: a kill in the milliseconds of a write may still damage the file's metadata; it is
then reported when opened.)
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vcorr.pipelines.errors import UserError
from vcorr.pipelines.evaluate.batcher import ViewBatcher
from vcorr.pipelines.evaluate.views import CROP_CHOICES
from vcorr.pipelines.outputs import aside_name, move_aside
from vcorr.pipelines.predict.plan import WHOLE
from vcorr.pipelines.runtime import resolve_device
from vcorr.pipelines.train.interrupts import fault_point


class _Stop(Exception):
    """Raised by the hook: the requested features are taken, the rest need not run."""


class FeatureTap:
    """``tap(x)``: the output of ``layer`` (a stage name of ``model.stage_names``, or
    ``pool``: the last stage) for clips ``x``, global-average-pooled over (T, H, W) unless
    ``keep_spatial``.

    Shape: (B, C_in, T, H, W) -> (B, C) or (B, C, T', H', W').

    Raises:
        UserError: ``layer`` is not one of the model's stages.
    """

    def __init__(self, model: nn.Module, layer: str, keep_spatial: bool = False) -> None:
        stages = list(getattr(model, "stage_names", []))
        if not stages:
            raise UserError(f"{type(model).__name__} has no named stages to take features from")
        if layer != "pool" and layer not in stages:
            raise UserError(f"--layer must be pool or one of the model's stages "
                            f"({', '.join(stages)}), got {layer!r}")
        self.model, self.keep_spatial = model, keep_spatial
        self.module = getattr(model, stages[-1] if layer == "pool" else layer)
        self._out: torch.Tensor | None = None

    def _hook(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self._out = output
        raise _Stop

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        handle = self.module.register_forward_hook(self._hook)
        try:
            self.model(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        out, self._out = self._out, None
        if out is None:
            raise RuntimeError("the model's forward pass did not run the hooked stage")
        return out if self.keep_spatial else out.mean(dim=(2, 3, 4))


def reduce_views(outputs: torch.Tensor, clips: int, per_clip: bool) -> torch.Tensor:
    """A video's view features (clip-major) averaged over all views, or with ``per_clip``
    over each clip's crops.

    Shape: (clips * crops, ...) -> (...) or (clips, ...)."""
    if per_clip:
        return outputs.reshape(clips, -1, *outputs.shape[1:]).mean(dim=1)
    return outputs.mean(dim=0)


class FeatureFile:
    """The HDF5 output: settings in the file's attributes, one dataset per video id."""

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        import h5py

        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.f = h5py.File(path, "a")
        except OSError as exc:
            raise UserError(f"{path}: cannot be opened as HDF5 ({exc}); it may have been "
                            "damaged by a kill during a write: rerun with --overwrite to move "
                            f"it aside to {aside_name(path)} and start anew") from None
        want = json.dumps(settings, sort_keys=True)
        have = self.f.attrs.get("settings")
        if have is not None and have != want:
            old, new = json.loads(have), settings
            diff = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(new)
                             if old.get(k) != new.get(k))
            self.f.close()
            raise UserError(f"{path}: holds features made with other settings ({diff}); give "
                            f"another --out, or --overwrite to move it aside to "
                            f"{aside_name(path)}")
        if have is None:
            self.f.attrs["settings"] = want
            for k, v in settings.items():
                self.f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list)) or v is None else v
        self.f.flush()

    def done(self) -> set[str]:
        """Ids of the complete datasets."""
        return set(self.f)

    def source(self, vid: str) -> str:
        """The ``source`` attribute of dataset ``vid``."""
        return str(self.f[vid].attrs.get("source", ""))

    def write(self, vid: str, data: np.ndarray, attrs: dict[str, Any]) -> None:
        """Write an anonymous dataset with ``attrs``, flush, then link it at ``<vid>`` and
        flush."""
        ds = self.f.create_dataset(None, data=data)
        for k, v in attrs.items():
            ds.attrs[k] = v
        self.f.flush()
        fault_point("extract")
        self.f[vid] = ds
        self.f.flush()

    def close(self) -> None:
        self.f.close()


def extract_features(checkpoint: str | Path, out: str | Path, *,
                     data: str | Path | None = None, split: str | None = None,
                     inputs: Sequence[str | Path] = (), layer: str = "pool",
                     per_clip: bool = False, keep_spatial: bool = False, clips: int = 10,
                     crops: int = 3, fps: float | None = None, every: int | None = None,
                     max_views: int = 64, workers: int = 2, device: str | None = None,
                     progress: bool = False, model_args: dict[str, Any] | None = None,
                     overwrite: bool = False) -> dict[str, Any]:
    """Write float32 features of every video of ``data`` (a prepared folder; ``split`` or
    every split) or of the raw videos ``inputs`` names into ``out`` (HDF5, resumed if it
    exists; with ``overwrite`` an existing ``out`` is moved aside and a new one started).
    Returns counts (``written``, ``skipped``, ``failed`` with reasons), settings and
    ``moved_aside`` (where the old file went, or None).
    ``model_args``: test-time builder overrides (``--model-arg``; refused where they would
    change the trained weights).

    Dataset ``<id>``: shape (C,) or (clips, C), with ``keep_spatial`` (C, T', H', W') or
    (clips, C, T', H', W'); attributes ``layer``, ``shape``, ``views``, ``clips``, ``crops``,
    ``checkpoint``, ``source`` (the video's path or prepared id).

    Raises:
        UserError: both or neither of ``data`` and ``inputs``; a bad layer; ``out`` written
            with other settings; a checkpoint or dataset that does not load.
    """
    from vcorr.pipelines.predict.inputs import collect_inputs
    from vcorr.pipelines.predict.predict import load_inference, run_raw_videos

    if (data is None) == (not inputs):
        raise UserError("give either --data (a prepared folder) or INPUT videos, not both")
    if crops not in CROP_CHOICES:
        raise UserError(f"--crops must be one of {', '.join(map(str, CROP_CHOICES))}")
    t_start = time.perf_counter()
    videos = collect_inputs(inputs) if inputs else []
    inf = load_inference(checkpoint, clips=clips, fps=fps, every=every, model_args=model_args)
    dev = resolve_device(device)  # CUDA asked for where there is none: one line
    inf.model.to(dev)
    tap = FeatureTap(inf.model, layer, keep_spatial)
    settings = {"checkpoint": str(Path(checkpoint).resolve()), "model_name": inf.model_name,
                "layer": layer, "per_clip": per_clip, "keep_spatial": keep_spatial,
                "clips": clips, "crops": crops, "views": clips * crops,
                "frames": inf.spec.frames, "interval": inf.spec.interval,
                "crop_size": inf.crop_size,
                "source": "prepared" if data is not None else "raw videos",
                "model_args": dict(model_args or {})}
    if data is None:
        settings["sampling"] = inf.spec.sampling.as_dict()
    else:
        settings["data"] = str(Path(data).resolve())
    out = Path(out)
    root = Path(data) if data is not None else None
    table = None   # the prepared index (pipelines.data.index.VideoTable)
    splits: list[str] = []
    if root is not None:
        from vcorr.pipelines.data.inspect import read_index

        if not (root / "index.csv").is_file():
            raise UserError(f"{root}: not a prepared dataset (no index.csv)")
        table = read_index(root)
        per_split = table.counts("split")   # columns: no per-row objects
        splits = [split] if split else list(per_split)
        for sp in splits:
            if not per_split.get(sp):
                raise UserError(f"{root}: no videos in split {sp!r}")
    # Every check above passed: only now may the old file go (it is never deleted).
    moved = move_aside(out) if overwrite and os.path.lexists(out) else None
    h5 = FeatureFile(out, settings)
    written: list[str] = []
    failed: list[dict[str, str]] = []
    skipped = 0

    def attrs(source: str, arr: np.ndarray) -> dict[str, Any]:
        return {"layer": layer, "shape": list(arr.shape), "views": clips * crops,
                "clips": clips, "crops": crops, "checkpoint": settings["checkpoint"],
                "source": source}

    def reduce(outputs: torch.Tensor, flips: list[bool]) -> torch.Tensor:
        return reduce_views(outputs, clips, per_clip)

    try:
        done = h5.done()
        if root is not None:
            from vcorr.pipelines.evaluate.evaluate import feed_prepared

            for sp in splits:
                ids = table.select(table.mask("split", sp)).column("id")
                todo = [i for i, vid in enumerate(ids) if vid not in done]
                skipped += len(ids) - len(todo)
                if not todo:
                    continue

                def on_done(idx: int, result: torch.Tensor, ids: list[str] = ids) -> None:
                    arr = result.cpu().numpy().astype(np.float32)
                    h5.write(ids[idx], arr, attrs(ids[idx], arr))
                    written.append(ids[idx])

                batcher = ViewBatcher(tap, reduce, on_done, crops=crops,
                                      crop_size=inf.crop_size, max_views=max_views, device=dev,
                                      mean=inf.mean, std=inf.std, amp=False)
                r = feed_prepared(batcher, root, sp, frames=inf.spec.frames,
                                  interval=inf.spec.interval, sampler=inf.spec.sampler,
                                  short_video=inf.spec.short_video,
                                  short_side=inf.test_short_side, clips=clips, workers=workers,
                                  device=dev, only=todo,
                                  progress=f"extract {sp}" if progress else None)
                failed += [{"id": f["id"], "error": f["error"]} for f in r["failed"]]
        else:
            for v in videos:  # an id already there must be the same video
                if v.id in done and h5.source(v.id) != v.path:
                    raise UserError(f"{out}: holds {v.id!r} from {h5.source(v.id)}, not from "
                                    f"{v.path}; give another --out, or --overwrite to move "
                                    f"it aside to {aside_name(out)}")
            todo = [v for v in videos if v.id not in done]
            skipped = len(videos) - len(todo)
            todo_paths = [v.path for v in todo]

            def on_video(i: int, res: dict[str, Any]) -> None:
                v = todo[i]
                if res["error"]:
                    failed.append({"id": v.id, "path": v.path, "error": res["error"]})
                    return
                arr = res["groups"].pop(WHOLE).numpy().astype(np.float32)
                h5.write(v.id, arr, attrs(v.path, arr))
                written.append(v.id)

            if todo_paths:
                run_raw_videos(inf, todo_paths, crops=crops, max_views=max_views,
                               workers=workers, device=dev, amp=False, forward=tap,
                               reduce=reduce, progress="extract" if progress else None,
                               on_video=on_video)
        total = len(h5.done())
    finally:
        h5.close()
    return {"out": str(out), **settings, "written": len(written), "skipped": skipped,
            "failed": failed, "videos_in_file": total,
            "moved_aside": str(moved) if moved else None,
            "seconds": time.perf_counter() - t_start}

