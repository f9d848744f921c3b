"""``vcorr train``: the training loop behind the command.

One function, :func:`train`, runs a config (see :mod:`vcorr.pipelines.train.config`) on one CPU/GPU or
as one rank of a torchrun job (DistributedDataParallel), through its phases (clip length, epochs,
frozen BN, lr), validating every ``train.val_every`` epochs and writing ``RUN_DIR/last.pt``,
``best.pt``, ``metrics.jsonl``, ``config.toml`` and ``summary.json``.

Exact resume: clips depend only on (seed, epoch, index) (see :class:`VideoClipDataset`), the
sample order only on (seed, epoch) (:class:`EpochSampler`), and a checkpoint holds the model,
optimiser, scaler, torch RNG states and the position (phase, epoch, step within the epoch), so
a resumed run repeats the uninterrupted one step for step. The DataLoader gets its own
generator so that starting an epoch never draws from the global RNG that dropout uses.

Interrupts (:mod:`vcorr.pipelines.train.interrupts`): SIGINT and SIGTERM at any moment leave a
``last.pt`` equal to the state after the last completed step, buffers included: a step's
forward/backward is undone (BN statistics restored) when it is cut, and the optimiser step
with its bookkeeping, the end of an epoch and checkpoint writes finish before the run stops.
``metrics.jsonl`` is cut back on resume to the records the checkpoint had seen.

Before the first step (:mod:`vcorr.pipelines.train.preflight`): the output-folder rule (a run is
never trained over without ``overwrite``), the resume rules (only keys that do not change the
experiment may change, on the same training data), and the config checked against the data.
A start that fails leaves no run folder behind.
"""
from __future__ import annotations

import contextlib
import inspect
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vcorr import models
from vcorr.models.ops.precision import float32_convs_on_cpu
from vcorr.pipelines.data.dataset import VideoClipDataset
from vcorr.pipelines.data.inspect import read_classes, read_index
from vcorr.pipelines.data.samplers import make_sampler
from vcorr.pipelines.data.transforms import test_transform, train_transform
from vcorr.pipelines.errors import UserError
from vcorr.pipelines import progress as plain_progress
from vcorr.pipelines.fileio import write_atomic
from vcorr.pipelines.train.checkpoint import load_checkpoint, load_weights, save_checkpoint
from vcorr.pipelines.train.config import phases as config_phases
from vcorr.pipelines.train.config import to_toml, with_defaults
from vcorr.pipelines.train.distributed import (DistEnv, EpochSampler, all_reduce_sum, barrier,
                                               cleanup_distributed, setup_distributed)
from vcorr.pipelines.train import preflight as pf
from vcorr.pipelines.train.interrupts import (Interrupted, SignalGuard, fault_point, held,
                                               ignore_stop_signals)
from vcorr.pipelines.train.monitor import TrainingMonitor, peak_memory_mib


class NonFiniteLoss(UserError):
    """The loss became NaN or inf: the run stops, the last good checkpoint is kept."""


class NonFiniteGradient(NonFiniteLoss):
    """``train.max_nonfinite_steps`` steps in a row had a NaN/inf gradient (each was skipped):
    the run stops, the last good checkpoint is kept."""


class NonFiniteCheckpoint(UserError):
    """A checkpoint about to be written holds a NaN/inf tensor: it is not written."""


@dataclass
class Position:
    """Where training stands: the next (phase, epoch within it, step within the epoch) to run."""

    phase: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass
class RunState:
    position: Position = field(default_factory=Position)
    # RNG states right after the last completed optimiser step: what a checkpoint saves, so
    # that an interrupt in the middle of a step (dropout already drawn) still resumes exactly.
    rng: dict[str, Any] = field(default_factory=dict)
    best_top1: float = -1.0
    # best.pt's validation loss: the tie-break between epochs of equal top-1
    best_loss: float = math.inf
    last_val: dict[str, float] = field(default_factory=dict)
    # {"global_step", "changes": {key: [old, new]}} of every resume that changed safe keys
    config_changes: list[dict[str, Any]] = field(default_factory=list)
    guard: SignalGuard = field(default_factory=SignalGuard)
    # loss sum, correct, clips, skipped steps (non-finite gradient) since the last train
    # record; and loss sum, correct, clips over the epoch
    window: torch.Tensor = field(default_factory=lambda: torch.zeros(4, dtype=torch.float64))
    epoch_totals: torch.Tensor = field(
        default_factory=lambda: torch.zeros(3, dtype=torch.float64))
    # Wall time of the run: seconds of earlier calls (the checkpoint's) + this call's.
    seconds_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    # BNs held on their running statistics in training (train.init_bn = "hold" after --init)
    hold_bn: list[str] = field(default_factory=list)
    # Steps skipped for a non-finite gradient: in all, and in a row now, with the first step
    # of the current streak and its first parameter with a NaN/inf gradient
    skipped_steps: int = 0
    nonfinite_streak: int = 0
    nonfinite_first: list[Any] = field(default_factory=list)  # [global step, parameter]
    # The class pairs a mirror swaps ([a, b] names): checkpoints carry them for test views.
    swap_pairs: list[list[str]] = field(default_factory=list)
    # Phases appended by `--resume --extend N`, in order (each a full phase dict)
    extensions: list[dict[str, Any]] = field(default_factory=list)
    # Parameters an --init did not load (new classifier, identity plug-ins); None: no --init
    new_params: list[str] | None = None
    # BNs inside train.freeze's modules (eval mode in training)
    frozen_bn: list[str] = field(default_factory=list)
    # data.class_balance = "loss": the cross-entropy's class weights (on the device)
    loss_weight: torch.Tensor | None = None

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.started


# --- building blocks ---------------------------------------------------------------------------

def _short_side(value: Any) -> Any:
    if isinstance(value, list):
        return None if not value or value == [0] else tuple(value)
    return None if not value else int(value)


def build_dataset(cfg: dict, frames: int, *, train: bool,
                  interval: int | None = None) -> VideoClipDataset:
    """The training (random clip, augmented) or validation (centre clip and crop) dataset;
    ``interval``: the phase's sampling interval (default ``data.interval``)."""
    d = cfg["data"]
    mean = None if not d["normalize"] else tuple(d["mean"])
    std = tuple(d["std"])
    sampler = make_sampler(d["sampler"], frames, interval or d["interval"], d["short_video"])
    if train:
        tf = train_transform(d["crop"], _short_side(d["short_side"]), d["random_resized"],
                             color_jitter=d["color_jitter"], mean=mean, std=std)
        return VideoClipDataset(d["root"], d["train_split"], sampler, tf, train=True,
                                flip=d["flip"], seed=cfg["seed"], swap_spec=d["swap_map"])
    tf = test_transform(d["crop"], _short_side(d["test_short_side"]), mean=mean, std=std)
    return VideoClipDataset(d["root"], d["val_split"], sampler, tf, train=False, num_clips=1,
                            seed=cfg["seed"])


