"""``vcorr bench correlation``: our correlation operator against the unfold formulation.

Both compute CorrNet's learnable groupwise correlation (CorrNet Sec. 3) forward and backward
(gradients w.r.t. the input and the weight) at one size, by default CorrNet-26's res2 block
(C=64, T=8, 56x56, K=7, D=2, group size 32, batch 2). Reported:

* time: best and median wall time of forward+backward over several runs (best-of is the
  number least disturbed by other processes on a shared machine; speed-up uses it);
* peak memory: the highest total of bytes allocated by tensors during one forward+backward,
  above what was allocated at its start, read from ``torch.profiler``'s allocation events
  (``profile_memory=True``; every CPU allocation and free, in order). The inputs and weight
  exist before and are not counted; the output, gradients and all temporaries are;
* the arithmetic floor: the operation's multiply-adds (counted as the papers do, one per
  channel product: B*T*H*W*C*K*K forward, and three times that again backward for the input
  gradient of the query frame, of the partner frame and for the weight) divided by the
  machine's elementwise multiply-add rate, measured with one large fused ``addcmul_`` whose
  operands do not fit the cache. The same rate measured in-cache is reported beside it.

Issue 4's targets: at least 3x faster than unfold, at most 1/10 of its peak memory.
"""
from __future__ import annotations

import contextlib
import os
import statistics
import sys
from dataclasses import asdict, dataclass
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from vcorr.models.ops import corrnet_correlation
from vcorr.pipelines.errors import UserError

MEMORY_METHOD = ("torch.profiler(profile_memory=True): peak of the running sum of tensor "
                 "allocations and frees during one forward+backward, inputs excluded")


