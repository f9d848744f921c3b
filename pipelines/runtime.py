"""Where and how models run: the device option shared by the commands, device-side timing and
peak memory, and the speed options ``torch.compile`` and ``channels_last_3d`` (issue 16).

* :func:`resolve_device`: ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (None: CUDA when present); a
  CUDA request on a machine without CUDA is one clear line (:class:`UserError`, exit 2).
* :func:`synchronize`, :func:`time_call`, :func:`peak_memory`: wall time that waits for the
  device's queued kernels (``torch.cuda.synchronize``), and peak tensor memory of one call
  (``torch.cuda.max_memory_allocated`` on CUDA, the profiler's allocation events on CPU).
* :func:`to_channels_last` and :func:`compile_model`: the training config's ``train.channels_last``
  and ``train.compile``, ``--channels-last`` and ``--compile`` of ``vcorr eval`` and the model
  benchmarks.

``channels_last_3d`` converts the 5-D (convolution) weights only: a convolution whose weight is
channels-last writes a channels-last output, so the layout propagates from the first layer
without converting the input. Under ``torch.compile`` the CP module's autograd functions are
traced and its k-NN uses public ops only (:mod:`vcorr.models.cp`); the correlation operator of
CorrNet and DCF compiles as one node when it is a registered custom op
(``torch.ops.vcorr.correlation``; tests/test_compile.py checks one model of each family).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from vcorr.pipelines.errors import UserError

DEVICE_HELP = "Device to run on: cpu or cuda (cuda:N for one GPU)."


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The torch device for a ``--device`` value; None: the current CUDA device if present, else
    the CPU.

    Raises:
        UserError: an unknown device, or CUDA asked for where torch has none (the line says why).
    """
    if device is None:
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"--device {device}: not a device (use cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA" if torch.version.cuda is None
                   else f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no GPU")
            raise UserError(f"--device {device}: CUDA is not available on this machine ({why})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} "
                            "CUDA device(s)")
    elif dev.type != "cpu":
        raise UserError(f"--device {device}: only cpu and cuda are supported")
    return dev


def synchronize(device: torch.device) -> None:
    """Wait for the kernels queued on ``device`` (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one ``fn()`` call including the device work it queued.

    On CUDA the device is synchronised before (so earlier work is not counted) and after (CUDA
    kernels run asynchronously: without it only the launch would be timed).
    """
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes held by tensors during one ``fn()`` above what was held at its start.

    CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU: the running
    sum of the profiler's allocation events (:func:`vcorr.pipelines.bench.correlation.peak_memory_bytes`).
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from vcorr.pipelines.bench.correlation import peak_memory_bytes

    return peak_memory_bytes(fn)


def memory_method(device: torch.device) -> str:
    """How :func:`peak_memory` measured, for the benchmarks' JSON."""
    if device.type == "cuda":
        return ("torch.cuda.max_memory_allocated after reset_peak_memory_stats, minus the "
                "memory allocated at the start of the call")
    from vcorr.pipelines.bench.correlation import MEMORY_METHOD

    return MEMORY_METHOD


def to_channels_last(model: nn.Module) -> nn.Module:
    """Convert the model's 5-D weights to ``torch.channels_last_3d`` in place (same values, the
    same parameter objects: optimisers and state dicts are unaffected). Returns the model."""
    return model.to(memory_format=torch.channels_last_3d)


def compile_model(model: nn.Module, *, backend: str = "inductor", mode: str | None = None) -> nn.Module:
    """``torch.compile(model)``; the returned module shares parameters and buffers with ``model``
    (keep using ``model`` for ``state_dict``). Compilation happens at the first call, again
    once if the input shape changes (then with dynamic shapes).

    Raises:
        UserError: this torch has no ``torch.compile``.
    """
    if not hasattr(torch, "compile"):
        raise UserError(f"torch {torch.__version__} has no torch.compile (needs torch >= 2.0)")
    return torch.compile(model, backend=backend, mode=mode)
