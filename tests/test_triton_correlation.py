"""The Triton correlation kernels (issue 16): interpreter run and backend choice.

Values and gradients of the kernels are checked in ``tests/triton_interpreter_checks.py``,
which needs ``TRITON_INTERPRET=1`` before triton is first imported and so runs here in a fresh
process (in-process, triton may already be imported by other tests, and then its own
``tl.zeros``/``tl.sum`` are compiled-mode functions the interpreter cannot call).
"""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vcorr.models.ops import correlation, set_default_backend

# The module, not the function of the same name that models.ops exports.
corr_module = importlib.import_module("vcorr.models.ops.correlation")

ROOT = Path(__file__).resolve().parents[1]


def test_kernels_in_triton_interpreter():
    """Every case of triton_interpreter_checks.py passes in the interpreter; none skipped."""
    pytest.importorskip("triton")
    path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, TRITON_INTERPRET="1", VCORR_CORRELATION="triton",
               PYTHONPATH=os.pathsep.join(path), OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "triton_interpreter_checks.py")],
        check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    report = proc.stdout[-6000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, report
    summary = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed", summary), report
    assert not re.search(r"skipped|deselected|xfail", summary), report


def test_auto_keeps_cpu_tensors_on_pytorch(monkeypatch):
    monkeypatch.setattr(corr_module, "DEFAULT_BACKEND", "auto")
    x = torch.randn(1, 4, 3, 5, 5)
    assert corr_module._pick_backend(None, x, None) == "torch"
    assert corr_module._pick_backend("auto", x, None) == "torch"
    kw = {"kernel_size": 3, "groups": 2}
    assert torch.equal(correlation(x, None, **kw), correlation(x, None, backend="torch", **kw))


def test_auto_on_cuda_picks_triton_when_it_imports(monkeypatch):
    """The rule on CUDA, with stand-ins for CUDA tensors (no GPU here): fp32/fp16/bf16 go to
    Triton if it imports; fp64 (input or weight) and a missing triton stay on PyTorch."""
    def fake(dtype):
        return SimpleNamespace(device=torch.device("cuda"), dtype=dtype)

    kernels = SimpleNamespace(DTYPES=(torch.float32, torch.float16, torch.bfloat16))
    monkeypatch.setattr(corr_module, "_triton_module", kernels)
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        assert corr_module._pick_backend("auto", fake(dtype), None) == "triton"
    assert corr_module._pick_backend("auto", fake(torch.float64), None) == "torch"
    assert corr_module._pick_backend("auto", fake(torch.float32), fake(torch.float64)) == "torch"
    monkeypatch.setattr(corr_module, "_triton_module", False)  # triton failed to import
    assert corr_module._pick_backend("auto", fake(torch.float32), None) == "torch"
    with pytest.raises(RuntimeError, match="needs the triton package"):
        corr_module._pick_backend("triton", fake(torch.float32), None)


def test_bad_backend_names(monkeypatch):
    x = torch.randn(1, 4, 2, 3, 3)
    with pytest.raises(ValueError, match="backend must be one of"):
        correlation(x, None, kernel_size=3, backend="cuda")
    with pytest.raises(ValueError, match="must be one of"):
        set_default_backend("fast")
    monkeypatch.setattr(corr_module, "DEFAULT_BACKEND", "cuda")  # as from VCORR_CORRELATION
    with pytest.raises(ValueError, match="VCORR_CORRELATION"):
        correlation(x, None, kernel_size=3)


def test_set_default_backend(monkeypatch):
    monkeypatch.setattr(corr_module, "DEFAULT_BACKEND", "auto")
    set_default_backend("torch")
    assert corr_module.DEFAULT_BACKEND == "torch"
    assert corr_module._pick_backend(None, torch.randn(1, 1, 1, 1, 1), None) == "torch"


def test_triton_refuses_cpu_without_interpreter_and_fp64():
    pytest.importorskip("triton")
    from vcorr.models.ops import triton_correlation as tc

    if tc.interpreting():
        pytest.skip("this process runs triton's interpreter")
    x = torch.randn(1, 4, 2, 3, 3)
    with pytest.raises(ValueError, match="CUDA"):
        correlation(x, None, kernel_size=3, backend="triton")
    with pytest.raises(ValueError, match="fp32, fp16 or bf16"):
        correlation(x.double(), None, kernel_size=3, backend="triton")


def test_int32_index_guard():
    """A batch item beyond int32 offsets is refused before any launch (meta tensors: no
    memory is allocated)."""
    pytest.importorskip("triton")
    from vcorr.models.ops import triton_correlation as tc

    big = torch.empty(1, 2 ** 12 + 1, 2 ** 10, 2 ** 5, 2 ** 4, device="meta")  # > 2^31
    with pytest.raises(ValueError, match="2\\^31"):
        tc._check_offsets(big)
    # Exactly 2^31 elements per batch item (largest offset 2^31 - 1) still fits.
    tc._check_offsets(torch.empty(2, 2 ** 12, 2 ** 10, 2 ** 5, 2 ** 4, device="meta"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (compiled kernels)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_compiled_kernels_on_cuda(dtype):
    """On a GPU: 'auto' runs the compiled kernels, whose values and gradients match the
    float64 PyTorch operator on the same (rounded) inputs at CorrNet and DCF settings with
    several pixel tiles and channel blocks. fp32 results within 1e-5 x max(1, largest
    magnitude); bf16 results within 2^-8 relative (GPU conversion rounds to nearest) plus
    1e-5 of the largest magnitude."""
    pytest.importorskip("triton")
    gen = torch.Generator().manual_seed(0)
    cases = [  # (B, C, T, H, W), arguments, weighted
        ((2, 64, 4, 13, 17), {"kernel_size": 7, "groups": 2, "offsets": (-1,), "dilations": 2,
                              "clip_ends": "self"}, True),
        ((2, 48, 5, 11, 9), {"kernel_size": 5, "groups": 1, "offsets": (-2, -1, 1, 2),
                             "dilations": (2, 1, 1, 2), "clip_ends": "zero",
                             "scale": 48 ** -0.5}, False),
    ]
    for shape, kw, weighted in cases:
        x = torch.randn(shape, generator=gen).to(dtype)
        k = kw["kernel_size"]
        w = torch.randn(shape[1], shape[2], k, k, generator=gen) if weighted else None
        xc = x.cuda().requires_grad_()
        wc = None if w is None else w.cuda().requires_grad_()
        assert corr_module._pick_backend("auto", xc, wc) == "triton"
        out = correlation(xc, wc, **kw, backend="auto")
        grad = torch.randn(out.shape, generator=gen).to(dtype)
        ours = [out] + list(torch.autograd.grad(out, [xc] + ([wc] if wc is not None else []),
                                                grad.cuda()))
        xr = x.double().requires_grad_()
        wr = None if w is None else w.double().requires_grad_()
        ref = correlation(xr, wr, **kw, backend="torch")
        refs = [ref] + list(torch.autograd.grad(ref, [xr] + ([wr] if wr is not None else []),
                                                grad.double()))
        for a, r in zip(ours, refs):
            r = r.detach()
            top = float(r.abs().max())
            if a.dtype == torch.float32:
                atol, rtol = 1e-5 * max(1.0, top), 0.0
            else:
                atol, rtol = 1e-5 * top, 2.0 ** -8
            torch.testing.assert_close(a.detach().cpu().double(), r, atol=atol, rtol=rtol)
