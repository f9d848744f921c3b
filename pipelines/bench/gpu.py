"""``vcorr bench gpu``: every GPU figure of issue 16 in one run (about 3-5 minutes on one GPU,
8 at most), written as JSON and as the markdown tables of the README.

1. Correlation forward+backward (gradients of input and weight) at two sizes: CorrNet-26's res2
   block (B=8, C=64, T=16, 56x56, K=7, D=2, groups of 32 channels; CorrNet Sec. 4) and the
   largest correlation of DCF X3D-S (found by running ``dcf_x3d_s`` once at its registered
   13x160x160 clip with hooks on its correlation layers, then taken at batch 8), each in fp32
   and bf16 (input and weight in that dtype), by three methods: the Triton kernels, the
   PyTorch operator (a loop over the K*K displacements) and the unfold formulation
   (:func:`vcorr.pipelines.bench.correlation.unfold_reference`). Time (best of ``repeats``, each
   call synchronised), peak memory (``torch.cuda.max_memory_allocated``) and the largest
   error against the PyTorch operator in fp32 on the same (rounded) inputs, relative to the
   largest value.
2. The CP module's k-NN (:func:`vcorr.pipelines.bench.models.bench_knn`, B=8, C=128, 8x28x28, k=8).
3. Training steps (forward, loss, backward; bf16 autocast; batch 8; registered clip sizes):
   ``cpnet_r18`` vs ``c2d_r18`` and ``corrnet_26`` vs ``r2plus1d_26``
   (:func:`vcorr.pipelines.bench.models.bench_models`).
4. ``vcorr eval`` at 10 clips x 3 crops of 8x112x112 views: views/s and the share of time
   outside the model (:func:`vcorr.pipelines.bench.eval.bench_eval`) on synthetic Kinetics-like
   videos (or a prepared folder given as ``data``).

Targets (issue 16): Triton at least 5x the PyTorch loop and 10x unfold with at most 1/10 of
unfold's peak memory; each correspondence model's step at most 1.3x its backbone's; eval time
outside the model at most 15%.

``tiny=True`` runs the same code at toy sizes (and fp32 training steps on the CPU, where
bf16 convolutions are slow): a check that the script runs, not a measurement.
"""
from __future__ import annotations

import importlib.util
import inspect
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vcorr.pipelines.errors import UserError

TARGETS = {"triton_vs_loop": 5.0, "triton_vs_unfold": 10.0, "memory_vs_unfold": 0.1,
           "step_ratio": 1.3, "eval_outside_model": 0.15}
METHODS = ("triton", "torch", "unfold")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
STEP_PAIRS = (("cpnet_r18", "c2d_r18"), ("corrnet_26", "r2plus1d_26"))
NOT_MEASURED = "not measured"


class Unavailable(Exception):
    """A method that cannot run in this checkout or on this machine (the message says why)."""


def correlation_method(method: str) -> Callable[..., Tensor]:
    """A callable ``f(x, weight, **kwargs)`` computing the correlation by ``method``.

    ``"torch"`` and ``"triton"`` pick the operator's backend where
    :func:`vcorr.models.ops.correlation` has a ``backend`` argument; a checkout without it has only
    the PyTorch operator. ``"unfold"``: :func:`vcorr.pipelines.bench.correlation.unfold_reference`.

    Raises:
        Unavailable: Triton asked for where the checkout has no Triton kernels.
    """
    from vcorr.models.ops import correlation
    from vcorr.pipelines.bench.correlation import unfold_reference

    if method == "unfold":
        return unfold_reference
    has_backend = "backend" in inspect.signature(correlation).parameters
    if has_backend:
        return lambda x, weight, **kw: correlation(x, weight, backend=method, **kw)
    if method == "torch":
        return correlation
    if importlib.util.find_spec("vcorr.models.ops.triton_correlation") is None:
        raise Unavailable("this checkout has no Triton kernels (models/ops/triton_correlation.py)")
    raise Unavailable("vcorr.models.ops.correlation has no backend argument to select the kernels")