def build_model(cfg: dict, num_classes: int, frames: int) -> nn.Module:
    """The registered model with the config's overrides and the dataset's class count. Models
    that take ``num_frames`` (TRN heads) get the first phase's clip length unless set."""
    name, args = cfg["model"]["name"], dict(cfg["model"]["args"])
    try:
        entry = models.get_model_entry(name)
    except KeyError as exc:
        raise UserError(str(exc)) from None
    if "num_frames" in inspect.signature(entry.builder).parameters and "num_frames" not in args:
        args["num_frames"] = frames
    try:
        return models.create_model(name, num_classes=num_classes, **args)
    except TypeError as exc:
        raise UserError(f"model.args: {exc}") from None


def model_from_checkpoint(path: str | Path, model_args: dict[str, Any] | None = None
                          ) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of a checkpoint, built as training built it (the config's model with
    the checkpoint's classes and first-phase clip length) with its weights, and the checkpoint.

    ``model_args`` override the registered builder's arguments (and the config's model.args)
    for testing, e.g. ``{"k": 4}`` for a CPNet trained with k = 8 (CPNet Table 3(b) tests with
    another k; the CP module has no k-dependent weight).

    Raises:
        UserError: the checkpoint lacks a part, or ``model_args`` change the model's weights
            (names or shapes differ from the checkpoint's): those cannot change after training.
    """
    ckpt = load_checkpoint(path)
    for key in ("model", "config", "classes"):
        if key not in ckpt:
            raise UserError(f"{path}: checkpoint has no {key!r}")
    cfg = ckpt["config"] = with_defaults(ckpt["config"])
    build_cfg = cfg
    if model_args:
        build_cfg = {**cfg, "model": {**cfg["model"],
                                      "args": {**cfg["model"]["args"], **model_args}}}
    model = build_model(build_cfg, len(ckpt["classes"]), config_phases(cfg)[0]["frames"])
    if model_args:
        have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        want = {k: tuple(v.shape) for k, v in ckpt["model"].items()}
        if have != want:
            diff = sorted(set(have) ^ set(want)) or sorted(k for k in want if have[k] != want[k])
            given = ", ".join(f"{k}={v!r}" for k, v in model_args.items())
            raise UserError(f"{path}: --model-arg {given} changes the model's weights "
                            f"({len(diff)} tensor(s) differ, e.g. {diff[0]}); only arguments "
                            f"that keep every trained weight can change at test time")
    model.load_state_dict(ckpt["model"])
    return model, ckpt


def lr_at(cfg: dict, phase: dict, epoch: float) -> float:
    """The learning rate at (fractional) ``epoch`` of ``phase``: linear warmup, then cosine
    decay to 0 over the phase, step decay at ``milestones``, or constant."""
    o = cfg["optim"]
    base = phase["lr"]
    if o["schedule"] == "cosine":
        lr = base * 0.5 * (1 + math.cos(math.pi * min(epoch, phase["epochs"]) / phase["epochs"]))
    elif o["schedule"] == "step":
        lr = base * o["gamma"] ** sum(epoch >= m for m in o["milestones"])
    else:
        lr = base
    if o["warmup_epochs"] > 0 and epoch < o["warmup_epochs"]:
        lr *= epoch / o["warmup_epochs"]
    return lr


def build_optimizer(cfg: dict, model: nn.Module,
                    new_params: Sequence[str] | None = None) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov) or AdamW over the parameters that train
    (``requires_grad``); no weight decay on BN and bias parameters. With ``new_params`` (the
    names of parameters an ``--init`` did not load: a new classifier, identity plug-ins) and
    ``optim.pretrained_lr_mult`` != 1, the others get that multiple of the learning rate: each
    group carries ``lr_mult``, which the schedule applies."""
    o = cfg["optim"]
    mult = float(o["pretrained_lr_mult"])
    new = set(new_params or ()) if mult != 1.0 and new_params is not None else None
    groups = []
    for is_new in ((True, False) if new is not None else (True,)):
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if p.requires_grad and (new is None or (name in new) == is_new):
                (no_decay if p.dim() <= 1 else decay).append(p)
        lr_mult = 1.0 if is_new else mult
        # Without a multiplier the two groups are always there (even empty), as checkpoints
        # written before the multiplier existed hold them.
        groups += [{"params": ps, "weight_decay": wd, "lr_mult": lr_mult}
                   for ps, wd in ((decay, o["weight_decay"]), (no_decay, 0.0))
                   if ps or new is None]
    if not any(g["params"] for g in groups):
        raise UserError("nothing to train: every parameter is frozen (train.freeze)")
    if o["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=o["lr"])
    return torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"], nesterov=o["nesterov"])


def set_bn_frozen(model: nn.Module, frozen: bool) -> None:
    """Frozen BN keeps its running statistics (eval mode) while the rest trains."""
    if not frozen:
        return
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def freeze_modules(model: nn.Module, names: Sequence[str]) -> list[str]:
    """Stop training the modules ``names`` (``train.freeze``; a name covers its submodules):
    their parameters get ``requires_grad = False``. Returns the BN modules inside them, which
    training keeps in eval mode (:func:`hold_bns`) so their statistics stay too.

    Raises:
        UserError: a name that is not a module of the model (the message lists the top-level
        ones).
    """
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules or not n]
    if unknown:
        top = [n for n, _ in model.named_children()]
        raise UserError(f"train.freeze: {', '.join(map(repr, unknown))} is not a module of the "
                        f"model; its top-level modules are {', '.join(top)}")
    bns = []
    for name in names:
        for sub, m in modules[name].named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                bns.append(f"{name}.{sub}" if sub else name)
        for p in modules[name].parameters():
            p.requires_grad_(False)
    return bns


@dataclass
class ClassBalance:
    """``data.class_balance`` made concrete for one training set: ``loss_weight`` (K,) for
    the cross-entropy, or ``sample_weights`` (N,) for the epoch sampler, or neither."""

    loss_weight: torch.Tensor | None = None
    sample_weights: np.ndarray | None = None


def class_balance(mode: str, labels: Sequence[int], num_classes: int,
                  device: torch.device) -> ClassBalance:
    """``"loss"``: class c weighs n / (K' n_c) in the loss (K' the classes with videos, so a
    balanced set gets weights 1; a class without videos weighs 0); ``"sampler"``: video i is
    drawn with probability proportional to 1 / n_(label i), every class equally often in
    expectation; ``"off"``: neither. Shape: labels (N,) -> loss_weight (K,), sample_weights
    (N,)."""
    if mode == "off":
        return ClassBalance()
    y = np.asarray(labels, np.int64)
    counts = np.bincount(y, minlength=num_classes).astype(np.float64)
    if mode == "sampler":
        return ClassBalance(sample_weights=1.0 / counts[y])
    present = counts > 0
    w = np.zeros(num_classes)
    w[present] = len(y) / (present.sum() * counts[present])
    return ClassBalance(loss_weight=torch.tensor(w, dtype=torch.float32, device=device))


def hold_bns(model: nn.Module, names: list[str]) -> None:
    """Put the BNs ``names`` (``LoadReport.hold_bn``) in eval mode: they normalise with their
    running statistics (neutral after ``--init``) and do not update them, while their gamma and
    beta train. Without it the first training step is not the 2D network's: a neutral BN is the
    identity only in eval mode. Raises ValueError for a name that is not a BN of ``model``."""
    for name in names:
        m = model.get_submodule(name)
        if not isinstance(m, nn.modules.batchnorm._BatchNorm):
            raise ValueError(f"{name} is not a BatchNorm of the model")
        m.eval()


def _base_lr(optimizer: torch.optim.Optimizer) -> float:
    """The schedule's learning rate (that of the new parameters), whatever ``lr_mult``."""
    g = optimizer.param_groups[0]
    return g["lr"] / g.get("lr_mult", 1.0)


@contextlib.contextmanager
def _autocast(cfg: dict, device: torch.device) -> Iterator[None]:
    """``precision.amp``'s autocast. On a CPU the convolutions inside it run in float32
    (:func:`vcorr.models.ops.precision.float32_convs_on_cpu`, which every VideoResNet's forward
    also enters): oneDNN's bf16 convolution backward gives inf/NaN weight gradients for some
    small maps (issues 21 and 24), so the rule holds for any model the trainer runs. With
    ``train.compile`` the compiled model's own forward applies it (nothing is traced around
    the compiled call)."""
    amp = cfg["precision"]["amp"]
    if amp == "off":
        yield
        return
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    with torch.autocast(device_type=device.type, dtype=dtype):
        if device.type == "cpu" and not cfg["train"]["compile"]:
            with float32_convs_on_cpu():
                yield
        else:
            yield


def _rng_state(device: torch.device) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _micro_batch(cfg: dict, phase: dict, env: DistEnv) -> int:
    o = cfg["optim"]
    per_step = phase["batch_size"]
    if per_step % (o["accumulate"] * env.world_size):
        raise UserError(f"batch size {per_step} is not divisible by optim.accumulate "
                        f"({o['accumulate']}) x {env.world_size} processes")
    return per_step // o["accumulate"] // env.world_size


def _loader(ds: VideoClipDataset, sampler: torch.utils.data.Sampler, batch: int, workers: int,
            *, drop_last: bool) -> torch.utils.data.DataLoader:
    # More workers than cores only compete for them (preflight notes the cap once); a clip
    # depends only on (seed, epoch, index), so the number of workers never changes results.
    workers = min(workers, pf.worker_cap())
    return torch.utils.data.DataLoader(
        ds, batch_size=batch, sampler=sampler, num_workers=workers, drop_last=drop_last,
        pin_memory=torch.cuda.is_available(), persistent_workers=False,
        # Its own generator: creating an iterator must not advance the global RNG.
        generator=torch.Generator().manual_seed(0),
        worker_init_fn=ignore_stop_signals if workers else None,
        prefetch_factor=4 if workers else None)


@torch.no_grad()
def validate(model: nn.Module, cfg: dict, frames: int, env: DistEnv,
             batch: int, interval: int | None = None) -> dict[str, float]:
    """Top-1/top-5 and loss on the validation split (one centre clip, centre crop per video),
    summed over ranks (each rank takes every world_size-th video, no padding). ``top5`` is
    None for fewer than 6 classes, where it would always be 1."""
    ds = build_dataset(cfg, frames, train=False, interval=interval)
    indices = list(range(env.rank, len(ds), env.world_size))
    loader = _loader(ds, indices, batch, cfg["data"]["workers"], drop_last=False)
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # loss sum, top-1, top-5, count
    try:
        with _batches(loader) as it:  # the workers end with it, also on a signal
            for x, y in it:
                x, y = x.to(env.device, non_blocking=True), y.to(env.device)
                with _autocast(cfg, env.device):
                    out = model(x)
                out = out.float()
                totals[0] += F.cross_entropy(out, y, reduction="sum").item()
                top = out.topk(min(5, out.shape[1]), dim=1).indices
                totals[1] += (top[:, 0] == y).sum().item()
                totals[2] += (top == y[:, None]).any(dim=1).sum().item()
                totals[3] += len(y)
                fault_point("validation")
    finally:
        model.train(was_training)
    totals = all_reduce_sum(totals.to(env.device if env.device.type == "cuda" else "cpu")).cpu()
    n = max(totals[3].item(), 1.0)
    return {"loss": totals[0].item() / n, "top1": totals[1].item() / n,
            "top5": totals[2].item() / n if len(ds.classes) > 5 else None,
            "count": int(totals[3].item())}


# --- progress and metrics ----------------------------------------------------------------------

class _Metrics:
    """``metrics.jsonl`` (rank 0): one JSON record per logged step and per validation.

    ``records`` counts the records in the file; a checkpoint stores it, and a resumed run
    keeps exactly that many (``keep_records``), dropping what the interrupted run wrote after
    its checkpoint. Checkpoints from before that count keep the records up to their step."""

    def __init__(self, path: Path, enabled: bool, keep_until_step: int | None,
                 keep_records: int | None = None) -> None:
        self.path, self.enabled, self.records = path, enabled, 0
        self.on_write: Any = None  # called with each record written (the run's monitor)
        if enabled and keep_until_step is not None and path.is_file():
            lines = [line for line in path.read_text(encoding="utf-8").splitlines()
                     if line.strip()]
            if keep_records is not None:
                kept = lines[:keep_records]
            else:
                kept = [line for line in lines if _record_step(line) <= keep_until_step]
            write_atomic(path, "".join(k + "\n" for k in kept))
            self.records = len(kept)
        elif enabled and keep_until_step is None:
            write_atomic(path, "")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            self.records += 1
            if self.on_write is not None:
                self.on_write(record)


def _record_step(line: str) -> float:
    """The step of a metrics.jsonl line; a line a killed process left half-written is past
    every checkpoint."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf


class _PlainProgress:
    """Progress as plain lines, for output that is not a terminal (a log file, a pipe): one
    line per task every :data:`vcorr.pipelines.progress.PLAIN_SECONDS` and when the task completes
    (the part of rich.Progress's interface the loop uses)."""

    def __init__(self) -> None:
        self.tasks: dict[int, dict[str, Any]] = {}
        self._next = 0

    def __enter__(self) -> "_PlainProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, description: str, total: int, completed: int = 0,
                 **fields: Any) -> int:
        task, self._next = self._next, self._next + 1
        self.tasks[task] = {"description": description, "total": total, "completed": completed,
                            "fields": fields, "last": time.monotonic()}
        return task

    def remove_task(self, task: int) -> None:
        self.tasks.pop(task, None)

    def update(self, task: int, advance: int = 0, **fields: Any) -> None:
        t = self.tasks[task]
        t["completed"] += advance
        t["fields"].update(fields)
        now = time.monotonic()
        if t["completed"] >= t["total"] or now - t["last"] >= plain_progress.PLAIN_SECONDS:
            t["last"] = now
            stats = t["fields"].get("stats", "")
            print(f"{t['description']}: step {t['completed']}/{t['total']}"
                  f"{', ' + stats if stats else ''}", flush=True)


def _progress(enabled: bool):
    if not enabled:
        return contextlib.nullcontext(None)
    if not sys.stdout.isatty():
        return _PlainProgress()
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                    TimeRemainingColumn(), transient=False)


