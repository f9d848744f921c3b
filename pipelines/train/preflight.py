"""What ``vcorr train`` checks before the first step, and the run folder's own rules.

* :func:`preflight`: everything that can be checked from the config and the prepared data
  (splits, batch against dataset size, labels against classes, clip length, frame size against
  the crop, loader workers against the cores), so that a mistake costs seconds, not epochs.
* :func:`describe_run`: one line on what a run folder holds (model, epochs done, best
  validation), for the refusal to train over it.
* :func:`resume_changes`: the config keys that may change on ``--resume`` because they do not
  change the experiment (:data:`SAFE_ON_RESUME`), and the refusal for the others.
* :func:`data_fingerprint`: what a checkpoint remembers of its training data, so that a resume
  on other data (a moved ``data.root`` that is not the same dataset, a re-prepared folder) is
  refused instead of silently training on it.
* :class:`RunStart`: a new run's folder, removed again (and a run moved aside by
  ``--overwrite`` put back) when the start fails before the first step.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from vcorr.pipelines.data.index import VideoTable
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.outputs import aside_name, folder_results, move_aside

# What a run folder holds (an `eval_*` folder is an evaluation of its checkpoints).
RUN_PATTERNS = ("last.pt", "best.pt", "summary.json", "metrics.jsonl", "config.toml",
                "init_report.json", "eval_*")

# Keys that do not change what is trained: where the data is and what its splits are called
# (the training videos are checked against the checkpoint's fingerprint), loader workers
# (a clip depends only on seed, epoch and index), and when to validate and log (validation
# runs without gradients, in eval mode, on its own loader and RNG), and how the same model is
# run (torch.compile, the channels-last layout: the same math, other float rounding).
SAFE_ON_RESUME = ("data.root", "data.train_split", "data.val_split", "data.workers",
                  "train.val_every", "train.log_every", "train.val_batch_size",
                  "train.compile", "train.channels_last")


# --- the run folder ----------------------------------------------------------------------------

def run_epochs(cfg: dict, position: dict[str, int]) -> tuple[int, int, int]:
    """(epochs done, epochs in all, steps done in the current epoch) of a checkpoint position."""
    from vcorr.pipelines.train.config import phases

    plan = phases(cfg)
    total = sum(p["epochs"] for p in plan)
    phase = position.get("phase", 0)
    if phase >= len(plan):
        return total, total, 0
    done = sum(p["epochs"] for p in plan[:phase]) + min(position.get("epoch", 0),
                                                        plan[phase]["epochs"])
    return done, total, position.get("step_in_epoch", 0)


def describe_run(out: Path) -> tuple[str, bool]:
    """What ``out`` holds, in words, and whether that run is finished.

    E.g. ``("a run of cpnet_r18 (3 of 10 epochs done, best val top-1 45.2%)", False)``.
    """
    from vcorr.pipelines.train.checkpoint import load_checkpoint

    last = out / "last.pt"
    if not last.is_file():
        model = "?"
        if (out / "config.toml").is_file():
            try:
                from vcorr.pipelines.train.config import load_config
                model = load_config(out / "config.toml")["model"]["name"]
            except UserError:
                pass
        found = folder_results(out, RUN_PATTERNS)
        return (f"a run of {model} that saved no checkpoint ({', '.join(found)})", False)
    try:
        ckpt = load_checkpoint(last)
        done, total, steps = run_epochs(ckpt["config"], ckpt["position"])
        model = ckpt.get("model_name", ckpt["config"]["model"]["name"])
    except (UserError, KeyError, TypeError):
        return (f"a run whose {last.name} does not load", False)
    best = ckpt.get("best_top1", -1.0)
    val = f"best val top-1 {100 * best:.1f}%" if best is not None and best >= 0 else \
        "not validated yet"
    finished = done == total
    if finished:
        return f"a finished run of {model} ({total} epoch{'s' * (total != 1)}, {val})", True
    part = f" and {steps} step{'s' * (steps != 1)}" if steps else ""
    return (f"a run of {model} ({done} of {total} epoch{'s' * (total != 1)}{part} done, "
            f"{val})", False)


def check_new_run(out: Path, overwrite: bool) -> bool:
    """The output-folder rule for a new run (no ``--resume``): refuse a folder that holds a
    run, unless ``overwrite``. Returns whether the old run has to be moved aside."""
    if not folder_results(out, RUN_PATTERNS):
        return False
    if overwrite:
        return True
    what, finished = describe_run(out)
    resumable = not finished and (out / "last.pt").is_file() and "does not load" not in what
    ways = ("continue it with --resume, or give another --out" if resumable else
            "continue it for more epochs with --resume --extend N, or give another --out"
            if finished else "give another --out")
    raise UserError(f"{out}: holds {what}; {ways} (--overwrite moves it aside to "
                    f"{aside_name(out)})")


class RunStart:
    """The folder of a new run (rank 0 only): moves an old run aside (``move_old``), creates
    the folder, and, if the block fails before :meth:`started` (a bad ``--init``, an
    interrupt), removes what it created and moves the old run back."""

    def __init__(self, out: Path, *, move_old: bool, enabled: bool) -> None:
        self.out, self.move_old, self.enabled = out, move_old, enabled
        self.aside: Path | None = None
        self.existed, self.before, self.done = False, set(), False

    def __enter__(self) -> "RunStart":
        if not self.enabled:
            return self
        if self.move_old:
            self.aside = move_aside(self.out)
            print(f"note: moved the earlier run aside to {self.aside}", flush=True)
        self.existed = self.out.is_dir()
        self.before = set(os.listdir(self.out)) if self.existed else set()
        self.out.mkdir(parents=True, exist_ok=True)
        return self

    def started(self) -> None:
        """The first step is next: from here on the folder is the run's."""
        self.done = True

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> bool:
        if exc_type is None or self.done or not self.enabled:
            return False
        if not self.existed:
            shutil.rmtree(self.out, ignore_errors=True)
        else:
            for name in set(os.listdir(self.out)) - self.before:
                path = self.out / name
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        if self.aside is not None:
            os.rename(self.aside, self.out)
        return False