def default_correlation_backend() -> str:
    """What the models' correlation layers use for CUDA tensors (recorded with the steps)."""
    import sys

    ops = sys.modules.get("vcorr.models.ops.correlation")
    default = getattr(ops, "DEFAULT_BACKEND", None)
    return default if default is not None else "torch (no backend option in this checkout)"


def dcf_largest_correlation(device: torch.device, clip: tuple[int, ...] | None = None) -> dict:
    """The call arguments and per-clip input shape of the largest correlation (multiply-adds)
    in ``dcf_x3d_s``, found by one forward pass at ``clip`` (C, T, H, W; default the
    registered clip) with hooks on its correlation layers."""
    from vcorr import models
    from vcorr.models.dcf import DCFCorrelation

    entry = models.get_model_entry("dcf_x3d_s")
    clip = tuple(clip or entry.input_shape)
    net = models.create_model("dcf_x3d_s").to(device).eval()
    calls: list[dict] = []

    def hook(mod: DCFCorrelation, args: tuple) -> None:
        x = args[0]
        calls.append({"shape": list(x.shape[1:]), "kernel_size": mod.kernel_size,
                      "offsets": list(mod.offsets),
                      "dilations": [mod.dilation * abs(o) for o in mod.offsets],
                      "groups": 1, "clip_ends": "zero", "scale": 1.0 / math.sqrt(x.shape[1]),
                      "macs": x[0].numel() * mod.kernel_size ** 2 * len(mod.offsets)})

    handles = [m.register_forward_pre_hook(hook) for m in net.modules()
               if isinstance(m, DCFCorrelation)]
    try:
        with torch.no_grad():
            net(torch.zeros(1, *clip, device=device))
    finally:
        for h in handles:
            h.remove()
    if not calls:
        raise RuntimeError("dcf_x3d_s ran no DCF correlation layer")
    return max(calls, key=lambda c: c["macs"])


def _bench_correlation_case(name: str, batch: int, call: dict, weighted: bool, repeats: int,
                            unfold_repeats: int, device: torch.device,
                            say: Callable[[str], None]) -> dict:
    """Every method and dtype at one size; see the module doc."""
    from vcorr.pipelines.bench.correlation import _timings
    from vcorr.pipelines.runtime import peak_memory

    kw = {k: call[k] for k in ("kernel_size", "groups", "offsets", "dilations", "clip_ends",
                               "scale")}
    c, t, h, w = call["shape"]
    k = kw["kernel_size"]
    gen = torch.Generator().manual_seed(0)
    x32 = torch.randn(batch, c, t, h, w, generator=gen)
    w32 = (1 + 0.1 * torch.randn(c, t, k, k, generator=gen)) if weighted else None
    out_channels = len(kw["offsets"]) * kw["groups"] * k * k
    g32 = torch.randn(batch, out_channels, t, h, w, generator=gen)
    case: dict[str, Any] = {"name": name, "input_shape": [batch, c, t, h, w], "weighted": weighted,
                            **{k_: v for k_, v in kw.items()}, "results": {}}
    for dname, dtype in DTYPES.items():
        x = x32.to(device, dtype).requires_grad_()
        weight = w32.to(device, dtype).requires_grad_() if w32 is not None else None
        grad = g32.to(device, dtype)
        inputs = (x, weight) if weight is not None else (x,)
        # Reference: the PyTorch operator in fp32 on the same rounded values.
        xr = x.detach().float().requires_grad_()
        wr = weight.detach().float().requires_grad_() if weight is not None else None
        ref_fn = correlation_method("torch")
        ref_out = ref_fn(xr, wr, **kw)
        ref = (ref_out.detach(),) + torch.autograd.grad(
            ref_out, (xr, wr) if wr is not None else (xr,), grad.float())
        del ref_out
        rows = {}
        for method in METHODS:
            say(f"correlation {name} {dname} {method}")
            try:
                fn_of = correlation_method(method)
            except Unavailable as exc:
                rows[method] = {"status": f"not available: {exc}"}
                continue

            def run(fn_of=fn_of, x=x, weight=weight, inputs=inputs,
                    grad=grad) -> tuple[Tensor, ...]:
                out = fn_of(x, weight, **kw)
                return (out.detach(),) + torch.autograd.grad(out, inputs, grad)

            try:
                got = run()
                err = max(float((a.float() - b).abs().max() / b.abs().max().clamp_min(1e-30))
                          for a, b in zip(got, ref))
                del got
                times = _timings(run, unfold_repeats if method == "unfold" else repeats, device)
                peak = peak_memory(run, device)
            except torch.cuda.OutOfMemoryError:
                rows[method] = {"status": "out of memory"}
                torch.cuda.empty_cache()
                continue
            except (RuntimeError, ValueError) as exc:   # e.g. a backend that refuses the input
                rows[method] = {"status": f"failed: {str(exc).splitlines()[0][:200]}"}
                continue
            rows[method] = {"status": "ok", "best_s": min(times),
                            "median_s": statistics.median(times), "peak_bytes": peak,
                            "max_rel_error_vs_torch_fp32": err}
        ok = {m: r for m, r in rows.items() if r.get("status") == "ok"}
        summary: dict[str, Any] = {}
        if "triton" in ok and "torch" in ok:
            summary["triton_vs_loop"] = ok["torch"]["best_s"] / ok["triton"]["best_s"]
        if "triton" in ok and "unfold" in ok:
            summary["triton_vs_unfold"] = ok["unfold"]["best_s"] / ok["triton"]["best_s"]
            summary["memory_vs_unfold"] = ok["triton"]["peak_bytes"] / ok["unfold"]["peak_bytes"]
        if "torch" in ok and "unfold" in ok:
            summary["loop_vs_unfold"] = ok["unfold"]["best_s"] / ok["torch"]["best_s"]
        case["results"][dname] = {"methods": rows, **summary}
        del x, weight, grad, xr, wr, ref
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return case