@dataclass(frozen=True)
class CorrelationBenchConfig:
    """Size of the benchmarked correlation; defaults are CorrNet-26's res2 block."""

    batch: int = 2
    channels: int = 64
    frames: int = 8
    size: int = 56
    kernel_size: int = 7
    dilation: int = 2
    group_size: int = 32
    repeats: int = 5
    unfold_repeats: int = 3
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`UserError` with one line naming the bad option."""
        for name in ("batch", "channels", "frames", "size", "kernel_size", "dilation",
                     "group_size", "repeats", "unfold_repeats"):
            if getattr(self, name) < 1:
                raise UserError(f"--{name.replace('_', '-')} must be >= 1, "
                                f"got {getattr(self, name)}")
        if self.kernel_size % 2 == 0:
            raise UserError(f"--kernel-size must be odd, got {self.kernel_size}")
        if self.channels % self.group_size:
            raise UserError(f"--group-size {self.group_size} must divide "
                            f"--channels {self.channels}")

    @property
    def groups(self) -> int:
        return self.channels // self.group_size


def unfold_reference(x: Tensor, weight: Tensor | None, *, kernel_size: int, groups: int,
                     offsets: Sequence[int], dilations: Sequence[int], clip_ends: str,
                     scale: float) -> Tensor:
    """The baseline: materialise every frame's C*K*K neighbourhood with ``F.unfold``, once per
    temporal offset. Same definition and channel order as :func:`vcorr.models.ops.correlation`
    (partner frame ``t + tau``; outside the clip the frame itself, ``clip_ends="self"``, or a
    zero frame, ``"zero"``; weight (C, T or 1, K, K); group sums times ``scale``), so outputs
    compare element by element. Autograd keeps the unfolded tensors.

    Shape:
        (B, C, T, H, W) -> (B, len(offsets) * G * K * K, T, H, W).
    """
    b, c, t, h, w = x.shape
    kk, cg = kernel_size * kernel_size, c // groups
    queries = x.transpose(1, 2).reshape(b, t, groups, cg, 1, h * w)
    wt = None
    if weight is not None:  # (C, T, K, K) -> (1, T, G, Cg, K*K, 1); T = 1 broadcasts
        wt = weight.reshape(c, weight.shape[1], kk).transpose(0, 1)
        wt = wt.reshape(1, weight.shape[1], groups, cg, kk, 1)
    # Frame index t stands for a zero frame (clip_ends="zero").
    padded = torch.cat([x, x.new_zeros(b, c, 1, h, w)], dim=2) if clip_ends == "zero" else x
    outs = []
    for tau, dil in zip(offsets, dilations):
        idx = [s + tau if 0 <= s + tau < t else (s if clip_ends == "self" else t)
               for s in range(t)]
        partners = padded[:, :, idx]
        cols = F.unfold(partners.transpose(1, 2).reshape(b * t, c, h, w), kernel_size,
                        dilation=dil, padding=(kernel_size // 2) * dil)
        prod = cols.view(b, t, groups, cg, kk, h * w) * queries
        if wt is not None:
            prod = prod * wt
        outs.append(prod.sum(dim=3) * scale)                        # (B, T, G, K*K, H*W)
    out = torch.stack(outs, dim=1)                                  # (B, P, T, G, K*K, H*W)
    return out.permute(0, 1, 3, 4, 2, 5).reshape(b, len(outs) * groups * kk, t, h, w)


def unfold_correlation(x: Tensor, weight: Tensor, kernel_size: int, dilation: int,
                       groups: int) -> Tensor:
    """:func:`unfold_reference` for CorrNet's operator (:func:`vcorr.models.ops.corrnet_correlation`:
    frame t against frame t-1, frame 0 against itself, the mean over each group)."""
    return unfold_reference(x, weight, kernel_size=kernel_size, groups=groups, offsets=(-1,),
                            dilations=(dilation,), clip_ends="self",
                            scale=1.0 / (x.shape[1] // groups))


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Silence C-level stderr (the profiler backend logs start/stop lines there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Peak extra bytes held by tensors while ``fn`` runs (CPU), from the profiler's events.

    A run whose events give no allocation above the start is measured again (up to three
    runs; ``fn`` must tolerate being called more than once): in one full-suite run the
    profiler's events gave 0 bytes for a training step, which allocates on every call, and
    0 would have been reported as a measurement. A true 0 (``fn`` allocates nothing) still
    comes back as 0 after the third run.
    """
    from torch.profiler import ProfilerActivity, profile

    peak = 0
    for _ in range(3):
        with _native_stderr_silenced():
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn()
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
        events.sort(key=lambda e: e.start_ns())
        live = peak = 0
        for event in events:
            live += event.nbytes()  # negative for a free
            peak = max(peak, live)
        if peak > 0:
            break
    return peak


def fma_rate(numel: int, repeats: int, device: torch.device | str = "cpu") -> float:
    """Elementwise multiply-adds per second of one fused ``out.addcmul_(a, b)`` on ``numel``."""
    from vcorr.pipelines.runtime import time_call

    dev = torch.device(device)
    a, b = torch.rand(numel, device=dev), torch.rand(numel, device=dev)
    out = torch.zeros(numel, device=dev)
    out.addcmul_(a, b)  # warm-up: page in the buffers
    best = min(time_call(lambda: out.addcmul_(a, b), dev) for _ in range(repeats))
    return numel / best


def _timings(fn: Callable[[], object], repeats: int,
             device: torch.device | str = "cpu") -> list[float]:
    from vcorr.pipelines.runtime import time_call

    dev = torch.device(device)
    fn()  # warm-up: allocator, thread pool, lazy initialisation, kernel compilation
    return [time_call(fn, dev) for _ in range(repeats)]