# --- the loop ----------------------------------------------------------------------------------

def train(cfg: dict, out_dir: str | Path, *, resume: bool = False, init: str | Path | None = None,
          init_partial: bool = False, progress: bool = True, device: str | None = None,
          stop_after_steps: int | None = None, overwrite: bool = False,
          extend: int | None = None, extend_lr: float | None = None) -> dict[str, Any]:
    """Run the config ``cfg`` into ``out_dir``; returns the summary (also ``summary.json``).

    ``resume`` continues from ``out_dir/last.pt`` (keys of
    :data:`vcorr.pipelines.train.preflight.SAFE_ON_RESUME` may differ from the run's config; they
    are recorded). Without it, a folder that holds a run is refused unless ``overwrite``,
    which moves that run aside to ``out_dir.old-N``. ``init`` loads initial weights (a vcorr
    checkpoint, a state dict, torchvision 2D ResNet weights to inflate, or a torchvision /
    PyTorchVideo Kinetics checkpoint; :func:`vcorr.pipelines.weights.load_weights`), refusing a
    partial load unless ``init_partial``; its report is printed and saved as
    ``out_dir/init_report.json``. ``stop_after_steps`` stops like Ctrl-C after that many
    optimiser steps of this call (for tests and time-boxed jobs). ``extend`` (with ``resume``)
    appends a phase of that many epochs to a finished or stopped run
    (:func:`vcorr.pipelines.train.preflight.extend_phases`; ``extend_lr`` its learning rate),
    recorded in the run.

    Raises:
        UserError: a problem found before the first step (nothing is left in ``out_dir``), or
            a non-finite loss (:class:`NonFiniteLoss`).
        pipelines.train.interrupts.Interrupted: SIGINT or SIGTERM (``last.pt`` holds the
            state after the last completed step).
    """
    env = setup_distributed(device)
    try:
        return _train(cfg, Path(out_dir), env, resume, init, progress, stop_after_steps,
                      init_partial=init_partial, overwrite=overwrite, extend=extend,
                      extend_lr=extend_lr)
    finally:
        cleanup_distributed()