def run_gpu_bench(device: str | torch.device = "cuda", *, tiny: bool = False,
                  data: str | Path | None = None, workdir: str | Path | None = None,
                  repeats: int = 5, progress: Callable[[str], None] | None = None) -> dict:
    """All figures (module doc) on ``device``; returns them as a dict (:func:`gpu_markdown`
    makes the tables). ``data``: a prepared folder for the eval figure (default: synthetic
    videos made in ``workdir`` or a temporary folder). ``tiny``: toy sizes (a dev check).

    Raises:
        UserError: CUDA absent, or the full sizes asked for on the CPU.
    """
    from vcorr.pipelines.runtime import resolve_device

    dev = resolve_device(device)
    if data is not None and not (Path(data) / "index.csv").is_file():
        raise UserError(f"{data}: not a prepared dataset (no index.csv)")
    if dev.type != "cuda" and not tiny:
        raise UserError("vcorr bench gpu measures a GPU: use --device cuda (on the CPU only the "
                        "--tiny check of the script runs)")
    from vcorr.pipelines.bench.models import torch_threads

    # tiny: one CPU thread, as the test suite (tiny tensors; a shared machine)
    with torch_threads(1 if tiny else None):
        return _run_gpu_bench(dev, tiny, data, workdir, repeats, progress or (lambda _m: None))


