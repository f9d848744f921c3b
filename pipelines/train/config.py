"""Training configuration: TOML files (read with :mod:`tomllib`), ``--set key=value`` overrides,
validation against the defaults below, and a TOML writer for the resolved config.

Every key a config may hold appears in :data:`DEFAULTS` (``model.args`` excepted: it is passed
to the model builder as keyword overrides and checked by the registry). An unknown key is an
error that lists the valid keys, so a typo never silently trains the wrong thing.
"""
from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path
from typing import Any

from vcorr.pipelines.errors import UserError

DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "data": {
        "root": "",                    # a folder written by `vcorr prepare` (or --data)
        "train_split": "train",
        "val_split": "val",
        "sampler": "dense",            # dense (consecutive, `interval` apart) or segment (TSN)
        "frames": 8,                   # clip length when no phases are given
        "interval": 1,                 # stride between sampled stored frames (dense sampler)
        "short_video": "loop",         # videos shorter than a dense clip: loop, repeat (CorrNet)
        "crop": 112,
        "short_side": [128, 160],      # training scale jitter range ([a, a] fixes it)
        "test_short_side": 128,        # validation: resize the short side, then centre crop
        "random_resized": False,       # RandomResizedCrop(scale 0.5-1, ratio 0.9-1.1) instead
        "color_jitter": 0.0,
        "normalize": True,             # subtract `mean`, divide by `std` (0-1 RGB)
        "mean": [0.485, 0.456, 0.406],  # ImageNet; converted checkpoints carry their source's
        "std": [0.229, 0.224, 0.225],
        "flip": "off",                 # off, on, swap (flip and swap direction labels)
        # the classes a mirror swaps: "" (the dataset's built-in map: ssv2, ssv1, jester), a
        # built-in map's name ("jester-authors") or a CSV file of class-name pairs
        "swap_map": "",
        # a class of classes.txt with no training video (a typo in a val row makes one) is an
        # error unless this is true
        "allow_empty_classes": False,
        # class imbalance: "off", "loss" (cross-entropy weighted by n / (classes x n_class)) or
        # "sampler" (each epoch draws its videos with probability 1 / n_class, with replacement)
        "class_balance": "off",
        "workers": 2,
    },
    "model": {
        "name": "c2d_r18",
        "args": {},                    # keyword overrides for the registered builder
    },
    "optim": {
        "optimizer": "sgd",            # sgd, adamw
        "lr": 0.01,                    # per batch of `batch_size` clips (all ranks together)
        "momentum": 0.9,
        "nesterov": False,
        "weight_decay": 1e-4,
        "schedule": "cosine",          # cosine, step, constant (per phase)
        "milestones": [],              # step schedule: epochs (within a phase) to decay at
        "gamma": 0.1,
        "warmup_epochs": 0.0,          # linear warmup at the start of every phase
        "clip_grad": 0.0,              # max gradient norm; 0 disables
        "batch_size": 32,              # clips per optimiser step, over all ranks
        "accumulate": 1,               # micro-batches per step (batch_size / accumulate each)
        "epochs": 10,                  # when no phases are given
        "label_smoothing": 0.0,
        # with --init: the learning rate of the parameters taken from the file, as a multiple
        # of that of the new ones (a new classifier, plug-ins that start at identity)
        "pretrained_lr_mult": 1.0,
    },
    "precision": {
        "amp": "off",                  # off, bf16, fp16 (CUDA; bf16 also works on CPU)
    },
    "train": {
        "log_every": 10,               # steps between metrics records
        "val_every": 1,                # epochs between validations (0: never)
        "val_batch_size": 0,           # 0: same as the training micro-batch
        "sync_bn": False,              # SyncBatchNorm under DDP
        "max_steps_per_epoch": 0,      # 0: the whole epoch (small values for smoke tests)
        "compile": False,              # torch.compile the model for the training steps
        "channels_last": False,        # convolution weights (and so activations) channels_last_3d
        # BNs that --init set neutral and that are the identity only on running statistics
        # (LoadReport.hold_bn): "hold" keeps them there for the whole run (gamma and beta still
        # train; exact start in training mode), "batch" lets them use batch statistics
        "init_bn": "hold",
        # modules not trained (names as in `vcorr models`, e.g. ["stem", "res2"]): their
        # parameters keep their values and their BNs their statistics (eval mode)
        "freeze": [],
        # Steps with a NaN/inf gradient are skipped (no update; counted as `skipped_steps` in
        # metrics.jsonl); this many in a row stop the run (0: never stop)
        "max_nonfinite_steps": 3,
    },
    # A list of {frames, epochs, freeze_bn, lr}: progressive training (e.g. 8 -> 16 -> 32 frames
    # with BN frozen after the first phase). Empty: one phase of data.frames x optim.epochs.
    "phases": [],
}
PHASE_KEYS = {"frames": int, "epochs": int, "freeze_bn": bool, "lr": float, "batch_size": int,
              "interval": int}