def _train(cfg: dict, out: Path, env: DistEnv, resume: bool, init: str | Path | None,
           progress: bool, stop_after_steps: int | None, *,
           init_partial: bool = False, overwrite: bool = False, extend: int | None = None,
           extend_lr: float | None = None) -> dict[str, Any]:
    """Everything checked before anything is written, then :func:`_run` in a new run folder
    (or the resumed one) with SIGINT/SIGTERM handled."""
    if (extend is not None or extend_lr is not None) and not resume:
        raise UserError("--extend continues a run: give it with --resume and the run's --out")
    if extend_lr is not None and extend is None:
        raise UserError("--extend-lr sets the learning rate of the epochs --extend adds; give "
                        "--extend N too")
    if not resume and init is None:
        # Fine-tuning keys without weights to fine-tune: frozen random layers, a multiplier
        # that applies to nothing. Silent damage; refuse it.
        keys = [k for k, on in (("train.freeze", cfg["train"]["freeze"]),
                                ("optim.pretrained_lr_mult",
                                 cfg["optim"]["pretrained_lr_mult"] != 1.0)) if on]
        if keys:
            raise UserError(f"{' and '.join(keys)} fine-tune weights loaded with --init, and "
                            "none was given: give --init FILE (frozen layers would keep their "
                            "random values), or set them off (train.freeze = [], "
                            "optim.pretrained_lr_mult = 1.0)")
    data_root = Path(cfg["data"]["root"])
    if not cfg["data"]["root"]:
        raise UserError("no training data: give --data (a folder written by `vcorr prepare`) "
                        "or set data.root in the config")
    if not (data_root / "index.csv").is_file():
        raise UserError(f"{data_root}: not a prepared dataset (no index.csv); give --data or "
                        "data.root, a folder written by `vcorr prepare`")
    # The run records the data folder absolute, so that its checkpoints find it from any
    # folder, and what inference needs from it (prepare.json: the stored frame rate, short
    # side and dataset), so that they do not need it at all.
    given = str(cfg["data"]["root"])
    data_root = data_root.resolve()
    cfg = {**cfg, "data": {**cfg["data"], "root": str(data_root)}}
    data_meta = pf.data_meta(data_root, given)
    if env.distributed and cfg["train"]["sync_bn"] and env.device.type != "cuda":
        raise UserError("train.sync_bn needs CUDA devices (SyncBatchNorm has no CPU "
                        "implementation); set train.sync_bn = false to train on CPUs")
    if resume and overwrite:
        raise UserError("--resume continues the run in --out and --overwrite starts a new one "
                        "there; give one of them")
    plan = config_phases(cfg)
    rows, classes = read_index(data_root), read_classes(data_root)
    ckpt, changes, move_old, extended = None, {}, False, None
    if resume:
        if not (out / "last.pt").is_file() and pf.folder_results(out, pf.RUN_PATTERNS):
            raise UserError(f"{out / 'last.pt'}: checkpoint not found: the run in {out} saved "
                            "none, there is nothing to resume; start it again with --overwrite")
        ckpt = load_checkpoint(out / "last.pt")
        # Keys a newer vcorr added (e.g. data.mean/std) take their defaults, not "changed".
        saved = with_defaults(ckpt["config"])
        cfg = pf.with_extensions(cfg, saved, list(ckpt.get("extensions", [])))
        changes = pf.resume_changes(saved, cfg, out / "last.pt")
        if extend is not None:
            cfg, added = pf.extend_phases(cfg, extend, extend_lr)
        plan = config_phases(cfg)
        if extend is not None:
            extended = {"epochs": added["epochs"], "phase": len(plan), "settings": added}
    else:
        move_old = pf.check_new_run(out, overwrite)
    notes = pf.preflight(cfg, plan, rows, classes, data_root, env.world_size, env.device.type)
    fingerprint = pf.data_fingerprint(rows, classes, cfg["data"]["train_split"])
    if ckpt is not None:
        if list(ckpt.get("classes", classes)) != list(classes):
            raise UserError(f"{data_root}: its {len(classes)} classes differ from the run's "
                            f"{len(ckpt['classes'])} ({out / 'last.pt'}); resume on the "
                            "dataset the run was started on")
        pf.check_same_data(ckpt.get("data_fingerprint"), fingerprint, data_root,
                           cfg["data"]["train_split"], out / "last.pt")
    if env.is_main:
        for note in notes:
            print(f"note: {note}", flush=True)
        if changes:
            print("resume with changed settings (they do not change the experiment; recorded "
                  "in the run): " + ", ".join(f"{k} {json.dumps(a)} -> {json.dumps(b)}"
                                              for k, (a, b) in changes.items()), flush=True)
    barrier()  # every rank has checked the folder before rank 0 writes to it
    with SignalGuard() as guard, pf.RunStart(out, move_old=move_old,
                                            enabled=env.is_main and ckpt is None) as start:
        if env.is_main:
            pf.remove_stale_temporaries(out)
        return _run(cfg, out, env, ckpt, init, progress, stop_after_steps, plan, classes,
                    changes, fingerprint, guard, start, init_partial=init_partial,
                    data_meta=data_meta, extended=extended)