def _run_gpu_bench(dev: torch.device, tiny: bool, data: str | Path | None,
                   workdir: str | Path | None, repeats: int,
                   say: Callable[[str], None]) -> dict:
    from vcorr.pipelines.bench.eval import bench_eval
    from vcorr.pipelines.bench.models import bench_knn, bench_models

    t_start = time.perf_counter()
    sections: dict[str, float] = {}
    r: dict[str, Any] = {
        "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU",
        "torch": torch.__version__, "cuda": torch.version.cuda,
        "triton": _triton_version(), "tiny": tiny, "targets": TARGETS,
        "correlation_backend_in_models": default_correlation_backend(),
    }

    # 1. correlation
    t0 = time.perf_counter()
    batch = 2 if tiny else 8
    corrnet_res2 = {"shape": [8, 3, 6, 6] if tiny else [64, 16, 56, 56], "kernel_size": 7,
                    "groups": 2, "offsets": [-1], "dilations": [2], "clip_ends": "self",
                    "scale": 1.0 / (4 if tiny else 32)}
    say("finding DCF X3D-S's largest correlation")
    dcf = dcf_largest_correlation(dev, (3, 4, 32, 32) if tiny else None)
    reps = 1 if tiny else repeats
    r["correlation"] = [
        _bench_correlation_case("CorrNet-26 res2", batch, corrnet_res2, True, reps,
                                1 if tiny else 3, dev, say),
        _bench_correlation_case("DCF X3D-S largest stage", batch, dcf, False, reps,
                                1 if tiny else 3, dev, say),
    ]
    sections["correlation"] = time.perf_counter() - t0

    # 2. k-NN
    t0 = time.perf_counter()
    say("k-NN")
    r["knn"] = (bench_knn(batch=1, channels=8, frames=3, size=4, k=4, repeats=1, device=dev)
                if tiny else bench_knn(repeats=repeats, naive_repeats=3, threads=None, device=dev))
    sections["knn"] = time.perf_counter() - t0

    # 3. training steps
    t0 = time.perf_counter()
    amp = "off" if tiny and dev.type == "cpu" else "bf16"
    r["steps"] = []
    for pair in STEP_PAIRS:
        say(f"training steps {pair[0]} vs {pair[1]}")
        try:
            if tiny:
                res = bench_models(pair, frames=4, size=32, batch=2, repeats=1, threads=None,
                                   device=dev, amp=amp)
            else:
                res = bench_models(pair, frames=None, size=None, batch=8, repeats=repeats,
                                   threads=None, device=dev, amp=amp)
        except torch.cuda.OutOfMemoryError:
            res = {"models": list(pair), "status": "out of memory"}
            torch.cuda.empty_cache()
        r["steps"].append(res)
    sections["steps"] = time.perf_counter() - t0

    # 4. eval
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vcorr-bench-gpu-") as tmp:
        if data is None:
            from vcorr.pipelines.bench.loader import make_synthetic_dataset

            say("making synthetic videos for the eval figure")
            folder = Path(workdir) if workdir is not None else Path(tmp)
            data = make_synthetic_dataset(folder / "eval_data", videos=20, seconds=6.0,
                                          workers=max(1, min(8, os.cpu_count() or 1)))
        say("eval")
        if tiny:
            r["eval"] = bench_eval(data, "c2d_r18", clips=10, crops=3, frames=4, crop=28,
                                   short_side=None, max_views=30, workers=0, videos=2,
                                   warmup=1, device=str(dev))
        else:
            r["eval"] = bench_eval(data, "c2d_r18", clips=10, crops=3, frames=8, crop=112,
                                   short_side=128, max_views=30,
                                   workers=max(1, min(6, (os.cpu_count() or 2) - 2)),
                                   videos=16, warmup=2, device=str(dev))
    sections["eval"] = time.perf_counter() - t0
    r["seconds"] = {**sections, "total": time.perf_counter() - t_start}
    return r


def _triton_version() -> str | None:
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        import triton
    except ImportError:
        return None
    return getattr(triton, "__version__", "unknown")


# --- the tables ----------------------------------------------------------------------------

def _ms(row: dict | None) -> str:
    if row is None:
        return NOT_MEASURED
    if row.get("status") != "ok":
        return row.get("status", NOT_MEASURED)
    return f"{row['best_s'] * 1e3:.2f} ms"


def _mib(row: dict | None) -> str:
    if row is None or row.get("status") != "ok":
        return NOT_MEASURED if row is None else "-"
    return f"{row['peak_bytes'] / 2 ** 20:.0f} MiB"


def _x(value: float | None, fmt: str = "{:.1f}x") -> str:
    return NOT_MEASURED if value is None else fmt.format(value)


