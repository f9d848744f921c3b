"""Data: the toy dataset, annotation parsers, ``prepare`` into HDF5 shards, and the clip loader.

The names below are imported on first use (PEP 562): ``vcorr prepare``, ``vcorr toy`` and
``vcorr inspect`` import submodules of this package that do not need torch, and importing
the package itself must not load the clip loader's (torch, seconds).
"""
from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "VideoClipDataset": "dataset", "decode_frames": "dataset",
    "DenseSampler": "samplers", "SegmentSampler": "samplers", "make_sampler": "samplers",
    "SWAP_PAIRS": "swaps", "swap_index_map": "swaps", "swap_pairs": "swaps",
    "train_transform": "transforms", "test_transform": "transforms",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
