"""Checkpoints: atomic writes and safe loads (``weights_only=True``). Initial weights from other
checkpoints and other libraries' files are :mod:`vcorr.pipelines.weights`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from vcorr.pipelines.errors import UserError
from vcorr.pipelines.fileio import replace_atomic
from vcorr.pipelines.train.interrupts import fault_point

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
    if path.is_dir() and any((path / n).is_file() for n in ("best.pt", "last.pt")):
        raise UserError(f"{path}: a run folder, not a checkpoint; give {path / 'best.pt'} or "
                        f"{path / 'last.pt'}")
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

def load_weights(model: nn.Module, path: str | Path, **kwargs: Any):
    """:func:`vcorr.pipelines.weights.load_weights` (exact initial weights with a report); imported
    here lazily because :mod:`vcorr.pipelines.weights` reads this module's checkpoints."""
    from vcorr.pipelines.weights import load_weights as _load_weights

    return _load_weights(model, path, **kwargs)