def gpu_markdown(r: dict | None = None) -> str:
    """The README's GPU tables from :func:`run_gpu_bench`'s result; ``None``: the same tables
    with every figure "not measured" (how the README shows them before a GPU run)."""
    if r:
        title = (f"GPU: {r['device_name']}, torch {r['torch']}, CUDA {r['cuda']}, "
                 f"Triton {r['triton']}")
        if r.get("tiny"):
            title += " (tiny check, not a measurement)"
    else:
        title = f"GPU: {NOT_MEASURED}"
    header = ("| correlation fwd+bwd | dtype | Triton | PyTorch loop | unfold | Triton vs loop "
              "(>= 5x) | Triton vs unfold (>= 10x) | Triton peak / unfold peak (<= 0.1) |")
    lines = [title, "", header, "|---|---|---|---|---|---|---|---|"]
    cases = r["correlation"] if r else [
        {"name": "CorrNet-26 res2 (8x64x16x56x56, K=7, D=2, G=2)", "results": {}},
        {"name": "DCF X3D-S largest stage (batch 8)", "results": {}}]
    for case in cases:
        label = case["name"]
        if "input_shape" in case:
            label += f" ({'x'.join(map(str, case['input_shape']))}, K={case['kernel_size']})"
        for dname in DTYPES:
            res = case["results"].get(dname, {})
            m = res.get("methods", {})
            cells = [f"{_ms(m.get(k))}, {_mib(m.get(k))}" if m.get(k, {}).get("status") == "ok"
                     else _ms(m.get(k)) for k in METHODS]
            lines.append(f"| {label} | {dname} | " + " | ".join(cells) + " | "
                         f"{_x(res.get('triton_vs_loop'))} | {_x(res.get('triton_vs_unfold'))} | "
                         f"{_x(res.get('memory_vs_unfold'), '{:.3f}')} |")
    lines += ["", "| training step, batch 8, bf16 | ms | peak | ratio (<= 1.3x) |",
              "|---|---|---|---|"]
    for i, pair in enumerate(STEP_PAIRS):
        res = r["steps"][i] if r else None
        for j, model in enumerate(pair):
            row = res["results"][model] if res and "results" in res else None
            if row is None:
                what = res["status"] if res else NOT_MEASURED
                lines.append(f"| `{model}` | {what} | {what} | {what} |")
                continue
            shape = "x".join(map(str, row["input_shape"][2:]))
            ratio = f"{row['time_ratio']:.2f}x" if j == 0 else "base"
            lines.append(f"| `{model}` {shape} | {row['step_best_s'] * 1e3:.0f} | "
                         f"{row['peak_bytes'] / 2 ** 30:.2f} GiB | {ratio} |")
    k = r["knn"] if r else None
    lines += ["", ("| CP k-NN (B=8, C=128, 8x28x28, k=8) | chunked | naive B*N^2 | matmul floor | "
                   "peak (chunked) |"), "|---|---|---|---|---|"]
    if k:
        cells = [f"{k[key] * 1e3:.2f} ms" for key in ("chunked_best_s", "naive_best_s",
                                                       "floor_best_s")]
        cells.append(f"{k['chunked_peak_bytes'] / 2 ** 20:.1f} MiB")
    else:
        cells = [NOT_MEASURED] * 4
    lines.append("| time, peak memory | " + " | ".join(cells) + " |")
    e = r["eval"] if r else None
    lines += ["", ("| `vcorr eval`, `c2d_r18`, 10 clips x 3 crops of 8x112x112 | views/s | "
                   "time outside the model (<= 15%) |"), "|---|---|---|"]
    if e:
        lines.append(f"| {e['videos']} videos, {e['workers']} loader workers | "
                     f"{e['views_per_s']:.0f} | {100 * e['overhead_share']:.1f}% |")
    else:
        lines.append(f"| {NOT_MEASURED} | {NOT_MEASURED} | {NOT_MEASURED} |")
    return "\n".join(lines) + "\n"
