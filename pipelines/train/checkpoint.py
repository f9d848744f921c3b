"""Checkpoints: atomic writes, safe loads (``weights_only=True``), and initial weights from
another checkpoint or from a torchvision 2D ResNet inflated to video (I3D-style, Carreira and
Zisserman 2017, Sec. 2.3: a k x k filter is repeated over t frames and divided by t, so a clip of
identical frames gives the 2D network's activations).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipelines.errors import UserError
from pipelines.fileio import replace_atomic
from pipelines.train.interrupts import fault_point

FORMAT = "vcorr-checkpoint-1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed: a
    crash or ``kill -9`` while saving never destroys the previous checkpoint, and ``path`` is
    always a checkpoint that loads."""
    def write(tmp: Path) -> None:
        torch.save({"format": FORMAT, **state}, tmp)
        fault_point("checkpoint")  # written, not yet renamed: where a kill hurts most

    replace_atomic(path, write, durable=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`; a clear :class:`UserError` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle that is not weights-only, not a torch file
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                        f"{str(exc).strip().splitlines()[0][:150] if str(exc).strip() else ''})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path}: not a vcorr training checkpoint (no '{FORMAT}' marker)")
    return ckpt


# --- initial weights ---------------------------------------------------------------------------

_TV_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


def torchvision_resnet_to_video(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision ``resnet*`` state dict to :class:`models.resnet.VideoResNet` names
    (``layer1`` -> ``res2``, ``downsample`` -> ``shortcut``, ``conv1`` -> ``stem.0``, ``fc`` ->
    ``head.fc``). Weights stay 2D; :func:`load_weights` inflates them to the model's kernels."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        m = _TV_BLOCK.match(key)
        if m:
            rest = m.group(3).replace("downsample.", "shortcut.")
            new = f"res{int(m.group(1)) + 1}.{m.group(2)}.{rest}"
        elif key.startswith("conv1."):
            new = "stem.0." + key[len("conv1."):]
        elif key.startswith("bn1."):
            new = "stem.1." + key[len("bn1."):]
        elif key.startswith("fc."):
            new = "head." + key
        else:
            new = key
        out[new] = value
    return out


def _is_torchvision_resnet(state: dict[str, Any]) -> bool:
    return "conv1.weight" in state and any(k.startswith("layer1.") for k in state)


def inflate(weight: torch.Tensor, shape: torch.Size) -> torch.Tensor | None:
    """A 2D conv weight (O, I, kh, kw) as a 3D one of ``shape`` (O, I, t, kh, kw): repeated
    over t and divided by t; None when the shapes do not correspond."""
    if weight.dim() != 4 or len(shape) != 5 or weight.shape != shape[:2] + shape[3:]:
        return None
    t = shape[2]
    return weight.unsqueeze(2).repeat(1, 1, t, 1, 1) / t


def load_weights(model: nn.Module, path: str | Path) -> dict[str, list[str]]:
    """Initialise ``model`` from ``path``: a vcorr checkpoint, a plain state dict, or a
    torchvision 2D ResNet state dict (inflated). Tensors whose name or shape does not fit (e.g.
    a classifier with another number of classes) are skipped and reported.

    Returns ``{"loaded": [...], "inflated": [...], "skipped": [...], "missing": [...]}``.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: not a readable weights file ({type(exc).__name__})") from None
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: expected a state dict of tensors")
    source = dict(obj)
    if _is_torchvision_resnet(source):
        source = torchvision_resnet_to_video(source)
    source = {k.removeprefix("module."): v for k, v in source.items()}  # DDP-saved dicts

    target = model.state_dict()
    report: dict[str, list[str]] = {"loaded": [], "inflated": [], "skipped": [], "missing": []}
    new_state = {}
    for key, value in source.items():
        if key not in target:
            report["skipped"].append(key)
            continue
        want = target[key]
        if value.shape == want.shape:
            new_state[key] = value.to(want.dtype)
            report["loaded"].append(key)
        elif (inflated := inflate(value, want.shape)) is not None:
            new_state[key] = inflated.to(want.dtype)
            report["inflated"].append(key)
        else:
            report["skipped"].append(key)
    if not new_state:
        raise UserError(f"{path}: no tensor matches the model (names or shapes differ)")
    report["missing"] = [k for k in target if k not in new_state]
    model.load_state_dict(new_state, strict=False)
    return report
