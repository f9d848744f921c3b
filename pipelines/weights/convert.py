"""Reading weight files and renaming other libraries' state dicts onto vcorr's module names.

A converter is a name map: it renames every tensor of the source state dict to the name the
same tensor has in the vcorr model of the same layout (:mod:`vcorr.models.zoo_sources`) and changes
no value (one reshape: PyTorchVideo's X3D ``post_conv`` is a 1x1x1 conv, ours the equivalent
``nn.Linear``). Whether every tensor then lands, with the right shape, is checked by
:func:`vcorr.pipelines.weights.load.plan_load`, never assumed.

Formats recognised (:func:`read_weights`): a vcorr checkpoint; torchvision's 2D ``resnet*``
(ImageNet); torchvision's video ResNets (``r3d_18``, ``mc3_18``, ``r2plus1d_18``); PyTorchVideo
hub checkpoints (``.pyth``: ``{"model_state": ...}``, ``blocks.N...`` names); a plain state dict
in vcorr names. ``module.`` prefixes (DataParallel) are dropped.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vcorr.pipelines.errors import UserError
from vcorr.pipelines.weights.sources import kinetics400_classes

CHECKPOINT_FORMAT = "vcorr-checkpoint-1"   # pipelines.train.checkpoint.FORMAT

Tensors = dict[str, torch.Tensor]


@dataclass
class WeightsFile:
    """A weights file read and renamed to vcorr names.

    ``format``: "vcorr" (a vcorr checkpoint), "state-dict" (vcorr names), "torchvision-resnet",
    "torchvision-video" or "pytorchvideo". ``classes``: the classifier's class names where the
    file implies them (a vcorr checkpoint's list; the Kinetics-400 list for a 400-way
    torchvision or PyTorchVideo video classifier), else None. ``model_name``: a vcorr
    checkpoint's model. ``renamed``: source name -> vcorr name for the converted formats.
    """

    path: Path
    format: str
    state: Tensors
    classes: list[str] | None = None
    model_name: str | None = None
    renamed: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def library(self) -> str:
        return {"torchvision-resnet": "torchvision", "torchvision-video": "torchvision",
                "pytorchvideo": "pytorchvideo"}.get(self.format, "vcorr")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:150]}" if text else type(exc).__name__


def load_tensors(path: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``(container, state dict)`` of a weights file, loaded with ``weights_only=True``.

    Raises :class:`UserError` naming the file when it is missing, unreadable, not weights-only,
    or holds no state dict of tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, pickle with code, not a torch file
        raise UserError(f"{path}: not a readable weights file ({_first_line(exc)})") from None
    container = obj if isinstance(obj, dict) else {}
    if isinstance(obj, dict) and obj.get("format") == CHECKPOINT_FORMAT:
        obj = obj.get("model")
    elif isinstance(obj, dict):
        for key in ("model_state", "state_dict", "model"):  # PyTorchVideo/SlowFast, Lightning
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor)
                                                       for v in obj.values()):
        raise UserError(f"{path}: expected a state dict of tensors")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in obj.items()}
    return container, state


# --- torchvision 2D ResNet (ImageNet) ----------------------------------------------------------

_TV_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


def torchvision_resnet_names(state: Tensors) -> dict[str, str]:
    """torchvision ``resnet*`` names -> vcorr: ``conv1``/``bn1`` -> ``stem.0``/``stem.1``,
    ``layerN`` -> ``res{N+1}``, ``downsample`` -> ``shortcut``, ``fc`` -> ``head.fc``; block
    convs keep their names (``conv1``, ``bn1``, ...). The weights stay 2D: the loader inflates."""
    out = {}
    for key in state:
        m = _TV_BLOCK.match(key)
        if m:
            new = f"res{int(m.group(1)) + 1}.{m.group(2)}.{m.group(3).replace('downsample.', 'shortcut.')}"
        elif key.startswith("conv1."):
            new = "stem.0." + key[len("conv1."):]
        elif key.startswith("bn1."):
            new = "stem.1." + key[len("bn1."):]
        elif key.startswith("fc."):
            new = "head." + key
        else:
            new = key
        out[key] = new
    return out


# --- torchvision video ResNets -------------------------------------------------------------------

_TVV_CONV = re.compile(r"^layer([1-4])\.(\d+)\.conv([12])\.([01])\.(.+)$")
_TVV_OTHER = re.compile(r"^layer([1-4])\.(\d+)\.downsample\.(.+)$")


def torchvision_video_names(state: Tensors) -> dict[str, str]:
    """torchvision ``VideoResNet`` names -> vcorr (:mod:`vcorr.models.zoo_sources` ``tv_*``).

    A block's ``convJ`` is ``Sequential(conv builder, BN, ReLU)``: ``convJ.0`` -> ``convJ`` (its
    inner ``Conv2Plus1D`` indices kept: ``convJ.0.3`` -> ``convJ.3``), ``convJ.1`` -> ``bnJ``;
    ``downsample`` -> ``shortcut``; ``fc`` -> ``head.fc``. The R(2+1)D stem ``(conv 45, BN, ReLU,
    conv 64, BN, ReLU)`` maps to our stem conv :class:`vcorr.models.layers.Conv2Plus1d` plus stem BN.
    """
    r2plus1d_stem = "stem.3.weight" in state
    stem_map = ({"0": "stem.0.0", "1": "stem.0.1", "3": "stem.0.3", "4": "stem.1"} if r2plus1d_stem
                else {"0": "stem.0", "1": "stem.1"})
    out = {}
    for key in state:
        new = key
        if key.startswith("stem."):
            idx, rest = key[len("stem."):].split(".", 1)
            if idx in stem_map:
                new = f"{stem_map[idx]}.{rest}"
        elif (m := _TVV_CONV.match(key)) is not None:
            stage, block, j, part, rest = m.groups()
            name = f"conv{j}" if part == "0" else f"bn{j}"
            new = f"res{int(stage) + 1}.{block}.{name}.{rest}"
        elif (m := _TVV_OTHER.match(key)) is not None:
            new = f"res{int(m.group(1)) + 1}.{m.group(2)}.shortcut.{m.group(3)}"
        elif key.startswith("fc."):
            new = "head." + key
        out[key] = new
    return out


# --- PyTorchVideo ----------------------------------------------------------------------------------

# Inside a ResBlock (``blocks.K.res_blocks.I.``): longest prefix first.
_PTV_BLOCK = (
    ("branch1_conv.", "shortcut.0."),
    ("branch1_norm.", "shortcut.1."),
    ("branch2.conv_a.", "conv1."),
    ("branch2.norm_a.", "bn1."),
    ("branch2.conv_b.conv_t.", "conv2.0."),    # (2+1)D: temporal 3x1x1 first
    ("branch2.conv_b.norm.", "conv2.1."),
    ("branch2.conv_b.conv_xy.", "conv2.3."),   # then spatial 1x3x3
    ("branch2.conv_b.", "conv2."),
    ("branch2.norm_b.0.", "bn2."),             # X3D: Sequential(BN, squeeze-excitation)
    ("branch2.norm_b.1.block.0.", "se.fc1."),
    ("branch2.norm_b.1.block.2.", "se.fc2."),
    ("branch2.norm_b.", "bn2."),
    ("branch2.conv_c.", "conv3."),
    ("branch2.norm_c.", "bn3."),
)
_PTV_STEM = (
    ("conv.conv_t.", "stem.0.0."),    # X3D stem: spatial 1x3x3 (named conv_t there) ...
    ("conv.conv_xy.", "stem.0.1."),   # ... then channel-wise 5x1x1
    ("conv.", "stem.0."),
    ("norm.", "stem.1."),
)
_PTV_HEAD = (
    ("pool.pre_conv.", "head.conv5.0."),
    ("pool.pre_norm.", "head.conv5.1."),
    ("pool.post_conv.", "head.fc1."),
    ("proj.", "head.fc."),
)
_PTV_RES = re.compile(r"^blocks\.(\d+)\.res_blocks\.(\d+)\.(.+)$")


def _swap_prefix(rest: str, table: tuple[tuple[str, str], ...]) -> str | None:
    for old, new in table:
        if rest.startswith(old):
            return new + rest[len(old):]
    return None


def pytorchvideo_names(state: Tensors, path: Path | str = "") -> dict[str, str]:
    """PyTorchVideo ``Net`` names -> vcorr (:mod:`vcorr.models.zoo_sources` ``ptv_*``).

    ``blocks.0`` is the stem, the blocks holding ``res_blocks`` are res2..res5 in order (a
    parameter-free pool block may sit between them), the block with ``proj`` is the head.
    Names no rule covers are kept, so the loader reports them as not in the model.
    """
    stages = sorted({int(m.group(1)) for k in state if (m := _PTV_RES.match(k))})
    if len(stages) != 4:
        raise UserError(f"{path}: a PyTorchVideo network with {len(stages)} residual stages; "
                        "expected 4 (res2..res5)")
    stage_name = {k: f"res{i + 2}" for i, k in enumerate(stages)}
    out = {}
    for key in state:
        new: str | None = None
        if (m := _PTV_RES.match(key)) is not None:
            rest = _swap_prefix(m.group(3), _PTV_BLOCK)
            if rest is not None:
                new = f"{stage_name[int(m.group(1))]}.{m.group(2)}.{rest}"
        elif key.startswith("blocks.0."):
            new = _swap_prefix(key[len("blocks.0."):], _PTV_STEM)
        elif key.startswith("blocks."):
            rest = key.split(".", 2)[2] if key.count(".") >= 2 else ""
            new = _swap_prefix(rest, _PTV_HEAD)
        out[key] = new if new is not None else key
    return out


def _reshape_ptv(state: Tensors) -> Tensors:
    """X3D's ``post_conv`` (hidden, inner, 1, 1, 1) as the ``nn.Linear`` weight (hidden, inner)."""
    out = dict(state)
    w = out.get("head.fc1.weight")
    if w is not None and w.dim() == 5 and w.shape[2:] == (1, 1, 1):
        out["head.fc1.weight"] = w.flatten(1)
    return out


