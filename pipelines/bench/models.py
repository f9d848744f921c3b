"""``vcorr bench knn`` and ``vcorr bench models``: the CP module's k-NN and whole-model
training steps on CPU (issue 3).

k-NN (:func:`bench_knn`), by default at B=8, C=128, T x H x W = 8 x 28 x 28 (N = 6272), k=8:

* chunked: :func:`vcorr.models.cp.knn_other_frames`, what the CP module runs;
* naive: :func:`vcorr.models.cp.knn_other_frames_dense`, the whole (B, N, N) float32 distance matrix;
* floor: the distance matmul alone, ``torch.bmm`` of (B, N, C) x (B, C, N) into a preallocated
  (B, N, N) output (no allocation or page faults timed: the strictest form of the floor);
* chunked with BLAS only: the chunked k-NN with :data:`vcorr.models.cp.USE_ONEDNN` off, i.e. on the
  same BLAS as the floor (the default chunked run uses oneDNN's matmul where available).

``same_neighbours``: the chunked and naive indices are identical, or every row where they
differ returns the same float64 distances up to float32 rounding (a tie at float32 precision:
the two orders of near-equal distances are both correct results of a float32 k-NN).
Memory: peak bytes held by tensors during one chunked call (profiler, as in
:mod:`vcorr.pipelines.bench.correlation`), against the naive matrix's B*N^2*4 bytes.
Targets: peak memory <= 1/8 of the naive matrix, time <= 1.5x the floor.

Models (:func:`bench_models`): one training step (``model.train()``, forward, cross-entropy,
backward) per model on random clips, best and median wall time over interleaved repeats, and
the peak tensor memory of one step. The last model is the baseline of the ratios. Target:
``cpnet_r18`` <= 1.3x ``c2d_r18`` per step on CPU.

Timings are wall-clock, best of ``repeats`` (the least disturbed by other processes on a shared
machine) and median; methods are interleaved within each repeat. ``threads`` sets torch's
intra-op threads for the run (1 by default: per-core numbers; a busy machine makes
multi-threaded timings of many small ops erratic).
"""
from __future__ import annotations

import contextlib
import statistics
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from vcorr.pipelines.errors import UserError