def run_correlation_bench(cfg: CorrelationBenchConfig,
                          progress: Callable[[str], None] | None = None,
                          device: str | torch.device = "cpu") -> dict:
    """Time and measure both implementations on ``device``; returns the numbers as a flat
    dict. On CUDA, ``corrnet_correlation`` takes the operator's default for CUDA tensors."""
    from vcorr.pipelines.runtime import memory_method, peak_memory, resolve_device

    cfg.validate()
    dev = resolve_device(device)
    say = progress or (lambda _msg: None)
    gen = torch.Generator().manual_seed(cfg.seed)
    shape = (cfg.batch, cfg.channels, cfg.frames, cfg.size, cfg.size)
    k, d, g = cfg.kernel_size, cfg.dilation, cfg.groups
    x = torch.randn(shape, generator=gen).to(dev).requires_grad_()
    weight = (1 + 0.1 * torch.randn(cfg.channels, cfg.frames, k, k, generator=gen)).to(dev)
    weight.requires_grad_()
    grad = torch.randn(cfg.batch, g * k * k, cfg.frames, cfg.size, cfg.size, generator=gen).to(dev)

    def step(op: Callable[..., Tensor]) -> Callable[[], tuple[Tensor, ...]]:
        def run() -> tuple[Tensor, ...]:
            out = op(x, weight, k, d, g)
            # autograd.grad rather than .backward: no gradient accumulation between runs.
            gx, gw = torch.autograd.grad(out, (x, weight), grad)
            return out.detach(), gx, gw
        return run

    ours, unfold = step(corrnet_correlation), step(unfold_correlation)

    say("checking agreement")
    ref, got = unfold(), ours()
    max_abs_error = (got[0] - ref[0]).abs().max().item()
    grad_error = max((a - b).abs().max().item() for a, b in zip(got[1:], ref[1:]))
    del ref, got

    say("timing ours")
    t_ours = _timings(ours, cfg.repeats, dev)
    say("timing unfold")
    t_unfold = _timings(unfold, cfg.unfold_repeats, dev)
    say("measuring peak memory")
    mem_ours = peak_memory(ours, dev)
    mem_unfold = peak_memory(unfold, dev)

    say("measuring multiply-add throughput")
    large = 1 << 24  # 3 x 64 MiB operands: far beyond any cache, like the big tensors
    small = 1 << 15  # 3 x 128 KiB: stays in L2
    rate_large = fma_rate(large, 5, dev)
    rate_cache = max(fma_rate(small, 200, dev), rate_large)
    macs_forward = cfg.batch * cfg.frames * cfg.size * cfg.size * cfg.channels * k * k
    macs = 4 * macs_forward  # forward, query grad, partner grad, weight grad
    best_ours, best_unfold = min(t_ours), min(t_unfold)
    floor = macs / rate_large
    floor_cache = macs / rate_cache
    input_bytes = x.numel() * x.element_size()
    output_bytes = grad.numel() * grad.element_size()
    return {
        "config": asdict(cfg),
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "max_abs_error": max_abs_error,
        "max_abs_grad_error": grad_error,
        "ours_best_s": best_ours,
        "ours_median_s": statistics.median(t_ours),
        "unfold_best_s": best_unfold,
        "unfold_median_s": statistics.median(t_unfold),
        "speedup_vs_unfold": best_unfold / best_ours,
        "speedup_vs_unfold_median": statistics.median(t_unfold) / statistics.median(t_ours),
        "ours_peak_bytes": mem_ours,
        "unfold_peak_bytes": mem_unfold,
        "peak_memory_ratio_vs_unfold": mem_ours / mem_unfold,
        "ours_peak_vs_output": mem_ours / output_bytes,
        "input_bytes": input_bytes,
        "output_bytes": output_bytes,
        "unfolded_bytes": input_bytes * k * k,
        "memory_method": memory_method(dev),
        "multiply_adds": macs,
        "fma_per_s_large": rate_large,
        "fma_per_s_in_cache": rate_cache,
        "floor_s": floor,
        "floor_in_cache_s": floor_cache,
        "ours_vs_floor": best_ours / floor,
        "ours_vs_floor_in_cache": best_ours / floor_cache,
        "unfold_vs_floor": best_unfold / floor,
    }
