"""Convolutions in float32 under CPU autocast, so that bf16 training on a CPU gets exact gradients.

Why: PyTorch's CPU convolutions go through oneDNN, and on CPUs with AVX-512 (with or without
native bf16 instructions) its bfloat16 backward returns wrong gradients for some small maps.
Measured with PyTorch 2.14.1 (issue 21): a (1, 3, 3) conv with spatial stride 2 and padding 1
on a 1x1 map (the late stages of a ResNet on small clips) gives weight and input gradients with
a relative error of 1e0 to 1e36 against float32 on the same bfloat16-rounded values, often
inf/NaN; (3, 3, 3) and (1, 7, 7) kernels do the same. ``ONEDNN_MAX_CPU_ISA=AVX2`` makes them
exact, so AVX2-only CPUs are not affected; a (3, 1, 1) conv at T=2 has been reported to fail
too. Since the set of failing shapes is oneDNN's internal kernel choice and cannot be listed
safely, every convolution on a CPU tensor under CPU autocast runs in float32 on its inputs as
they come (a bf16 activation is widened exactly; a float32 one is not rounded first): the
result is a float32 convolution, on every CPU. The rest of the model (linear layers, matmuls, the correlation operator)
keeps running in the autocast dtype. On AVX2-only CPUs this is also faster: their bf16
convolutions take PyTorch's slow reference path.

:class:`VideoResNet` (every registered model) enters :func:`float32_convs_on_cpu` in its forward,
so the rule holds for ``vcorr train``, the benchmarks and any caller's own ``torch.autocast``.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["Float32ConvsOnCPU", "float32_convs_on_cpu"]

_CONVS = frozenset({F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                    F.conv_transpose3d})
_LOW = (torch.bfloat16, torch.float16)


def _up(a: Any) -> Any:
    return a.float() if isinstance(a, torch.Tensor) and a.dtype in _LOW else a


class Float32ConvsOnCPU(TorchFunctionMode):
    """Torch-function mode: ``F.conv*d`` / ``F.conv_transpose*d`` on CPU tensors run in float32
    with autocast off; everything else is untouched. The output is float32 (the next op under
    autocast casts it as it casts any input)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _CONVS and isinstance(args[0], torch.Tensor) and args[0].device.type == "cpu":
            with torch.autocast("cpu", enabled=False):
                return func(*map(_up, args), **{k: _up(v) for k, v in kwargs.items()})
        return func(*args, **kwargs)


def float32_convs_on_cpu() -> contextlib.AbstractContextManager:
    """A :class:`Float32ConvsOnCPU` mode while CPU autocast is on in a low-precision dtype,
    else a no-op context (no cost outside CPU autocast; CUDA autocast is not affected).

    Source: issue 21 (measurements in the module docstring); oneDNN via ``torch.backends.mkldnn``.
    """
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in _LOW:
        return Float32ConvsOnCPU()
    return contextlib.nullcontext()