KNN_TIME_TARGET = 1.5          # chunked k-NN time / matmul floor
KNN_MEMORY_TARGET = 1 / 8      # chunked k-NN peak memory / naive B*N^2*4 bytes
MODELS_TIME_TARGET = 1.3       # cpnet_r18 step / c2d_r18 step


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` intra-op threads (None or 0: leave torch's setting)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def _time_interleaved(fns: dict[str, Callable[[], object]], repeats: int,
                      say: Callable[[str], None], device: torch.device | None = None,
                      warmup: dict[str, float] | None = None) -> dict[str, list[float]]:
    """Wall times of every function, one warm-up each, then ``repeats`` interleaved rounds.
    On CUDA each call is timed up to the end of its kernels (:func:`vcorr.pipelines.runtime.time_call`).
    ``warmup``, if given, receives each warm-up call's time (compilation, for compiled models)."""
    from vcorr.pipelines.runtime import time_call

    dev = device or torch.device("cpu")
    for name, fn in fns.items():
        say(f"warming up {name}")
        seconds = time_call(fn, dev)
        if warmup is not None:
            warmup[name] = seconds
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(repeats):
        for name, fn in fns.items():
            say(f"timing {name} ({i + 1}/{repeats})")
            times[name].append(time_call(fn, dev))
    return times


def neighbour_agreement(feat: torch.Tensor, got: torch.Tensor, ref: torch.Tensor) -> dict:
    """Compare two k-NN results on ``feat`` (B, C, N): identical rows, and for the others whether
    the float64 distances of the returned neighbours, in the returned order (nearest first),
    agree up to float32 rounding.

    The tolerance per row is ``2^-16 * (|q|^2 + max_j |x_j|^2)``: a float32 distance
    ``|q|^2 + |x|^2 - 2 q.x`` carries rounding errors of a few 2^-24 of those magnitudes,
    accumulated over C products, so rankings of distances closer than that are arbitrary.
    """
    b, c, n = feat.shape
    k = got.shape[-1]
    differing = (got != ref).any(dim=2)                        # (B, N)
    rows = differing.nonzero().tolist()
    worst_gap, beyond = 0.0, 0
    if rows:
        f = feat.double().transpose(1, 2)                      # (B, N, C)
        norms = f.pow(2).sum(-1)                               # (B, N)
        bi = torch.tensor([r[0] for r in rows])
        qi = torch.tensor([r[1] for r in rows])
        q = f[bi, qi]                                          # (R, C)

        def dists(idx: torch.Tensor) -> torch.Tensor:
            nb = f[bi.unsqueeze(1), idx[bi, qi]]                # (R, k, C)
            return (nb - q.unsqueeze(1)).pow(2).sum(-1)

        gap = (dists(got) - dists(ref)).abs().max(dim=1).values
        tol = 2.0 ** -16 * (norms[bi, qi] + norms.max(dim=1).values[bi])
        worst_gap = float(gap.max())
        beyond = int((gap > tol).sum())
    return {"rows": b * n, "k": k, "rows_identical": b * n - len(rows),
            "rows_differing": len(rows), "rows_differing_beyond_float32_ties": beyond,
            "max_distance_gap": worst_gap, "same": beyond == 0}


def bench_knn(batch: int = 8, channels: int = 128, frames: int = 8, size: int = 28, k: int = 8,
              repeats: int = 3, naive_repeats: int = 1, threads: int | None = 1, seed: int = 0,
              progress: Callable[[str], None] | None = None,
              device: str | torch.device = "cpu") -> dict:
    """Time and measure the chunked k-NN against the naive matrix and the matmul floor on
    ``device`` (CUDA: timed to the end of the kernels, peak memory from the CUDA allocator)."""
    from vcorr.models import cp
    from vcorr.pipelines.runtime import memory_method, peak_memory, resolve_device, time_call

    dev = resolve_device(device)

    for name, value in (("batch", batch), ("channels", channels), ("frames", frames),
                        ("size", size), ("k", k), ("repeats", repeats),
                        ("naive-repeats", naive_repeats)):
        if value < 1:
            raise UserError(f"--{name} must be >= 1, got {value}")
    if frames < 2:
        raise UserError(f"--frames must be >= 2 (neighbours come from other frames), got {frames}")
    frame_size = size * size
    n = frames * frame_size
    if k > n - frame_size:
        raise UserError(f"--k {k} is more than the {n - frame_size} positions outside a frame")
    say = progress or (lambda _msg: None)
    with torch_threads(threads) as used_threads:
        gen = torch.Generator().manual_seed(seed)
        feat = torch.randn(batch, channels, n, generator=gen).to(dev)
        keys_t = feat.transpose(1, 2).contiguous()

        def chunked() -> torch.Tensor:
            return cp.knn_other_frames(feat, k, frame_size)

        def chunked_blas() -> torch.Tensor:
            saved, cp.USE_ONEDNN = cp.USE_ONEDNN, False
            try:
                return cp.knn_other_frames(feat, k, frame_size)
            finally:
                cp.USE_ONEDNN = saved

        say("checking the chunked result against the naive matrix")
        got = chunked()
        naive_out: list[torch.Tensor] = []

        def naive() -> None:
            naive_out[:] = [cp.knn_other_frames_dense(feat, k, frame_size)]

        naive_times = [time_call(naive, dev) for _ in range(naive_repeats)]
        ref = naive_out[0]
        agreement = neighbour_agreement(feat.cpu(), got.cpu(), ref.cpu())
        blas = chunked_blas()
        blas_identical = bool(torch.equal(blas, got))
        blas_same = neighbour_agreement(feat.cpu(), blas.cpu(), ref.cpu())["same"]
        del ref, got, blas

        floor_out = torch.empty(batch, n, n, device=dev)

        def floor() -> torch.Tensor:
            return torch.bmm(keys_t, feat, out=floor_out)

        onednn = dev.type == "cpu" and cp.onednn_linear_available()
        fns = {"floor": floor, "chunked": chunked}
        if onednn:
            fns["chunked_blas"] = chunked_blas
        times = _time_interleaved(fns, repeats, say, dev)
        if "chunked_blas" not in times:
            times["chunked_blas"] = times["chunked"]
        say("measuring peak memory")
        mem_chunked = peak_memory(chunked, dev)
        floor_out = torch.empty(0)        # leave room for the naive run's matrices
        mem_naive = peak_memory(lambda: cp.knn_other_frames_dense(feat, k, frame_size), dev)

    naive_matrix = batch * n * n * 4
    best = {name: min(v) for name, v in times.items()}
    median = {name: statistics.median(v) for name, v in times.items()}
    r = {
        "batch": batch, "channels": channels, "frames": frames, "size": size, "k": k,
        "positions": n, "frame_size": frame_size, "repeats": repeats, "threads": used_threads,
        "device": str(dev), "onednn": onednn,
        "same_neighbours": agreement["same"],
        "agreement": agreement,
        "chunked_blas_identical": blas_identical,
        "chunked_blas_same_neighbours": blas_same,
        "floor_best_s": best["floor"], "floor_median_s": median["floor"],
        "chunked_best_s": best["chunked"], "chunked_median_s": median["chunked"],
        "chunked_blas_best_s": best["chunked_blas"],
        "chunked_blas_median_s": median["chunked_blas"],
        "naive_best_s": min(naive_times), "naive_median_s": statistics.median(naive_times),
        "time_ratio_vs_matmul": best["chunked"] / best["floor"],
        "time_ratio_vs_matmul_median": median["chunked"] / median["floor"],
        "blas_time_ratio_vs_matmul": best["chunked_blas"] / best["floor"],
        "speedup_vs_naive": min(naive_times) / best["chunked"],
        "chunked_peak_bytes": mem_chunked,
        "naive_peak_bytes": mem_naive,
        "naive_matrix_bytes": naive_matrix,
        "peak_memory_ratio_vs_naive": mem_chunked / naive_matrix,
        "memory_method": memory_method(dev).replace("one forward+backward", "one k-NN call"),
        "targets": {"time_ratio_vs_matmul": KNN_TIME_TARGET,
                    "peak_memory_ratio_vs_naive": KNN_MEMORY_TARGET},
    }
    r["targets_met"] = bool(r["same_neighbours"]
                            and r["time_ratio_vs_matmul"] <= KNN_TIME_TARGET
                            and r["peak_memory_ratio_vs_naive"] <= KNN_MEMORY_TARGET)
    return r


def parse_model_list(text: str | Sequence[str]) -> list[str]:
    """``"cpnet_r18,c2d_r18"`` -> registered names; UserError for unknown ones or fewer than 1."""
    from vcorr.models import get_model_entry
    from vcorr.models.registry import UnknownModelError

    names = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    if not names:
        raise UserError("--models needs at least one model name")
    for name in names:
        try:
            get_model_entry(name)
        except UnknownModelError as exc:
            raise UserError(str(exc)) from None
    return names


VARIANTS = ("eager", "compile", "channels_last", "compile+channels_last")


def _variant_label(name: str, variant: str) -> str:
    return name if variant == "eager" else f"{name} [{variant}]"


def bench_models(models: Sequence[str] = ("cpnet_r18", "c2d_r18"), frames: int | None = 8,
                 size: int | None = 112, batch: int = 4, repeats: int = 5,
                 threads: int | None = 1, seed: int = 0,
                 progress: Callable[[str], None] | None = None, *,
                 device: str | torch.device = "cpu", amp: str = "off",
                 variants: Sequence[str] = ("eager",), compile_backend: str = "inductor") -> dict:
    """Training-step time and peak memory of each model; ratios against the last one.

    ``frames``/``size`` None: each model's registered clip size. A model with a per-clip-length
    part (CorrNet's per-time-step weights, TRN's frame count) is built for ``frames``.
    ``amp``: ``"off"``, ``"bf16"`` or ``"fp16"`` (CUDA only): forward and loss under autocast.
    ``variants``: each model is also timed, interleaved with the others, as
    ``"compile"`` (:func:`vcorr.pipelines.runtime.compile_model` with ``compile_backend``; the
    warm-up call, which compiles, is reported as ``warmup_s``), ``"channels_last"``
    (:func:`vcorr.pipelines.runtime.to_channels_last`) or both; ``"eager"`` is the plain model.
    Results: ``results[name]`` is the first variant (eager by default) with its ratios against
    the baseline; ``results[name]["variants"][v]`` every variant with ``speedup_vs_first``.

    Raises:
        UserError: bad sizes, an unknown model or variant, fp16 on the CPU, CUDA absent.
    """
    from vcorr.models import create_model, get_model_entry
    from vcorr.pipelines.runtime import (
        compile_model,
        memory_method,
        peak_memory,
        resolve_device,
        to_channels_last,
    )

    names = parse_model_list(models)
    for name, value in (("frames", frames), ("size", size), ("batch", batch),
                        ("repeats", repeats)):
        if value is not None and value < 1:
            raise UserError(f"--{name} must be >= 1, got {value}")
    variants = list(dict.fromkeys(variants))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise UserError(f"unknown variant(s) {unknown}; expected some of {', '.join(VARIANTS)}")
    if amp not in ("off", "bf16", "fp16"):
        raise UserError(f"--amp must be off, bf16 or fp16, got {amp!r}")
    dev = resolve_device(device)
    if amp == "fp16" and dev.type != "cuda":
        raise UserError("--amp fp16 needs --device cuda (use bf16 on the CPU)")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    say = progress or (lambda _msg: None)
    with torch_threads(threads) as used_threads:
        steps, params, shapes = {}, {}, {}
        for i, name in enumerate(names):
            entry = get_model_entry(name)
            t = frames or entry.input_shape[1]
            hw = size or entry.input_shape[2]
            kw = {"num_frames": t} if "num_frames" in entry.defaults else {}
            gen = torch.Generator().manual_seed(seed)
            clip = torch.randn(batch, entry.input_shape[0], t, hw, hw, generator=gen).to(dev)
            labels = torch.randint(0, entry.num_classes, (batch,), generator=gen).to(dev)
            shapes[name] = list(clip.shape)
            for variant in variants:
                say(f"building {_variant_label(name, variant)}")
                torch.manual_seed(seed + i)
                model = create_model(name, **kw).to(dev)
                model.train()
                params[name] = sum(p.numel() for p in model.parameters())
                if "channels_last" in variant:
                    to_channels_last(model)
                net = compile_model(model, backend=compile_backend) if "compile" in variant else model

                def step(model=model, net=net, clip=clip, labels=labels) -> None:
                    model.zero_grad(set_to_none=True)
                    with torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
                        loss = F.cross_entropy(net(clip).float(), labels)
                    loss.backward()

                steps[_variant_label(name, variant)] = step
        warmup: dict[str, float] = {}
        times = _time_interleaved(steps, repeats, say, dev, warmup)
        peaks = {}
        for label, step in steps.items():
            say(f"measuring peak memory of {label}")
            peaks[label] = peak_memory(step, dev)

    def row(label: str, base_label: str) -> dict:
        return {"step_best_s": min(times[label]), "step_median_s": statistics.median(times[label]),
                "warmup_s": warmup[label], "peak_bytes": peaks[label],
                "time_ratio": min(times[label]) / min(times[base_label]),
                "time_ratio_median": (statistics.median(times[label])
                                      / statistics.median(times[base_label])),
                "peak_memory_ratio": peaks[label] / peaks[base_label]}

    base = names[-1]
    first = variants[0]
    rows = {}
    for name in names:
        per_variant = {}
        for v in variants:
            r = row(_variant_label(name, v), _variant_label(base, v))
            r["speedup_vs_first"] = (min(times[_variant_label(name, first)])
                                     / min(times[_variant_label(name, v)]))
            per_variant[v] = r
        rows[name] = {"params": params[name], "input_shape": shapes[name], **per_variant[first],
                      "variants": per_variant}
    r = {"models": names, "baseline": base, "frames": frames, "size": size, "batch": batch,
         "repeats": repeats, "threads": used_threads, "device": str(dev), "amp": amp,
         "variants": variants, "compile_backend": compile_backend if any(
             "compile" in v for v in variants) else None,
         "torch": torch.__version__,
         "step": "model.train(); forward, cross-entropy, backward",
         "memory_method": memory_method(dev).replace("one forward+backward", "one training step"),
         "results": rows,
         "time_ratio": rows[names[0]]["time_ratio"],
         "time_ratio_median": rows[names[0]]["time_ratio_median"],
         "peak_memory_ratio": rows[names[0]]["peak_memory_ratio"],
         "target_time_ratio": MODELS_TIME_TARGET}
    r["targets_met"] = bool(r["time_ratio"] <= MODELS_TIME_TARGET)
    return r