# --- detection -------------------------------------------------------------------------------

def detect_format(state: Tensors) -> str:
    """"torchvision-resnet", "torchvision-video", "pytorchvideo" or "state-dict" (vcorr names),
    from the names and ranks of the tensors."""
    conv1 = state.get("conv1.weight")
    if conv1 is not None and conv1.dim() == 4 and any(k.startswith("layer1.") for k in state):
        return "torchvision-resnet"
    stem = state.get("stem.0.weight")
    if (stem is not None and stem.dim() == 5
            and any(k.startswith("layer1.0.conv1.0.") for k in state)):
        return "torchvision-video"
    if any(k.startswith("blocks.0.") for k in state) and any(_PTV_RES.match(k) for k in state):
        return "pytorchvideo"
    return "state-dict"


def _fc_outputs(state: Tensors) -> int | None:
    w = state.get("head.fc.weight")
    return int(w.shape[0]) if w is not None and w.dim() == 2 else None


def read_weights(path: str | Path) -> WeightsFile:
    """Read ``path`` (any format in the module docstring) with its tensors in vcorr names.

    Raises :class:`UserError` naming the file when it cannot be read as a state dict.
    """
    path = Path(path)
    container, state = load_tensors(path)
    if container.get("format") == CHECKPOINT_FORMAT:
        classes = container.get("classes")
        return WeightsFile(path, "vcorr", state,
                           list(classes) if isinstance(classes, list) else None,
                           container.get("model_name"),
                           meta={k: container[k] for k in ("source",) if k in container})
    fmt = detect_format(state)
    if fmt == "state-dict":
        return WeightsFile(path, fmt, state)
    names = {"torchvision-resnet": torchvision_resnet_names,
             "torchvision-video": torchvision_video_names,
             "pytorchvideo": lambda s: pytorchvideo_names(s, path)}[fmt](state)
    renamed = {names[k]: v for k, v in state.items()}
    if len(renamed) != len(state):
        raise UserError(f"{path}: two tensors map to one vcorr name; not a {fmt} layout")
    if fmt == "pytorchvideo":
        renamed = _reshape_ptv(renamed)
    classes = None
    if fmt != "torchvision-resnet" and _fc_outputs(renamed) == 400:
        classes = kinetics400_classes()   # torchvision and PyTorchVideo: Kinetics-400 order
    return WeightsFile(path, fmt, renamed, classes, renamed=names)
