"""Triton correlation kernels (issue 16) against the PyTorch operator, in Triton's interpreter.

Not collected by the normal test run (the name does not start with ``test_``): triton reads
``TRITON_INTERPRET`` when it is first imported, so ``tests/test_triton_correlation.py`` runs
this file in a fresh process with ``TRITON_INTERPRET=1``. By hand:

    TRITON_INTERPRET=1 PYTHONPATH=. python -m pytest -q tests/triton_interpreter_checks.py

Reference: the PyTorch operator in float64 (itself checked against a plain loop in
``tests/test_correlation.py``). fp32 kernels must agree within 1e-5 absolute (rtol 0) in
values, grad_x and grad_weight; fp16/bf16 inputs are compared with the float64 reference on
the same rounded inputs, elementwise within one unit of the output dtype's last place
(relative 2^-7 for bf16, 2^-10 for fp16) plus 1e-5 of the largest magnitude. One ulp, not
half: the interpreter converts fp32 to bf16 by truncation where the GPU rounds to nearest.
Summing the 64 channels in bf16 instead of fp32 breaks that bound at about half the elements.

Shapes are tiny because the interpreter is slow. Every case has displacements that leave the
frame at its borders (K=7 with dilation 2 is wider than the 5x7 frame) and frames whose partner
lies outside the clip (matched with themselves for CorrNet, with zeros for DCF).
"""
from __future__ import annotations

import importlib
import math
import os

import pytest

if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs TRITON_INTERPRET=1 before triton is imported "
                "(tests/test_triton_correlation.py runs this file so)", allow_module_level=True)
triton = pytest.importorskip("triton")

import torch

from vcorr.models.ops import correlation, dcf_offsets
from vcorr.models.ops import triton_correlation as tc
from vcorr.models.ops.correlation import _pick_backend

FP32_ATOL = 1e-5
LOW_RTOL = {torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}


@pytest.fixture(autouse=True, scope="module")
def _no_overflow_sanitizer():
    """The interpreter checks every int32 add/mul for overflow, a third of its run time here;
    offsets of these tiny shapes cannot overflow (large ones are refused on the host by
    ``_check_offsets``). Skipped silently if a triton version lays its builder out otherwise."""
    import dataclasses

    from triton.runtime import interpreter

    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if options is None or not hasattr(options, "sanitize_overflow"):
        yield
        return
    builder.options = dataclasses.replace(options, sanitize_overflow=False)
    yield
    builder.options = options


def _make(shape, steps, k, gen, layout="contiguous"):
    """x (B, C, T, H, W) in float64 (optionally a non-contiguous view) and a weight."""
    b, c, t, h, w = shape
    if layout == "frames_first":  # (B, T, C, H, W) storage seen as (B, C, T, H, W)
        x = torch.randn(b, t, c, h, w, dtype=torch.float64, generator=gen).transpose(1, 2)
    elif layout == "strided":  # every other column of a wider tensor
        x = torch.randn(b, c, t, h, 2 * w, dtype=torch.float64, generator=gen)[..., ::2]
    else:
        x = torch.randn(b, c, t, h, w, dtype=torch.float64, generator=gen)
    weight = None
    if steps is not None:
        weight = torch.randn(c, t if steps == "T" else steps, k, k, dtype=torch.float64,
                             generator=gen)
    return x, weight