def _run(cfg: dict, out: Path, env: DistEnv, ckpt: dict | None, init: str | Path | None,
         progress: bool, stop_after_steps: int | None, plan: list[dict], classes: list[str],
         changes: dict, fingerprint: dict, guard: SignalGuard,
         start: pf.RunStart, init_partial: bool = False,
         data_meta: dict | None = None, extended: dict | None = None) -> dict[str, Any]:
    """The run itself: model, optimiser, the phase/epoch/step loop, checkpoints, summary."""
    data_root = Path(cfg["data"]["root"])
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(out / "config.toml", to_toml(cfg))

    torch.manual_seed(cfg["seed"])
    model = build_model(cfg, len(classes), plan[0]["frames"]).to(env.device)
    state = RunState(guard=guard)
    if init is not None and ckpt is None:
        report = load_weights(model, init, classes=classes, partial=init_partial,
                              model_name=cfg["model"]["name"])
        if cfg["train"]["init_bn"] == "hold":
            state.hold_bn = list(report.hold_bn)
        params = {n for n, _ in model.named_parameters()}
        state.new_params = sorted(params & set(report.new_classifier + report.kept))
        if env.is_main:
            report.render()
            if state.hold_bn:
                print(f"  {len(state.hold_bn)} BNs set neutral by --init stay on their running "
                      "statistics in training (train.init_bn = \"hold\"; exact start)")
            report.save(out / "init_report.json")
    # Before DDP wraps the model: it registers the parameters that need gradients.
    state.frozen_bn = freeze_modules(model, cfg["train"]["freeze"])
    if env.distributed and cfg["train"]["sync_bn"]:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg["train"]["channels_last"]:
        from vcorr.pipelines.runtime import to_channels_last
        to_channels_last(model)
    net: nn.Module = model
    if env.distributed:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[env.local_rank] if env.device.type == "cuda" else None)
    if cfg["train"]["compile"]:   # training steps only; validation and checkpoints use `model`
        from vcorr.pipelines.runtime import compile_model
        net = compile_model(net)
    if ckpt is not None:
        state.new_params = ckpt.get("new_params")
    optimizer = build_optimizer(cfg, model, state.new_params)
    mult = cfg["optim"]["pretrained_lr_mult"]
    if env.is_main and ckpt is None and state.new_params is not None and mult != 1.0:
        new = set(state.new_params)
        trained = [(n in new, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
        n_new = sum(k for is_new, k in trained if is_new)
        n_old = sum(k for is_new, k in trained if not is_new)
        print(f"learning rates: {n_old:,} loaded parameters at lr x {mult}, {n_new:,} new ones "
              f"at lr" + (" (none: every tensor was loaded, the classifier too, so all train "
                          f"at lr x {mult}; the lr logged is the schedule's, before x {mult})"
                          if not n_new else " (the lr logged)"), flush=True)
    amp = cfg["precision"]["amp"]
    if amp == "fp16" and env.device.type != "cuda":
        raise UserError("precision.amp = 'fp16' needs a CUDA device; use 'bf16' or 'off' on CPU")
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")

    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        state.position = Position(**ckpt["position"])
        state.best_top1 = ckpt["best_top1"]
        state.best_loss = float(ckpt.get("best_loss", math.inf))
        state.last_val = dict(ckpt.get("last_val", {}))
        state.config_changes = list(ckpt.get("config_changes", []))
        state.seconds_before = float(ckpt.get("seconds", 0.0))
        state.hold_bn = list(ckpt.get("hold_bn", []))
        nonfinite = ckpt.get("nonfinite", {})
        state.skipped_steps = int(nonfinite.get("skipped", 0))
        state.nonfinite_streak = int(nonfinite.get("streak", 0))
        state.nonfinite_first = list(nonfinite.get("first", []))
        if "train_sums" in ckpt:
            state.window = torch.tensor(ckpt["train_sums"]["window"], dtype=torch.float64)
            state.epoch_totals = torch.tensor(ckpt["train_sums"]["epoch"], dtype=torch.float64)
        if changes:
            state.config_changes.append({"global_step": state.position.global_step,
                                         "changes": changes})
        state.extensions = [dict(e) for e in ckpt.get("extensions", [])]
        if extended is not None:
            state.extensions.append(extended["settings"])
            state.config_changes.append({"global_step": state.position.global_step,
                                         "extended": extended})
        _set_rng_state(ckpt["rng"], env.device)
    state.rng = _rng_state(env.device)
    metrics = _Metrics(out / "metrics.jsonl", env.is_main,
                       state.position.global_step if ckpt is not None else None,
                       ckpt.get("metrics_records") if ckpt is not None else None)
    monitor = TrainingMonitor(out, title=f"{out.name}: {cfg['model']['name']}", plan=plan,
                              enabled=env.is_main, resumed=ckpt is not None)
    metrics.on_write = monitor.record

    def checkpoint(name: str) -> None:
        if not env.is_main:
            return
        weights = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        # Never a checkpoint with NaN/inf (a bad update, a broken resume): the previous file
        # stays the last good state and the run stops on the first tensor that has them.
        bad = _first_nonfinite_tensor(weights)
        if bad is not None:
            raise NonFiniteCheckpoint(
                f"{out / name}: not written, {bad} holds NaN/inf values; the files already "
                f"in {out} are the last good state")
        save_checkpoint(out / name, {
            **weights,
            "scaler": scaler.state_dict() if scaler.is_enabled() else {},
            "scheduler": {"schedule": cfg["optim"]["schedule"],
                          "lr": _base_lr(optimizer)},
            "position": state.position.as_dict(), "best_top1": state.best_top1,
            "best_loss": state.best_loss,
            "last_val": state.last_val, "rng": state.rng or _rng_state(env.device), "config": cfg,
            "model_name": cfg["model"]["name"], "classes": classes,
            "metrics_records": metrics.records, "data_fingerprint": fingerprint,
            "config_changes": state.config_changes,
            "train_sums": {"window": state.window.tolist(), "epoch": state.epoch_totals.tolist()},
            "seconds": state.seconds(), "hold_bn": state.hold_bn,
            "nonfinite": {"skipped": state.skipped_steps, "streak": state.nonfinite_streak,
                          "first": state.nonfinite_first},
            "swap_pairs": state.swap_pairs, "data_meta": data_meta or {},
            "extensions": state.extensions, "new_params": state.new_params,
        })

    steps_run = 0
    stopped = False
    t_start = state.started = time.perf_counter()
    train_stats: dict[str, float] = {}
    start.started()  # from here a failure leaves the run folder (and last.pt on interrupts)
    if extended is not None:
        # The extended schedule is the run's from now on: config.toml holds it already, and
        # last.pt must too, or a plain --resume before the next checkpoint would be refused.
        with guard.deferred():
            checkpoint("last.pt")
        if env.is_main:
            print(f"extended: phase {extended['phase']} of {extended['epochs']} more epochs "
                  f"(lr {extended['settings']['lr']}, {extended['settings']['frames']} frames)",
                  flush=True)
    with _progress(progress and env.is_main) as bar, contextlib.closing(monitor):
        try:
            while state.position.phase < len(plan) and not stopped:
                pos = state.position
                phase = plan[pos.phase]
                micro = _micro_batch(cfg, phase, env)
                ds = build_dataset(cfg, phase["frames"], train=True,
                                   interval=phase["interval"])
                state.swap_pairs = [list(p) for p in ds.swap_pairs]
                balance = class_balance(cfg["data"]["class_balance"], ds.labels(),
                                        len(classes), env.device)
                state.loss_weight = balance.loss_weight
                per_rank = -(-len(ds) // env.world_size)
                steps = per_rank // (micro * cfg["optim"]["accumulate"])
                if cfg["train"]["max_steps_per_epoch"]:
                    steps = min(steps, cfg["train"]["max_steps_per_epoch"])
                if steps == 0:
                    raise UserError(f"{data_root}: {len(ds)} training videos are fewer than one "
                                    f"batch of {phase['batch_size']}")
                epochs_before = sum(p["epochs"] for p in plan[:pos.phase])
                while pos.epoch < phase["epochs"] and not stopped:
                    global_epoch = epochs_before + pos.epoch
                    ds.set_epoch(global_epoch)
                    skip = pos.step_in_epoch * micro * cfg["optim"]["accumulate"]
                    sampler = EpochSampler(len(ds), seed=cfg["seed"], epoch=global_epoch,
                                           rank=env.rank, world_size=env.world_size, skip=skip,
                                           weights=balance.sample_weights)
                    loader = _loader(ds, sampler, micro, cfg["data"]["workers"], drop_last=True)
                    task = None
                    if bar is not None:
                        task = bar.add_task(
                            f"phase {pos.phase + 1}/{len(plan)} epoch {pos.epoch + 1}/"
                            f"{phase['epochs']} ({phase['frames']}f)", total=steps,
                            completed=pos.step_in_epoch, stats="")
                    train_stats = _run_epoch(net, model, optimizer, scaler, cfg, phase, env,
                                             loader, steps, state, metrics, bar, task,
                                             stop_after_steps, steps_run, epochs_before)
                    steps_run += train_stats.pop("steps_run")
                    if train_stats.pop("stopped"):
                        stopped = True
                        with guard.deferred():
                            checkpoint("last.pt")
                        break
                    # The epoch counter moves only after validation: a run stopped in between
                    # resumes at (epoch, last step) and validates that epoch first.
                    every = cfg["train"]["val_every"]
                    done = pos.epoch + 1
                    last_epoch = done == phase["epochs"] and pos.phase == len(plan) - 1
                    val = None
                    if every and (done % every == 0 or last_epoch):
                        # Validation changes nothing a checkpoint holds: a signal stops it at
                        # once, and the resumed run validates this epoch again.
                        val = validate(model, cfg, phase["frames"], env,
                                       cfg["train"]["val_batch_size"] or micro,
                                       interval=phase["interval"])
                    # The epoch's records, best.pt, the position and last.pt change together.
                    with guard.deferred():
                        if val is not None:
                            state.last_val = val
                            metrics.write({"epoch": global_epoch + 1, "step": pos.global_step,
                                           "split": "val", "loss": val["loss"],
                                           "top1": val["top1"], "top5": val["top5"],
                                           "lr": _base_lr(optimizer),
                                           "count": val["count"],
                                           "seconds": state.seconds()})
                            if env.is_main:
                                _print_epoch(global_epoch + 1, train_stats, val)
                            # best.pt: the highest top-1; of equal ones, the lowest loss
                            if (val["top1"], -val["loss"]) > (state.best_top1,
                                                              -state.best_loss):
                                state.best_top1, state.best_loss = val["top1"], val["loss"]
                                checkpoint("best.pt")
                        elif env.is_main and progress:
                            _print_epoch(global_epoch + 1, train_stats, None)
                        pos.epoch += 1
                        pos.step_in_epoch = 0
                        checkpoint("last.pt")
                    if bar is not None:
                        # The live area holds the current epoch's bar only; finished epochs
                        # are their summary lines above it, so it fits any terminal.
                        bar.remove_task(task)
                if not stopped:
                    pos.phase += 1
                    pos.epoch = 0
        except KeyboardInterrupt:
            # The state is the last completed step's (an unfinished step was undone).
            with guard.deferred():
                checkpoint("last.pt")
            raise
        except Exception as exc:
            if guard.received is None or isinstance(exc, UserError):
                raise
            # Failed while stopping on a signal (e.g. shutting down a loader whose worker it
            # ended): stopped by the signal. No checkpoint: the state may be half-way through
            # its bookkeeping; last.pt is the last one written, from which --resume is exact.
            raise Interrupted(guard.received) from exc
    seconds = time.perf_counter() - t_start
    summary = {"run_dir": str(out), "model": cfg["model"]["name"],
               "finished": state.position.phase >= len(plan), "position": state.position.as_dict(),
               "best_val_top1": state.best_top1 if state.best_top1 >= 0 else None,
               "last_val": state.last_val, "last_train": train_stats, "seconds": seconds,
               "run_seconds": state.seconds(), "skipped_steps": state.skipped_steps,
               "config_changes": state.config_changes}
    if env.is_main:
        write_atomic(out / "summary.json", json.dumps(summary, indent=2))
    summary["model_object"] = model
    return summary


def _run_epoch(net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, cfg: dict, phase: dict, env: DistEnv,
               loader: torch.utils.data.DataLoader, steps: int, state: RunState,
               metrics: _Metrics, bar: Any, task: Any, stop_after_steps: int | None,
               steps_before: int, epochs_before: int) -> dict[str, Any]:
    """Optimiser steps from ``state.position.step_in_epoch`` to ``steps``; ``epochs_before``
    is the number of epochs of the earlier phases (for global epoch numbers). The loader's
    worker processes are shut down when it returns or raises (an interrupt included)."""
    with _batches(loader) as it:
        return _run_steps(net, model, optimizer, scaler, cfg, phase, env, it, steps, state,
                          metrics, bar, task, stop_after_steps, steps_before, epochs_before)


@contextlib.contextmanager
def _batches(loader: torch.utils.data.DataLoader) -> Iterator[Iterator]:
    """The loader's iterator, its workers forked while stop signals wait
    (:func:`vcorr.pipelines.train.interrupts.held`) and shut down (:func:`_shut_down`) when
    the block ends, however it ends."""
    it = None
    try:
        with held():
            it = iter(loader)
        yield it
    finally:
        _shut_down(it)
        del it


def _shut_down(it: Any) -> None:
    """End a DataLoader iterator's worker processes now, not whenever the iterator is
    collected: on an interrupt the exception's traceback keeps the frame that holds it alive
    until the process exits, and Python's exit handler then waits for the workers. Safe to
    call twice, on a single-process iterator, and on workers that are already gone."""
    shutdown = getattr(it, "_shutdown_workers", None)  # what the iterator's __del__ calls
    if shutdown is not None:
        shutdown()


def _run_steps(net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, cfg: dict, phase: dict, env: DistEnv,
               it: Iterator, steps: int, state: RunState, metrics: _Metrics, bar: Any,
               task: Any, stop_after_steps: int | None, steps_before: int,
               epochs_before: int) -> dict[str, Any]:
    o = cfg["optim"]
    pos = state.position
    acc = o["accumulate"]
    limit = cfg["train"]["max_nonfinite_steps"]
    net.train()
    set_bn_frozen(net, phase["freeze_bn"])
    hold_bns(model, state.hold_bn + state.frozen_bn)
    # Sums since the last metrics record and over the epoch: part of the run's state (a
    # checkpoint carries them), so that records and epoch lines after a resume are exact.
    window, epoch_totals = state.window, state.epoch_totals
    if pos.step_in_epoch == 0:
        epoch_totals.zero_()
    t_window, wait_window, steps_run = time.perf_counter(), 0.0, 0
    while pos.step_in_epoch < steps:
        lr = lr_at(cfg, phase, pos.epoch + pos.step_in_epoch / steps)
        # loss sum, correct, clips, non-finite losses, ranks with a non-finite gradient
        step_stats = torch.zeros(5, dtype=torch.float64)
        saved: list[torch.Tensor] | None = None
        bad_param: str | None = None
        try:
            # Forward changes the BN running statistics: kept, to be put back if this step
            # does not finish (an interrupt, a non-finite loss, a failing batch) or is skipped.
            saved = _copy_buffers(model)
            for j in range(acc):
                fault_point("data")
                t0 = time.perf_counter()
                x, y = next(it)
                wait_window += time.perf_counter() - t0
                x, y = x.to(env.device, non_blocking=True), y.to(env.device, non_blocking=True)
                sync = (net.no_sync() if env.distributed and j < acc - 1
                        else contextlib.nullcontext())
                with sync:
                    with _autocast(cfg, env.device):
                        out = net(x)
                        fault_point("forward")
                        loss = F.cross_entropy(out.float(), y, weight=state.loss_weight,
                                               label_smoothing=o["label_smoothing"])
                    scaler.scale(loss / acc).backward()
                fault_point("backward")
                value = loss.item()
                finite = math.isfinite(value)
                step_stats[:4] += torch.tensor([value * len(y) if finite else 0.0,
                                                (out.argmax(1) == y).sum().item(), len(y),
                                                0.0 if finite else 1.0], dtype=torch.float64)
            # The gradients the optimiser would use: unscaled (fp16; GradScaler records its
            # overflow check here and the step below uses it), then checked. Every rank
            # takes the same decision (the flag is summed with the loss sums).
            if scaler.is_enabled():
                scaler.unscale_(optimizer)
            bad_param = _first_nonfinite_grad(model)
            step_stats[4] = 0.0 if bad_param is None else 1.0
            step_stats = all_reduce_sum(step_stats.to(env.device if env.device.type == "cuda"
                                                      else "cpu")).cpu()
            if step_stats[3] > 0:
                raise NonFiniteLoss(f"loss is not finite at step {pos.global_step + 1} (phase "
                                    f"{pos.phase + 1}, epoch {epochs_before + pos.epoch + 1}); "
                                    "stopped, the last checkpoint is the last good one. Lower "
                                    "optim.lr or set optim.clip_grad")
            skip = bool(step_stats[4] > 0)
            if skip:
                bad_param = bad_param or "(on another rank)"
                # fp16: an overflow while GradScaler can still lower its scale is its usual
                # business; only a streak at a scale of 1 or less counts towards the limit.
                counts = not scaler.is_enabled() or scaler.get_scale() <= 1.0
                streak = state.nonfinite_streak + counts
                first = state.nonfinite_first if state.nonfinite_streak else [
                    pos.global_step + 1, bad_param]
                if limit and streak >= limit:
                    amp = cfg["precision"]["amp"]
                    hint = ("train with precision.amp = \"off\" or lower optim.lr"
                            if amp != "off" else "lower optim.lr")
                    raise NonFiniteGradient(
                        f"gradient not finite for {streak} steps in a row (train."
                        f"max_nonfinite_steps = {limit}) from step {first[0]} (phase "
                        f"{pos.phase + 1}, epoch {epochs_before + pos.epoch + 1}), first in "
                        f"parameter {first[1]}; stopped, no update used it and the last "
                        f"checkpoint is the last good one. Look for NaN/inf in that layer, "
                        f"or {hint}")
        except BaseException as exc:
            if saved is not None:
                _restore_buffers(model, saved)
            optimizer.zero_grad(set_to_none=True)
            if state.guard.received is not None and not isinstance(
                    exc, (KeyboardInterrupt, UserError)):
                # A stop signal arrived and this failed meanwhile (a loader worker that the
                # signal ended, seen as "exited unexpectedly"): the signal's stop, not a crash.
                raise Interrupted(state.guard.received) from exc
            raise
        # The step itself and its bookkeeping happen together or not at all: a signal that
        # arrives in here takes effect after the metrics record (see interrupts.py).
        with state.guard.deferred():
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            if skip:
                # No update: the weights, optimiser state and BN statistics stay those of the
                # last applied step. The step still counts (position, lr schedule, RNG), so
                # that a resumed run repeats it exactly.
                _restore_buffers(model, saved)
                if scaler.is_enabled():
                    scaler.update()  # lowers the fp16 loss scale (overflow found by unscale_)
                if counts and streak == 1 and env.is_main:
                    print(f"warning: step {pos.global_step + 1}: gradient not finite (first in "
                          f"{bad_param}); step skipped, weights unchanged"
                          + (f" ({limit} such steps in a row stop the run: "
                             "train.max_nonfinite_steps)" if limit else ""), flush=True)
                state.nonfinite_first = first
                state.nonfinite_streak = streak
                state.skipped_steps += 1
            else:
                if o["clip_grad"] > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), o["clip_grad"])
                scaler.step(optimizer)
                scaler.update()
                state.nonfinite_streak, state.nonfinite_first = 0, []
            fault_point("optimizer")
            optimizer.zero_grad(set_to_none=True)
            pos.step_in_epoch += 1
            pos.global_step += 1
            steps_run += 1
            state.rng = _rng_state(env.device)
            window += torch.cat([step_stats[:3], step_stats[4:].clamp(max=1.0)])
            epoch_totals += step_stats[:3]
            if bar is not None:
                bar.update(task, advance=1, stats=f"loss {step_stats[0] / step_stats[2]:.3f} "
                                                  f"lr {lr:.2e}")
            if pos.global_step % cfg["train"]["log_every"] == 0 or pos.step_in_epoch == steps:
                elapsed = time.perf_counter() - t_window
                peak, peak_of = peak_memory_mib(env.device)
                metrics.write({"epoch": epochs_before + pos.epoch + pos.step_in_epoch / steps,
                               "step": pos.global_step, "split": "train",
                               "loss": window[0].item() / window[2].item(),
                               "top1": window[1].item() / window[2].item(), "lr": lr,
                               "skipped_steps": int(window[3].item()),
                               "clips_per_s": window[2].item() / max(elapsed, 1e-9),
                               "data_wait": wait_window / max(elapsed, 1e-9),
                               "frames": phase["frames"], "peak_mem_mib": peak,
                               "peak_mem": peak_of, "seconds": state.seconds()})
                window.zero_()
                t_window, wait_window = time.perf_counter(), 0.0
        if stop_after_steps is not None and steps_before + steps_run >= stop_after_steps:
            return _epoch_stats(epoch_totals, steps_run, stopped=True)
    return _epoch_stats(epoch_totals, steps_run, stopped=False)


def _first_nonfinite_grad(model: nn.Module) -> str | None:
    """The name of the first parameter (in ``named_parameters`` order) whose gradient holds a
    NaN or inf, or None; one device synchronisation."""
    named = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    if not named:
        return None
    ok = torch.stack([torch.isfinite(g).all() for _, g in named])
    if bool(ok.all()):
        return None
    return named[int((~ok).nonzero()[0, 0])][0]


def _first_nonfinite_tensor(tree: Any, where: str = "") -> str | None:
    """The path (``model.res5.1.conv2.0.weight``, ``optimizer.state.3.momentum_buffer``) of
    the first floating-point tensor in nested dicts/lists that holds a NaN or inf, or None."""
    found: list[tuple[str, torch.Tensor]] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, torch.Tensor):
            if node.is_floating_point() or node.is_complex():
                found.append((path, node))
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{path}.{i}" if path else str(i))

    walk(tree, where)
    if not found:
        return None
    ok = torch.stack([torch.isfinite(t).all().cpu() for _, t in found])
    if bool(ok.all()):
        return None
    return found[int((~ok).nonzero()[0, 0])][0]