CHOICES = {
    ("data", "sampler"): ("dense", "segment"),
    ("data", "flip"): ("off", "on", "swap"),
    ("data", "short_video"): ("loop", "repeat"),
    ("optim", "optimizer"): ("sgd", "adamw"),
    ("optim", "schedule"): ("cosine", "step", "constant"),
    ("precision", "amp"): ("off", "bf16", "fp16"),
    ("train", "init_bn"): ("hold", "batch"),
    ("data", "class_balance"): ("off", "loss", "sampler"),
}


def _where(path: tuple[str, ...]) -> str:
    return ".".join(path)


class _Sources:
    """Where each value came from, for error messages: ``--set key=value`` for the keys the
    command line set (or a table above them), else the config file."""

    def __init__(self, file: str, sets: dict[str, str]) -> None:
        self.file, self.sets = file, sets

    def __call__(self, *keys: str) -> str:
        for key in keys:
            parts = key.split(".")
            for i in range(len(parts), 0, -1):
                if ".".join(parts[:i]) in self.sets:
                    return f"--set {self.sets['.'.join(parts[:i])]}"
        return self.file


def _merge(base: dict, new: dict, path: tuple[str, ...], source: str) -> None:
    """Merge ``new`` into ``base`` in place, refusing keys ``base`` does not have."""
    for key, value in new.items():
        here = path + (key,)
        if path == ("model", "args"):
            base[key] = value
            continue
        if key not in base:
            valid = ", ".join(sorted(base))
            raise UserError(f"{source}: unknown key {_where(here)!r}; valid keys"
                            f"{' in [' + _where(path) + ']' if path else ''}: {valid}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise UserError(f"{source}: {_where(here)!r} must be a table")
            _merge(base[key], value, here, source)
        else:
            base[key] = value


def _check_types(cfg: dict, defaults: dict, path: tuple[str, ...], src: _Sources) -> None:
    for key, default in defaults.items():
        here = path + (key,)
        value = cfg[key]
        source = src(_where(here))
        if isinstance(default, dict) and not isinstance(value, dict):
            raise UserError(f"{source}: {_where(here)} must be a table, got {value!r}")
        if here == ("model", "args") or here == ("phases",):
            continue
        if isinstance(default, dict):
            _check_types(value, default, here, src)
            continue
        ok = (isinstance(value, bool) if isinstance(default, bool)
              else isinstance(value, (int, float)) and not isinstance(value, bool)
              if isinstance(default, float)
              else isinstance(value, int) and not isinstance(value, bool) if isinstance(default, int)
              else isinstance(value, type(default)))
        if key == "short_side" and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            hint = ""
            if isinstance(default, list) and isinstance(value, str) and value.startswith("["):
                hint = ' (a TOML list: quote its strings, e.g. ["stem", "res2"])'
            raise UserError(f"{source}: {_where(here)} must be {type(default).__name__}, "
                            f"got {value!r}{hint}")
        if here in CHOICES and value not in CHOICES[here]:
            raise UserError(f"{source}: {_where(here)} must be one of "
                            f"{', '.join(CHOICES[here])}, got {value!r}")


def _check_phases(cfg: dict, src: _Sources) -> None:
    phases = cfg["phases"]
    if not isinstance(phases, list):
        raise UserError(f"{src('phases')}: phases must be a list of tables ([[phases]])")
    for i, phase in enumerate(phases):
        if not isinstance(phase, dict):
            raise UserError(f"{src(f'phases.{i}')}: phases[{i}] must be a table")
        for key, value in phase.items():
            source = src(f"phases.{i}.{key}")
            if key not in PHASE_KEYS:
                raise UserError(f"{source}: unknown key 'phases[{i}].{key}'; valid keys: "
                                f"{', '.join(sorted(PHASE_KEYS))}")
            want = PHASE_KEYS[key]
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                phase[key] = value = float(value)
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise UserError(f"{source}: phases[{i}].{key} must be {want.__name__}, got {value!r}")
        for key in ("frames", "epochs"):
            if key not in phase:
                raise UserError(f"{src(f'phases.{i}')}: phases[{i}] needs {key!r}")
        for key in ("frames", "epochs", "batch_size", "lr", "interval"):
            if key in phase and phase[key] <= 0:
                raise UserError(f"{src(f'phases.{i}.{key}')}: phases[{i}].{key} must be "
                                f"positive, got {phase[key]!r}")


def _check_values(cfg: dict, src: _Sources) -> None:
    o, d = cfg["optim"], cfg["data"]
    if o["batch_size"] < 1 or o["accumulate"] < 1 or o["batch_size"] % o["accumulate"]:
        raise UserError(f"{src('optim.batch_size', 'optim.accumulate')}: optim.batch_size ({o['batch_size']}) must be a positive "
                        f"multiple of optim.accumulate ({o['accumulate']})")
    if o["lr"] <= 0:
        raise UserError(f"{src('optim.lr')}: optim.lr must be positive")
    if o["pretrained_lr_mult"] <= 0:
        raise UserError(f"{src('optim.pretrained_lr_mult')}: optim.pretrained_lr_mult must be "
                        "positive (use train.freeze to keep parameters fixed)")
    if not all(isinstance(n, str) and n for n in cfg["train"]["freeze"]):
        raise UserError(f"{src('train.freeze')}: train.freeze is a list of module names, e.g. "
                        '["stem", "res2"]')
    if cfg["train"]["max_nonfinite_steps"] < 0:
        raise UserError(f"{src('train.max_nonfinite_steps')}: train.max_nonfinite_steps must be "
                        "0 (never stop) or positive")
    if d["frames"] < 1 or d["interval"] < 1 or d["crop"] < 1 or d["workers"] < 0:
        raise UserError(f"{src('data.frames', 'data.interval', 'data.crop', 'data.workers')}: "
                        "data.frames, data.interval and data.crop must be positive "
                        "and data.workers not negative")
    for key in ("mean", "std"):
        v = d[key]
        if (len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
                or (key == "std" and min(v) <= 0)):
            raise UserError(f"{src('data.' + key)}: data.{key} must be 3 numbers (R, G, B){', positive' if key == 'std' else ''}, "
                            f"got {v!r}")
        d[key] = [float(x) for x in v]


def parse_value(text: str) -> Any:
    """A ``--set`` value as TOML (``8``, ``0.1``, ``true``, ``[128, 160]``, ``"x"``), else a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_set(cfg: dict, assignment: str) -> None:
    """Apply one ``key.sub=value`` override in place (``phases.0.lr=0.1`` indexes the list)."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected key=value")
    key, text = assignment.split("=", 1)
    parts = key.strip().split(".")
    value = parse_value(text.strip())
    node: Any = cfg
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise UserError(f"--set {key}: no list item {part!r}")
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            valid = ", ".join(sorted(node)) if isinstance(node, dict) else ""
            raise UserError(f"--set {key}: unknown key {'.'.join(parts[:i + 1])!r}; valid keys: {valid}")
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise UserError(f"--set {key}: no list item {last!r}")
        node[int(last)] = value
        return
    if last not in node and parts[:-1] != ["model", "args"] and parts[:-2] != ["phases"]:
        raise UserError(f"--set {key}: unknown key {key!r}; valid keys: {', '.join(sorted(node))}")
    node[last] = value