def _check(x, weight, kw, dtype=torch.float32, weight_dtype=None):
    """Triton on x and weight cast to ``dtype`` / ``weight_dtype`` (x's strides kept) against
    the float64 PyTorch operator on the same rounded values: output, grad_x, grad_weight."""
    weight_dtype = weight_dtype or dtype
    xs = torch.empty_strided(x.shape, x.stride(), dtype=dtype).copy_(x).requires_grad_()
    ws = None if weight is None else weight.to(weight_dtype).requires_grad_()
    out = correlation(xs, ws, backend="triton", **kw)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(7)).to(dtype)
    grads = torch.autograd.grad(out, [xs] + ([ws] if ws is not None else []), grad)
    assert out.dtype == grads[0].dtype == dtype
    assert weight is None or grads[1].dtype == weight_dtype
    x_r = xs.detach().double().requires_grad_()
    w_r = None if ws is None else ws.detach().double().requires_grad_()
    ref = correlation(x_r, w_r, backend="torch", **kw)
    ref_grads = torch.autograd.grad(ref, [x_r] + ([w_r] if w_r is not None else []),
                                    grad.double())
    for name, a, r in [("out", out, ref)] + list(zip(("grad_x", "grad_w"), grads, ref_grads)):
        r = r.detach()
        assert r.abs().max() > 0.1, f"{name}: the reference is ~0, the case tests nothing"
        if a.dtype == torch.float32:
            atol, rtol = FP32_ATOL, 0.0
        else:
            atol, rtol = 1e-5 * float(r.abs().max()), LOW_RTOL[a.dtype]
        torch.testing.assert_close(a.double(), r, atol=atol, rtol=rtol,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _corrnet(k, d, g, offsets=(-1,)):
    return {"kernel_size": k, "groups": g, "offsets": offsets, "dilations": d, "clip_ends": "self"}


def _dcf(k, L, d, g, c):
    offsets = dcf_offsets(L)
    return {"kernel_size": k, "groups": g, "offsets": offsets,
            "dilations": tuple(d * abs(o) for o in offsets), "clip_ends": "zero",
            "scale": 1.0 / math.sqrt(c // g)}


# (id, (B, C, T, H, W), weight time steps or None, correlation kwargs, layout)
FP32_CASES = [
    ("corrnet-K3-D1-G4-T5", (1, 8, 5, 5, 6), "T", _corrnet(3, 1, 4), "contiguous"),
    ("corrnet-K7-D2-G1-T2-shared-w", (1, 8, 2, 5, 7), 1, _corrnet(7, 2, 1), "frames_first"),
    ("corrnet-K3-D2-G2-T1", (2, 8, 1, 4, 5), "T", _corrnet(3, 2, 2), "contiguous"),
    ("corrnet-nofilter-K3-D1-G1", (1, 8, 3, 4, 5), None, _corrnet(3, 1, 1), "strided"),
    ("dcf-L2-K3-D1-G1-T5", (1, 8, 5, 5, 4), None, _dcf(3, 2, 1, 1, 8), "contiguous"),
    ("dcf-L1-K3-D2-G4-T3", (1, 8, 3, 4, 5), None, _dcf(3, 1, 2, 4, 8), "frames_first"),
    ("weighted-offsets(2,-1)-self", (1, 8, 4, 4, 5), "T",
     {"kernel_size": 3, "groups": 2, "offsets": (2, -1), "dilations": (1, 2),
      "clip_ends": "self", "scale": 0.3}, "contiguous"),
    ("weighted-dcf-zero-ends", (1, 8, 3, 4, 4), 1,
     {"kernel_size": 3, "groups": 1, "offsets": (-1, 1), "dilations": (1, 2),
      "clip_ends": "zero", "scale": 0.5}, "contiguous"),
]


@pytest.mark.parametrize("case", FP32_CASES, ids=[c[0] for c in FP32_CASES])
def test_fp32_matches_pytorch_operator(case):
    _, shape, steps, kw, layout = case
    x, weight = _make(shape, steps, kw["kernel_size"],
                      torch.Generator().manual_seed(sum(shape)), layout)
    _check(x, weight, kw)


def test_several_tiles_and_channel_blocks(monkeypatch):
    """Small blocks: 3 pixel tiles (the last partial) and 2 channel blocks per group of 6 (the
    last partial), so tile and channel-block edges fall inside the frame and the group."""
    monkeypatch.setattr(tc, "MAX_BLOCK_C", 4)
    monkeypatch.setattr(tc, "MAX_BLOCK_HW_FWD", 16)
    monkeypatch.setattr(tc, "MAX_BLOCK_HW_BWD", 16)
    x, weight = _make((1, 12, 2, 5, 7), "T", 3, torch.Generator().manual_seed(5))
    _check(x, weight, _corrnet(3, 1, 2))


@pytest.mark.parametrize("dtype, weight_dtype", [(torch.bfloat16, torch.float32),
                                                 (torch.float16, torch.float16)])
def test_low_precision_inputs_sum_in_fp32(dtype, weight_dtype):
    x, weight = _make((1, 64, 2, 4, 5), "T", 3, torch.Generator().manual_seed(3))
    _check(x, weight, _corrnet(3, 2, 1), dtype=dtype, weight_dtype=weight_dtype)
    _check(x, None, _dcf(3, 1, 1, 1, 64), dtype=dtype)


def test_gradient_of_one_input_only():
    """need_x / need_w: only the requested gradient is made, and it is the full one."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(1, 8, 2, 4, 4, generator=gen)
    w = torch.randn(8, 2, 3, 3, generator=gen)
    kw = {"kernel_size": 3, "groups": 2, "offsets": (-1,), "dilations": (1,), "clip_ends": "self",
              "scale": 0.25}
    grad = torch.randn(1, 18, 2, 4, 4, generator=gen)
    ref_x, ref_w = tc.backward(x, w, grad, **kw)
    gx, gw = tc.backward(x, w, grad, need_w=False, **kw)
    assert gw is None and torch.equal(gx, ref_x)
    gx, gw = tc.backward(x, w, grad, need_x=False, **kw)
    assert gx is None and torch.equal(gw, ref_w)
    # Non-contiguous grad_out gives the same result as a contiguous one.
    grad_nc = grad.transpose(3, 4).contiguous().transpose(3, 4)
    gx, gw = tc.backward(x, w, grad_nc, **kw)
    assert torch.equal(gx, ref_x) and torch.equal(gw, ref_w)
    # Against the PyTorch operator's gradients.
    xr, wr = x.double().requires_grad_(), w.double().requires_grad_()
    rx, rw = torch.autograd.grad(correlation(xr, wr, backend="torch", **kw), [xr, wr],
                                 grad.double())
    torch.testing.assert_close(ref_x.double(), rx, atol=FP32_ATOL, rtol=0)
    torch.testing.assert_close(ref_w.double(), rw, atol=FP32_ATOL, rtol=0)


def test_dispatch_under_the_interpreter():
    """'auto' keeps CPU tensors on PyTorch even when the interpreter could run them; fp64 is
    refused by the kernels rather than summed in fp32."""
    x = torch.randn(1, 4, 2, 3, 3)
    assert _pick_backend("auto", x, None) == "torch"
    assert _pick_backend("triton", x, None) == "triton"
    with pytest.raises(ValueError, match="fp32, fp16 or bf16"):
        correlation(x.double(), None, kernel_size=3, backend="triton")


def test_environment_sets_the_default_backend(monkeypatch):
    """VCORR_CORRELATION=triton (set by the runner) makes calls without ``backend`` use the
    kernels, here on CPU tensors through the interpreter."""
    if os.environ.get("VCORR_CORRELATION") != "triton":
        pytest.skip("run with VCORR_CORRELATION=triton (tests/test_triton_correlation.py does)")
    corr_module = importlib.import_module("vcorr.models.ops.correlation")  # not the function
    assert corr_module.DEFAULT_BACKEND == "triton"
    calls = []
    forward = tc.forward
    monkeypatch.setattr(tc, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    x = torch.randn(1, 4, 2, 3, 3)
    out = correlation(x, None, kernel_size=3, groups=2)
    assert calls == [1]
    torch.testing.assert_close(out, correlation(x, None, kernel_size=3, groups=2,
                                                backend="torch"), atol=1e-6, rtol=0)