def _copy_buffers(model: nn.Module) -> list[torch.Tensor]:
    """Copies of the model's buffers (BN running mean/var and batch counts: a few KB)."""
    return [b.detach().clone() for b in model.buffers()]


@torch.no_grad()
def _restore_buffers(model: nn.Module, saved: list[torch.Tensor]) -> None:
    for b, v in zip(model.buffers(), saved):
        b.copy_(v)


def _epoch_stats(totals: torch.Tensor, steps_run: int, *, stopped: bool) -> dict[str, Any]:
    n = totals[2].item()
    return {"loss": totals[0].item() / n if n else None,
            "top1": totals[1].item() / n if n else None,
            "steps_run": steps_run, "stopped": stopped}


def _print_epoch(epoch: int, train_stats: dict[str, float], val: dict[str, float] | None) -> None:
    if train_stats.get("loss") is None:
        text = f"epoch {epoch}: train -"
    else:
        text = (f"epoch {epoch}: train loss {train_stats['loss']:.4f} "
                f"top-1 {100 * train_stats['top1']:.1f}%")
    if val is not None:
        text += f" | val loss {val['loss']:.4f} top-1 {100 * val['top1']:.1f}%"
        if val.get("top5") is not None:
            text += f" top-5 {100 * val['top5']:.1f}%"
    print(text, flush=True)