def load_config(path: str | Path | None = None, sets: list[str] = ()) -> dict[str, Any]:
    """Defaults <- TOML file <- ``--set`` overrides, validated. Returns a plain nested dict."""
    cfg = copy.deepcopy(DEFAULTS)
    source = str(path) if path is not None else "config"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: config file not found")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not valid TOML ({exc})") from None
        _merge(cfg, data, (), source)
    set_keys: dict[str, str] = {}
    for assignment in sets:
        apply_set(cfg, assignment)
        set_keys[assignment.split("=", 1)[0].strip()] = assignment.strip()
    # A bad value names where it came from: the --set that gave it, else the file.
    src = _Sources(source, set_keys)
    _check_types(cfg, DEFAULTS, (), src)
    _check_phases(cfg, src)
    _check_values(cfg, src)
    return cfg


def with_defaults(cfg: dict[str, Any]) -> dict[str, Any]:
    """A stored config (a checkpoint's) with the keys added since it was written set to their
    defaults, so that older checkpoints still evaluate and resume. Returns a new dict."""
    out = copy.deepcopy(DEFAULTS)

    def fill(base: dict, new: dict) -> None:
        for key, value in new.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "args":
                fill(base[key], value)
            else:
                base[key] = copy.deepcopy(value)

    fill(out, cfg)
    return out


def phases(cfg: dict) -> list[dict[str, Any]]:
    """The training phases with every field filled (one phase if the config has none)."""
    out = []
    for p in cfg["phases"] or [{"frames": cfg["data"]["frames"], "epochs": cfg["optim"]["epochs"]}]:
        out.append({"frames": p["frames"], "epochs": p["epochs"],
                    "freeze_bn": p.get("freeze_bn", False), "lr": p.get("lr", cfg["optim"]["lr"]),
                    "batch_size": p.get("batch_size", cfg["optim"]["batch_size"]),
                    "interval": p.get("interval", cfg["data"]["interval"])})
    return out


# --- writing TOML (the standard library only reads it) -----------------------------------------

def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # A JSON string is a valid TOML basic string, except that JSON writes characters
        # outside the BMP as surrogate pairs (\ud83d\ude00), which TOML refuses: keep them raw.
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(cfg: dict[str, Any]) -> str:
    """The config as TOML text that :func:`load_config` reads back to the same dict."""
    lines: list[str] = []
    tables: list[tuple[str, dict]] = []
    for key, value in cfg.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif key == "phases":
            continue
        else:
            lines.append(f"{key} = {_toml_value(value)}")

    def emit(name: str, table: dict) -> None:
        lines.append(f"\n[{name}]")
        subs = []
        for k, v in table.items():
            if isinstance(v, dict):
                subs.append((f"{name}.{k}", v))
            else:
                lines.append(f"{k} = {_toml_value(v)}")
        for sub_name, sub in subs:
            emit(sub_name, sub)

    for name, table in tables:
        emit(name, table)
    for phase in cfg.get("phases", []):
        lines.append("\n[[phases]]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in phase.items())
    return "\n".join(lines) + "\n"
