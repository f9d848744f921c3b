"""vcorr: video action recognition with correspondence and correlation models.

The installed package ``vcorr`` maps the repository's folders (setup.py ``package_dir``):
``vcorr.cli`` is ``vcorr_cli/`` (the command line), ``vcorr.models`` is ``models/`` and
``vcorr.pipelines`` is ``pipelines/``. ``python -m vcorr ...`` runs the ``vcorr`` command.

``from vcorr import Predictor`` is the Python API of ``vcorr predict``
(:class:`vcorr.pipelines.predict.api.Predictor`); it is imported on first use, so ``import
vcorr`` stays light (no torch).
"""
from __future__ import annotations

from typing import Any

_LAZY = {"Predictor": "vcorr.pipelines.predict.api", "Prediction": "vcorr.pipelines.predict.api"}
__all__ = ["Prediction", "Predictor"]


def __getattr__(name: str) -> Any:
    """``vcorr.Predictor`` and ``vcorr.Prediction``, imported when first asked for."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vcorr' has no attribute {name!r}")