def remove_stale_temporaries(out: Path) -> None:
    """Temporary files of atomic writes that a killed process left (``.NAME.PID.tmp``)."""
    for path in out.glob(".*.tmp"):
        parts = path.name.split(".")
        if len(parts) >= 4 and parts[-2].isdigit() and not _alive(int(parts[-2])):
            path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# --- resume ------------------------------------------------------------------------------------

def flatten(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted keys of a config (``model.args`` and ``phases`` are single values)."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and name != "model.args":
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def resume_changes(saved: dict, cfg: dict, where: Path) -> dict[str, list[Any]]:
    """``{key: [old, new]}`` of the keys ``cfg`` changes against the run's ``saved`` config.

    Raises:
        UserError: a key outside :data:`SAFE_ON_RESUME` differs (all such keys are listed).
    """
    a, b = flatten(saved), flatten(cfg)
    missing = object()
    diff = {k: [a.get(k, missing), b.get(k, missing)] for k in sorted(set(a) | set(b))
            if a.get(k, missing) != b.get(k, missing)}
    unsafe = [k for k in diff if k not in SAFE_ON_RESUME]
    if unsafe:
        def show(v: Any) -> str:
            return "(unset)" if v is missing else json.dumps(v)

        listed = "; ".join(f"{k} {show(diff[k][0])} -> {show(diff[k][1])}" for k in unsafe)
        raise UserError(f"{where}: the run was started with another config; these keys differ "
                        f"and change the experiment: {listed}. On --resume only "
                        f"{', '.join(SAFE_ON_RESUME)} may change; for the others start a new "
                        "run with another --out")
    return diff


def _table(rows: VideoTable | list[dict]) -> VideoTable:
    return rows if isinstance(rows, VideoTable) else VideoTable.from_rows(rows)


def data_fingerprint(rows: VideoTable | list[dict], classes: list[str], split: str
                     ) -> dict[str, Any]:
    """Class list and training videos (id, label, frames, in index order: what the sampler's
    indices refer to) as hashes, with the video count.

    ``train`` is the SHA-256 of the lines ``id\\0label_index\\0num_frames`` of the
    ``split`` rows joined by newlines, hashed a run of rows at a time (no string per video
    held at once)."""
    table = _table(rows)
    train = table.select(table.mask("split", split))
    h = hashlib.sha256()
    step = 1 << 16
    for s in range(0, len(train), step):
        part = train[s:s + step]
        lines = "\n".join(f"{i}\0{lab}\0{n}" for i, lab, n in zip(
            part.column("id"), part.column("label_index").tolist(),
            part.column("num_frames").tolist()))
        h.update((("\n" if s else "") + lines).encode())
    return {"classes": hashlib.sha256("\n".join(classes).encode()).hexdigest()[:16],
            "train": h.hexdigest()[:16], "train_videos": len(train)}


def extend_phases(cfg: dict, epochs: int, lr: float | None = None) -> tuple[dict, dict]:
    """``cfg`` with a phase of ``epochs`` epochs appended (``vcorr train --resume --extend``),
    and that phase: the last phase's clip length, interval, batch size and BN mode, learning
    rate ``lr`` (default: the last phase's), under the config's schedule and warmup -- a warm
    restart of the schedule over the new epochs. The phases are written out in full (a
    config without ``[[phases]]`` gets its one phase as the first).

    Raises:
        UserError: ``epochs`` or ``lr`` not positive.
    """
    from vcorr.pipelines.train.config import PHASE_KEYS, phases

    if epochs < 1 or (lr is not None and lr <= 0):
        raise UserError(f"--extend needs a positive number of epochs (got {epochs}) and "
                        f"--extend-lr a positive rate (got {lr})")
    plan = [{k: p[k] for k in PHASE_KEYS} for p in phases(cfg)]
    added = dict(plan[-1], epochs=int(epochs))
    if lr is not None:
        added["lr"] = float(lr)
    return {**cfg, "phases": plan + [added]}, added


def with_extensions(cfg: dict, saved: dict, extensions: list[dict]) -> dict:
    """``cfg`` given for a resume, with the phases ``--extend`` appended to the run
    (``extensions``, recorded in its checkpoints) when ``cfg`` is the run's config from before
    them (e.g. the original file): so that resuming an extended run with either config works."""
    from vcorr.pipelines.train.config import phases

    if not extensions or phases(cfg) == phases(saved):
        return cfg
    if phases(cfg) + [dict(e) for e in extensions] == phases(saved):
        return {**cfg, "phases": [dict(p) for p in saved["phases"]]}
    return cfg


def data_meta(root: Path, given: str) -> dict[str, Any]:
    """What inference needs of the training data, recorded in every checkpoint
    (``data_meta``): ``prepare.json``'s ``data_options`` (stored frame rate or step, short
    side) and ``dataset``, the absolute ``root`` and the form it was ``given`` in. A folder
    without a readable ``prepare.json`` gives empty options (predict then says so)."""
    try:
        meta = json.loads((root / "prepare.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        meta = {}
    if not isinstance(meta, dict):
        meta = {}
    opts = meta.get("data_options")
    return {"data_options": opts if isinstance(opts, dict) else None,
            "dataset": str(meta.get("dataset", "") or ""), "root": str(root), "given": given}


def check_same_data(saved: dict | None, now: dict, root: Path, split: str,
                    where: Path) -> None:
    """Refuse to resume on other training data than the run's (nothing to check for
    checkpoints written before fingerprints existed)."""
    if not saved:
        return
    if saved["classes"] != now["classes"]:
        raise UserError(f"{root}: its classes.txt differs from the run's ({where}); resume on "
                        "the dataset the run was started on")
    if saved["train"] != now["train"]:
        raise UserError(f"{root}: split {split!r} holds other training videos than the run's "
                        f"({now['train_videos']} now, {saved['train_videos']} when the run "
                        f"started, {where}); resume on the same data, or start a new run")


# --- before the first step ---------------------------------------------------------------------

def worker_cap() -> int:
    """Loader workers worth starting per training process: the cores this process may use
    (CPU affinity, e.g. a SLURM allocation), shared by the processes of a torchrun node."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(1, cores // local)


def _short_side(value: Any) -> Any:
    if isinstance(value, list):
        return None if not value or value == [0] else tuple(value)
    return None if not value else int(value)


def preflight(cfg: dict, plan: list[dict], rows: VideoTable | list[dict], classes: list[str],
              root: Path, world_size: int, device_type: str) -> list[str]:
    """Check a run's config against its prepared data before anything is written.

    Args:
        cfg: the resolved config; plan: its phases (:func:`vcorr.pipelines.train.config.phases`).
        rows: ``index.csv`` rows (:func:`vcorr.pipelines.data.inspect.read_index`'s table, or
            row dicts); classes: the dataset's class list; root: the dataset folder (for
            messages).
        world_size: training processes; device_type: ``cpu`` or ``cuda``.

    Returns:
        Notes to print (one line each): clips that loop, frames that are upscaled, workers
        capped at the cores.

    Raises:
        UserError: naming the key (``--set key=value``) or file and the problem.
    """
    d, o = cfg["data"], cfg["optim"]
    notes: list[str] = []
    rows = _table(rows)   # whole columns: no Python object per video
    counts = Counter(rows.counts("split"))
    have = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no videos at all"
    split = d["train_split"]
    train_rows = rows.select(rows.mask("split", split))
    if not len(train_rows):
        raise UserError(f"data.train_split = {split!r}: {root} has no videos in split "
                        f"{split!r} (it has: {have}); set --set data.train_split=NAME")
    every = cfg["train"]["val_every"]
    val_rows = rows.select(rows.mask("split", d["val_split"]))
    if every and not len(val_rows):
        others = [k for k in sorted(counts) if k != split]
        raise UserError(
            f"data.val_split = {d['val_split']!r}: {root} has no videos in split "
            f"{d['val_split']!r} (it has: {have}), and training validates every {every} "
            f"epoch{'s' if every > 1 else ''} and at the end; set --set data.val_split="
            f"{others[0] if others else 'NAME'}, or --set train.val_every=0 to train without "
            "validation")
    if cfg["precision"]["amp"] == "fp16" and device_type != "cuda":
        raise UserError("precision.amp = 'fp16' needs a CUDA device; use 'bf16' or 'off' on CPU")

    # Labels and classes: the classifier has one output per line of classes.txt.
    for checked in (train_rows, val_rows) if every else (train_rows,):
        labels = checked.column("label_index")
        bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
        if bad.size:
            r = checked[int(bad[0])]
            raise UserError(f"{root / 'index.csv'}: video {r['id']!r} has label_index "
                            f"{r['label_index']}, outside the {len(classes)} classes of "
                            f"classes.txt; prepare the dataset again")
    trained = set(np.unique(train_rows.column("label_index")).tolist())
    empty = [c for i, c in enumerate(classes) if i not in trained]
    if empty and not d["allow_empty_classes"]:
        from vcorr.pipelines.data.inspect import class_checks

        typo = [line for line in class_checks(rows, classes, split)
                if line.startswith("close spellings")]
        raise UserError(f"{root}: {len(empty)} of {len(classes)} classes have no video in split "
                        f"{split!r} ({', '.join(repr(c) for c in empty[:5])}"
                        f"{', ...' if len(empty) > 5 else ''}), so the model cannot learn them"
                        + (f"; {typo[0]}" if typo else "")
                        + "; fix the annotations and prepare again, or set "
                        "--set data.allow_empty_classes=true")
    args = cfg["model"]["args"]
    if "num_classes" in args and args["num_classes"] != len(classes):
        raise UserError(f"model.args.num_classes = {args['num_classes']}: the dataset has "
                        f"{len(classes)} classes ({root / 'classes.txt'}); leave it out, the "
                        "classifier takes the dataset's")

    # Batches: every phase needs at least one full step per epoch on every process.
    acc = o["accumulate"]
    per_rank = -(-len(train_rows) // world_size)
    for i, p in enumerate(plan):
        key = (f"phases.{i}.batch_size" if cfg["phases"] and "batch_size" in cfg["phases"][i]
               else "optim.batch_size")
        b = p["batch_size"]
        if b % (acc * world_size):
            raise UserError(f"{key} = {b} is not divisible by optim.accumulate ({acc}) x "
                            f"{world_size} processes; set --set {key}=N with N a multiple of "
                            f"{acc * world_size}")
        micro = b // (acc * world_size)
        if per_rank // (micro * acc) == 0:
            fits = (per_rank // acc) * acc * world_size
            fix = (f"set --set {key}={fits} or less" if fits else
                   f"lower optim.accumulate ({acc}; each of the {world_size} processes gets "
                   f"{per_rank} videos)")
            raise UserError(f"{key} = {b} clips per step is more than the {len(train_rows)} "
                            f"training videos of {root} (split {split!r}); {fix}")

    # Clip length: shorter videos loop or repeat frames (data.short_video; samplers.py).
    for frames, interval in sorted({(p["frames"], p["interval"]) for p in plan}):
        span = (frames - 1) * interval + 1 if d["sampler"] == "dense" else frames
        short = int((train_rows.column("num_frames") < span).sum())
        if short:
            clip = (f"{frames} frames {interval} apart" if interval > 1 and
                    d["sampler"] == "dense" else f"{frames} frames")
            how = ("are stretched over it, each frame repeated (data.short_video = \"repeat\")"
                   if d["sampler"] == "dense" and d["short_video"] == "repeat" else
                   "loop (frame i of an n-frame video is read as frame i mod n; "
                   "data.short_video = \"repeat\" repeats frames instead)")
            notes.append(f"{short} of {len(train_rows)} training videos have fewer than the "
                         f"{span} frames a clip of {clip} covers; their clips {how}")

    # Frame size: stored short side against the training resize and crop.
    stored = np.minimum(train_rows.column("height"), train_rows.column("width"))
    lo, hi = int(stored.min()), int(stored.max())
    size = f"{lo} px" if lo == hi else f"{lo}-{hi} px"
    train_ss = _short_side(d["short_side"])
    if train_ss is None and not d["random_resized"] and lo < d["crop"]:
        raise UserError(f"data.crop = {d['crop']} is larger than the stored frames (short side "
                        f"{size}) and data.short_side = 0 keeps them as stored, so crops would "
                        f"be padded with zeros; set --set data.short_side=[{d['crop']}, "
                        f"{d['crop']}] or a smaller data.crop")
    if train_ss is not None:
        want_lo = train_ss if isinstance(train_ss, int) else min(train_ss)
        want_hi = train_ss if isinstance(train_ss, int) else max(train_ss)
        if lo < want_lo:
            notes.append(f"frames are stored with a short side of {size} and training resizes "
                         f"it to {want_lo if want_lo == want_hi else f'{want_lo}-{want_hi}'} "
                         f"px, so they are upscaled; prepare with --short-side {want_hi} (or "
                         "more) to train on real pixels")
    if every:
        test_ss = _short_side(d["test_short_side"])
        vlo = int(np.minimum(val_rows.column("height"), val_rows.column("width")).min())
        if test_ss is None and vlo < d["crop"]:
            raise UserError(f"data.crop = {d['crop']} is larger than the stored validation "
                            f"frames (short side {vlo} px) and data.test_short_side = 0 keeps "
                            "them as stored; set --set data.test_short_side="
                            f"{d['crop']} or a smaller data.crop")

    cap = worker_cap()
    if d["workers"] > cap:
        notes.append(f"data.workers = {d['workers']} capped at {cap}, the CPU cores available "
                     "to this process")
    directional = [c for c in classes
                   if {"left", "right", "clockwise", "counterclockwise"} & set(
                       c.lower().replace("_", " ").replace("-", " ").split())]
    if d["flip"] == "on" and directional:
        notes.append(f"data.flip = \"on\" mirrors clips, but {len(directional)} classes name a "
                     f"direction ({', '.join(repr(c) for c in directional[:3])}"
                     f"{', ...' if len(directional) > 3 else ''}): a mirrored 'left' is a "
                     "'right'; use data.flip = \"off\", or \"swap\" with data.swap_map")
    return notes
