"""Memory-frugal spatio-temporal correlation for CorrNet and DCF, in pure PyTorch.

One operator serves both papers:

* CorrNet (Wang et al., "Video Modeling with Correlation Networks", Sec. 3): frame ``t`` is
  matched with frame ``t-1`` (frame 0 with itself), a learnable weight per channel, time step
  and displacement multiplies every channel product, and the products are averaged over the
  ``C/G`` channels of each group ("groupwise correlation").
* DCF ("Dense Correlation Fields", Sec. 3.1-3.2, Algorithm 1, Fig. 3): frame ``t`` is matched
  with the ``L`` frames before and the ``L`` frames after it, the dilation grows with the
  temporal step, and the dot product is scaled by ``1/sqrt(C)`` with no parameters.

Definition, for input ``x`` of shape (B, C, T, H, W), temporal offset ``tau`` with spatial
dilation ``d``, group ``g`` with channel set ``c(g)`` of size ``Cg = C/G`` and displacement
``(dy, dx) = ((iy - r) * d, (ix - r) * d)``, ``r = K // 2``, ``iy, ix = 0..K-1``::

    out[b, g*K*K + iy*K + ix, t, h, w] =
        scale * sum_{c in c(g)} weight[c, t, iy, ix] * x[b, c, t, h, w]
                                * x[b, c, t + tau, h + dy, w + dx]

Positions outside the frame are zeros. A frame ``t + tau`` outside the clip is either the frame
``t`` itself (``clip_ends="self"``, CorrNet) or a zero frame (``clip_ends="zero"``, DCF). With
several offsets the output stacks them offset-major: channel ``p*G*K*K + g*K*K + iy*K + ix``
for the ``p``-th offset in the order given (DCF: -L..-1, +1..+L).

Memory: the (C*K*K*T*H*W) neighbourhood tensor of the unfold formulation is never built. The
forward keeps one zero-padded copy of the input and loops over the K*K displacements, each a
shifted *view* of it; the backward recomputes the products instead of storing them. Work is
done in blocks of frames sized to stay in the CPU cache, so the K*K passes over a block hit
cache rather than DRAM.

Backends: this file is the PyTorch implementation, the CPU path and the reference. On CUDA
tensors (fp32/fp16/bf16) the Triton kernels of :mod:`vcorr.models.ops.triton_correlation` run
instead when ``triton`` imports. ``correlation(..., backend=...)`` chooses per call:
``"auto"`` (that rule), ``"torch"`` or ``"triton"``; ``backend=None`` takes the module default
:data:`DEFAULT_BACKEND`, set from the environment variable ``VCORR_CORRELATION``
(``auto``/``torch``/``triton``, default ``auto``) at import and changed by
:func:`set_default_backend`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "BACKENDS",
    "DenseCorrelation",
    "LearnableCorrelation",
    "correlation",
    "corrnet_correlation",
    "dcf_correlation",
    "dcf_offsets",
    "set_default_backend",
]

# Elements (frames x channels x pixels) per block: ~2 MiB of fp32 per operand keeps the three
# operands of a displacement step (query block, shifted view, product buffer) inside the L3 cache
# while still giving each elementwise kernel enough work to spread over threads.
_CPU_BLOCK_ELEMENTS = 1 << 19

BACKENDS = ("auto", "torch", "triton")
# The backend when a call names none; VCORR_CORRELATION=torch|triton|auto sets it per process.
DEFAULT_BACKEND: str = os.environ.get("VCORR_CORRELATION", "auto").strip().lower() or "auto"
_triton_module = None  # models.ops.triton_correlation once imported, False if triton is absent


@dataclass(frozen=True)
class _Config:
    """Static description of one correlation call (everything except the tensors)."""

    kernel_size: int
    groups: int
    offsets: tuple[int, ...]
    dilations: tuple[int, ...]
    clip_ends: str
    scale: float
    block_elements: int | None
    backend: str = "torch"


@dataclass(frozen=True)
class _Block:
    """Output frames ``t0:t1`` of batch items ``b0:b1`` matched with frames ``s0:s0+t1-t0``."""

    pair: int
    b0: int
    b1: int
    t0: int
    t1: int
    s0: int


def dcf_offsets(temporal_range: int) -> tuple[int, ...]:
    """DCF's temporal offsets in output order: -L..-1, +1..+L (DCF Sec. 3.2, Fig. 3b)."""
    if temporal_range < 1:
        raise ValueError(f"temporal_range must be >= 1, got {temporal_range}")
    return tuple(range(-temporal_range, 0)) + tuple(range(1, temporal_range + 1))


def _segments(tau: int, frames: int, clip_ends: str) -> list[tuple[int, int, int]]:
    """Runs ``(t0, t1, s0)`` of output frames whose partner frames are ``s0 .. s0 + t1 - t0``.

    Splitting the partner map into runs of constant shift lets every block use a plain slice
    (a view) of the padded input instead of a gathered copy.
    """
    lo, hi = max(0, -tau), min(frames, frames - tau)
    runs: list[tuple[int, int, int]] = []
    if lo < hi:
        runs.append((lo, hi, lo + tau))
    if clip_ends == "self":  # frames without a partner are matched with themselves
        lo, hi = min(lo, frames), max(hi, 0)
        if lo > 0:
            runs.append((0, lo, 0))
        if hi < frames:
            runs.append((hi, frames, hi))
    return runs


def _blocks(cfg: _Config, shape: Sequence[int], device: torch.device) -> list[_Block]:
    """Cut every (offset, run) into blocks of whole frames that fit the cache budget."""
    batch, channels, frames, height, width = shape
    budget = cfg.block_elements
    if budget is None:
        # On CPU the K*K passes must hit cache; on an accelerator fewer, larger kernels win.
        budget = _CPU_BLOCK_ELEMENTS if device.type == "cpu" else 1 << 62
    per_frame = max(1, channels * height * width)
    max_frames = max(1, budget // per_frame)
    blocks: list[_Block] = []
    for pair, tau in enumerate(cfg.offsets):
        for t0, t1, s0 in _segments(tau, frames, cfg.clip_ends):
            n = t1 - t0
            if n <= max_frames:  # whole runs, several batch items per block
                nb = max(1, max_frames // n)
                for b0 in range(0, batch, nb):
                    blocks.append(_Block(pair, b0, min(batch, b0 + nb), t0, t1, s0))
            else:
                for b0 in range(batch):
                    for u0 in range(t0, t1, max_frames):
                        u1 = min(t1, u0 + max_frames)
                        blocks.append(_Block(pair, b0, b0 + 1, u0, u1, s0 + u0 - t0))
    return blocks


def _padded_frames(x: Tensor, pad: int) -> Tensor:
    """(B, C, T, H, W) -> zero-padded (B, T, C, H + 2 pad, W + 2 pad), frame-major.

    Frame-major layout makes a block of frames one slab, and the spatial zero padding turns
    every displacement into a plain slice (a view) of this one tensor.
    """
    b, c, t, h, w = x.shape
    xp = x.new_empty(b, t, c, h + 2 * pad, w + 2 * pad)
    if pad:  # zero only the ring; the centre is overwritten just below
        xp[..., :pad, :].zero_()
        xp[..., h + pad:, :].zero_()
        xp[..., pad:h + pad, :pad].zero_()
        xp[..., pad:h + pad, w + pad:].zero_()
    xp[:, :, :, pad:pad + h, pad:pad + w] = x.transpose(1, 2)
    return xp


def _weight_table(weight: Tensor | None, cfg: _Config, channels: int) -> Tensor | None:
    """(C, Tw, K, K) -> scaled (Tw, K*K, G, Cg): the per-frame rows the kernels index."""
    if weight is None:
        return None
    kk = cfg.kernel_size ** 2
    tw = weight.shape[1]
    table = (weight * cfg.scale).reshape(channels, tw, kk).permute(1, 2, 0)
    return table.reshape(tw, kk, cfg.groups, channels // cfg.groups).contiguous()


def _displacements(cfg: _Config, pair: int, pad: int) -> list[tuple[int, int, int]]:
    """``(j, oy, ox)``: output slot ``j = iy*K + ix`` and the window origin in the padded frame."""
    k, r, dil = cfg.kernel_size, cfg.kernel_size // 2, cfg.dilations[pair]
    return [(iy * k + ix, pad + (iy - r) * dil, pad + (ix - r) * dil)
            for iy in range(k) for ix in range(k)]


def _forward(x: Tensor, weight: Tensor | None, cfg: _Config) -> Tensor:
    b, c, t, h, w = x.shape
    g, kk = cfg.groups, cfg.kernel_size ** 2
    cg, hw = c // g, h * w
    pad = (cfg.kernel_size // 2) * max(cfg.dilations)
    xp = _padded_frames(x, pad)
    table = _weight_table(weight, cfg, c)
    # Under clip_ends="zero" the offsets that leave the clip are never written: zero them.
    alloc = x.new_zeros if cfg.clip_ends == "zero" else x.new_empty
    out = alloc(b, len(cfg.offsets), g, kk, t, hw)
    buf = None
    for blk in _blocks(cfg, x.shape, x.device):
        nb, nt = blk.b1 - blk.b0, blk.t1 - blk.t0
        shape6 = (nb, nt, g, cg, h, w)
        # A contiguous copy of the query frames: read K*K times, so dense reads pay off.
        a = xp[blk.b0:blk.b1, blk.t0:blk.t1, :, pad:pad + h, pad:pad + w].contiguous()
        a = a.view(shape6)
        if buf is None or buf.numel() < a.numel():
            buf = x.new_empty(a.numel())
        prod = buf[: a.numel()].view(shape6)
        flat = prod.view(nb * nt * g, cg, hw)
        partners = xp[blk.b0:blk.b1, blk.s0:blk.s0 + nt]
        if table is not None:
            wt = table[blk.t0:blk.t1] if table.shape[0] > 1 else table
            # (K*K, nb*nt*g, 1, cg): the weight rows of every frame of the block.
            wt = wt.transpose(0, 1).unsqueeze(1).expand(kk, nb, nt, g, cg)
            wt = wt.reshape(kk, nb * nt * g, 1, cg)
        dst = out[blk.b0:blk.b1, blk.pair, :, :, blk.t0:blk.t1].transpose(1, 3)
        for j, oy, ox in _displacements(cfg, blk.pair, pad):
            torch.mul(a, partners[:, :, :, oy:oy + h, ox:ox + w].view(shape6), out=prod)
            if table is None:
                res = flat.sum(dim=1)
            else:  # weighted channel sum of each group as one batched mat-vec product
                res = torch.bmm(wt[j], flat)
            dst[:, :, j].copy_(res.view(nb, nt, g, hw))
    if table is None:
        out.mul_(cfg.scale)
    return out.view(b, -1, t, h, w)


def _backward(
    x: Tensor, weight: Tensor | None, grad_out: Tensor, cfg: _Config, need_x: bool, need_w: bool
) -> tuple[Tensor | None, Tensor | None]:
    b, c, t, h, w = x.shape
    g, kk = cfg.groups, cfg.kernel_size ** 2
    cg, hw = c // g, h * w
    pad = (cfg.kernel_size // 2) * max(cfg.dilations)
    table = _weight_table(weight, cfg, c)
    if not need_x and not (need_w and table is not None):
        return None, None
    xp = _padded_frames(x, pad)  # recomputed: only x and the weight were saved
    # grad_out as (B, P, K*K, T, G, H, W), a strided view: no copy of the output's size.
    go = grad_out.view(b, len(cfg.offsets), g, kk, t, h, w).permute(0, 1, 3, 4, 2, 5, 6)
    # Gradient w.r.t. the padded frames: the query term lands in the centre, the partner term
    # in the shifted window; the padding ring is dropped at the end (zero padding).
    gxp = torch.zeros_like(xp) if need_x else None
    gw_frames = x.new_zeros(b, t, kk, c) if (need_w and table is not None) else None
    buf_p = buf_s = None
    for blk in _blocks(cfg, x.shape, x.device):
        nb, nt = blk.b1 - blk.b0, blk.t1 - blk.t0
        shape6 = (nb, nt, g, cg, h, w)
        n_el = nb * nt * c * hw
        centre = (slice(blk.b0, blk.b1), slice(blk.t0, blk.t1), slice(None),
                  slice(pad, pad + h), slice(pad, pad + w))
        a = xp[centre].contiguous().view(shape6)  # dense: read 2 K*K times
        partners = xp[blk.b0:blk.b1, blk.s0:blk.s0 + nt]
        ga = gxp[centre].view(shape6) if gxp is not None else None
        gpartners = gxp[blk.b0:blk.b1, blk.s0:blk.s0 + nt] if gxp is not None else None
        gos = go[blk.b0:blk.b1, blk.pair, :, blk.t0:blk.t1]  # (nb, K*K, nt, g, h, w)
        if table is not None:
            if buf_p is None or buf_p.numel() < n_el:
                buf_p, buf_s = x.new_empty(n_el), x.new_empty(n_el)
            prod, s = buf_p[:n_el].view(shape6), buf_s[:n_el].view(shape6)
            wt = table[blk.t0:blk.t1] if table.shape[0] > 1 else table
            wt = wt.transpose(0, 1)[:, None, :, :, :, None, None]  # (K*K, 1, nt|1, g, cg, 1, 1)
        for j, oy, ox in _displacements(cfg, blk.pair, pad):
            shifted = partners[:, :, :, oy:oy + h, ox:ox + w].view(shape6)
            gk = gos[:, j].unsqueeze(3)  # (nb, nt, g, 1, h, w): broadcast over group channels
            if table is None:  # no weight: fused scaled multiply-accumulates, no buffers
                ga.addcmul_(gk, shifted, value=cfg.scale)
                gpartners[:, :, :, oy:oy + h, ox:ox + w].view(shape6).addcmul_(
                    gk, a, value=cfg.scale)
                continue
            if gw_frames is not None:
                # d/dweight: products of the pair, contracted with grad_out over pixels.
                torch.mul(a, shifted, out=prod)
                dots = torch.bmm(prod.view(nb * nt * g, cg, hw),
                                 gk.reshape(nb * nt * g, hw, 1))
                gw_frames[blk.b0:blk.b1, blk.t0:blk.t1, j] += dots.view(nb, nt, c)
            if gxp is not None:
                torch.mul(gk, wt[j], out=s)  # weight x grad_out, per channel
                ga.addcmul_(s, shifted)
                gpartners[:, :, :, oy:oy + h, ox:ox + w].view(shape6).addcmul_(s, a)
    grad_x = grad_w = None
    if gxp is not None:
        grad_x = gxp[:, :, :, pad:pad + h, pad:pad + w].transpose(1, 2).contiguous()
    if gw_frames is not None and weight is not None:
        gw = gw_frames.sum(dim=0) * cfg.scale  # (T, K*K, C)
        if weight.shape[1] == 1:
            gw = gw.sum(dim=0, keepdim=True)
        grad_w = gw.permute(2, 0, 1).reshape(weight.shape)
    return grad_x, grad_w


def _triton():
    """The Triton kernels module, or ``None`` when ``triton`` does not import (tried once)."""
    global _triton_module
    if _triton_module is None:
        try:
            from vcorr.models.ops import triton_correlation
        except ImportError:
            _triton_module = False
        else:
            _triton_module = triton_correlation
    return _triton_module or None


def set_default_backend(name: str) -> None:
    """Set the backend of calls that name none (``"auto"``, ``"torch"`` or ``"triton"``).

    Raises:
        ValueError: an unknown name.
    """
    global DEFAULT_BACKEND
    if name not in BACKENDS:
        raise ValueError(f"correlation backend must be one of {BACKENDS}, got {name!r}")
    DEFAULT_BACKEND = name


def _pick_backend(backend: str | None, x: Tensor, weight: Tensor | None) -> str:
    """``"torch"`` or ``"triton"`` for this call (rule in the module doc).

    Raises:
        ValueError: unknown backend name, or ``"triton"`` for tensors the kernels do not take.
        RuntimeError: ``"triton"`` asked for and ``triton`` does not import.
    """
    choice = DEFAULT_BACKEND if backend is None else backend
    if choice not in BACKENDS:
        source = "backend" if backend is not None else "VCORR_CORRELATION / DEFAULT_BACKEND"
        raise ValueError(f"{source} must be one of {BACKENDS}, got {choice!r}")
    if choice == "torch":
        return "torch"
    if choice == "auto":
        # Plain checks on device and dtype only, so the choice is static under torch.compile;
        # CPU tensors never import triton.
        if x.device.type != "cuda":
            return "torch"
        kernels = _triton()
        dtypes = [x.dtype] + ([weight.dtype] if weight is not None else [])
        if kernels is None or any(d not in kernels.DTYPES for d in dtypes):
            return "torch"  # fp64 keeps its precision on the PyTorch path
        return "triton"
    kernels = _triton()
    if kernels is None:
        raise RuntimeError("correlation backend 'triton' needs the triton package, which "
                           "does not import here")
    kernels.check_inputs(x, weight)
    return "triton"


def _triton_args(cfg: _Config) -> dict:
    return {"kernel_size": cfg.kernel_size, "groups": cfg.groups, "offsets": cfg.offsets,
            "dilations": cfg.dilations, "clip_ends": cfg.clip_ends, "scale": cfg.scale}


# The operator is registered as two custom ops (torch.library), forward and backward, so that
# torch.compile keeps it as one opaque node of the graph: its Python loops over blocks are
# not traced, and neither forward nor backward breaks the graph. The ops take the fields of
# _Config as plain arguments (a custom op's schema has no dataclasses).
def _cfg(kernel_size: int, groups: int, offsets: list[int], dilations: list[int],
         clip_ends: str, scale: float, block_elements: int | None, backend: str) -> _Config:
    return _Config(kernel_size, groups, tuple(offsets), tuple(dilations), clip_ends, scale,
                   block_elements, backend)


@torch.library.custom_op("vcorr::correlation", mutates_args=())
def _correlation_op(x: Tensor, weight: Tensor | None, kernel_size: int, groups: int,
                    offsets: list[int], dilations: list[int], clip_ends: str, scale: float,
                    block_elements: int | None, backend: str) -> Tensor:
    cfg = _cfg(kernel_size, groups, offsets, dilations, clip_ends, scale, block_elements, backend)
    if backend == "triton":
        return _triton().forward(x, weight, **_triton_args(cfg))
    return _forward(x, weight, cfg)


@_correlation_op.register_fake
def _(x, weight, kernel_size, groups, offsets, dilations, clip_ends, scale, block_elements,
      backend):
    b, _c, t, h, w = x.shape
    return x.new_empty(b, len(offsets) * groups * kernel_size * kernel_size, t, h, w)


@torch.library.custom_op("vcorr::correlation_backward", mutates_args=())
def _correlation_backward_op(x: Tensor, weight: Tensor | None, grad_out: Tensor,
                             kernel_size: int, groups: int, offsets: list[int],
                             dilations: list[int], clip_ends: str, scale: float,
                             block_elements: int | None, backend: str, need_x: bool,
                             need_w: bool) -> tuple[Tensor, Tensor]:
    """(grad_x, grad_weight); an empty tensor for a gradient not asked for."""
    cfg = _cfg(kernel_size, groups, offsets, dilations, clip_ends, scale, block_elements, backend)
    if backend == "triton":
        grad_x, grad_w = _triton().backward(x, weight, grad_out, need_x=need_x, need_w=need_w,
                                            **_triton_args(cfg))
    else:
        grad_x, grad_w = _backward(x, weight, grad_out.contiguous(), cfg, need_x, need_w)
    return (x.new_empty(0) if grad_x is None else grad_x,
            x.new_empty(0) if grad_w is None else grad_w)


@_correlation_backward_op.register_fake
def _(x, weight, grad_out, kernel_size, groups, offsets, dilations, clip_ends, scale,
      block_elements, backend, need_x, need_w):
    return (torch.empty_like(x) if need_x else x.new_empty(0),
            torch.empty_like(weight) if need_w and weight is not None else x.new_empty(0))


def _correlation_setup(ctx, inputs, output) -> None:
    x, weight, *args = inputs
    ctx.save_for_backward(x, weight)
    ctx.args = args


def _correlation_grad(ctx, grad_out: Tensor):
    """Saves only the inputs and recomputes the products (first-order gradients only)."""
    x, weight = ctx.saved_tensors
    need_x = ctx.needs_input_grad[0]
    need_w = weight is not None and ctx.needs_input_grad[1]
    grad_x, grad_w = _correlation_backward_op(x, weight, grad_out, *ctx.args, need_x, need_w)
    return (grad_x if need_x else None, grad_w if need_w else None) + (None,) * len(ctx.args)


_correlation_op.register_autograd(_correlation_grad, setup_context=_correlation_setup)


def correlation(
    x: Tensor,
    weight: Tensor | None = None,
    *,
    kernel_size: int,
    groups: int = 1,
    offsets: Sequence[int] = (-1,),
    dilations: Sequence[int] | int = 1,
    clip_ends: str = "self",
    scale: float | None = None,
    block_elements: int | None = None,
    backend: str | None = None,
) -> Tensor:
    """General groupwise, optionally weighted, spatio-temporal correlation (see module doc).

    Args:
        x: features (B, C, T, H, W).
        weight: optional per-channel, per-time-step, per-displacement weight (C, T, K, K), or
            (C, 1, K, K) shared over time (CorrNet Sec. 3 "learnable correlation operator").
            Shared by all offsets.
        kernel_size: K, odd; displacements on a K x K grid.
        groups: G; the products are summed over the C/G channels of each group (Sec. 3
            "groupwise correlation operator"), then multiplied by ``scale``.
        offsets: temporal offsets ``tau``; the output stacks them in this order.
        dilations: spatial dilation per offset (one int for all).
        clip_ends: ``"self"``: a frame whose partner lies outside the clip is matched with
            itself (CorrNet); ``"zero"``: with a zero frame, giving zero output (DCF).
        scale: factor on the group sums; default ``1 / (C/G)`` (the group mean, CorrNet Eq. 1).
        block_elements: frames x channels x pixels processed per block (cache tuning of
            the PyTorch path); default chosen per device.
        backend: ``"auto"`` (Triton kernels for CUDA tensors in fp32/fp16/bf16 when
            ``triton`` imports, else PyTorch), ``"torch"`` (this module's operator, any
            device) or ``"triton"`` (:mod:`vcorr.models.ops.triton_correlation`; CUDA tensors, or
            CPU tensors under ``TRITON_INTERPRET=1``); ``None``: :data:`DEFAULT_BACKEND`
            (environment variable ``VCORR_CORRELATION``). Same values and gradients up to
            fp32 rounding; Triton sums fp16/bf16 inputs in fp32 and returns x's dtype.

    Shape:
        (B, C, T, H, W) -> (B, len(offsets) * G * K * K, T, H, W).

    Raises:
        ValueError: bad shapes or arguments, an unknown backend, or ``"triton"`` for tensors
            the kernels do not take (CPU without the interpreter, fp64, mixed devices).
        RuntimeError: ``backend="triton"`` and ``triton`` does not import.
    """
    if x.dim() != 5:
        raise ValueError(f"correlation expects (B, C, T, H, W), got shape {tuple(x.shape)}")
    channels, frames = x.shape[1], x.shape[2]
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if groups < 1 or channels % groups:
        raise ValueError(f"groups={groups} must divide the {channels} channels")
    offsets = tuple(int(o) for o in offsets)
    if not offsets:
        raise ValueError("need at least one temporal offset")
    if isinstance(dilations, int):
        dilations = (dilations,) * len(offsets)
    dilations = tuple(int(d) for d in dilations)
    if len(dilations) != len(offsets) or min(dilations) < 1:
        raise ValueError(f"need one dilation >= 1 per offset, got {dilations} for {offsets}")
    if clip_ends not in ("self", "zero"):
        raise ValueError(f"clip_ends must be 'self' or 'zero', got {clip_ends!r}")
    if weight is not None:
        expected = (channels, kernel_size, kernel_size)
        if (weight.dim() != 4 or (weight.shape[0], weight.shape[2], weight.shape[3]) != expected
                or weight.shape[1] not in (1, frames)):
            raise ValueError(
                f"weight must have shape ({channels}, {frames} or 1, {kernel_size}, "
                f"{kernel_size}) for this input, got {tuple(weight.shape)}")
    if scale is None:
        scale = 1.0 / (channels // groups)
    return _correlation_op(x, weight, kernel_size, groups, list(offsets), list(dilations),
                           clip_ends, float(scale), block_elements,
                           _pick_backend(backend, x, weight))


def corrnet_correlation(
    x: Tensor,
    weight: Tensor | None,
    kernel_size: int = 7,
    dilation: int = 2,
    groups: int = 1,
) -> Tensor:
    """CorrNet's learnable groupwise correlation of each frame with the previous one.

    Frame ``t`` (query) is matched with frame ``t-1`` displaced on the K x K grid; frame 0 with
    itself (CorrNet Sec. 3 "From two images to a video clip", Fig. 1d). Each product is
    weighted by ``weight[c, t, iy, ix]`` (``weight=None``: the "w/o filter" ablation, Table 4)
    and averaged over the group's channels. Channel ``g*K*K + iy*K + ix``.

    Shape:
        x (B, C, T, H, W), weight (C, T or 1, K, K) -> (B, G*K*K, T, H, W).
    """
    return correlation(x, weight, kernel_size=kernel_size, groups=groups, offsets=(-1,),
                       dilations=dilation, clip_ends="self")


def dcf_correlation(
    x: Tensor,
    kernel_size: int = 5,
    temporal_range: int = 2,
    dilation: int = 1,
    groups: int = 1,
) -> Tensor:
    """DCF's parameter-free long-term, bi-directional correlation volume.

    Frame ``t`` is matched with frames ``t + tau`` for ``tau = -L..-1, +1..+L`` (DCF Sec. 3.2,
    Fig. 3b, Algorithm 1 ``corr_op``); the dot product is scaled by ``1/sqrt(C/G)``
    (``1/sqrt(C)`` for the paper's G = 1, Eq. 1). The paper enlarges the matching region "as the
    temporal step increases by a dilation factor"; we use dilation ``dilation * |tau|``. Partner
    frames outside the clip and positions outside the frame are zeros. Channel
    ``p*G*K*K + g*K*K + iy*K + ix`` with ``p`` indexing -L..-1, +1..+L.

    Shape:
        (B, C, T, H, W) -> (B, 2L*G*K*K, T, H, W).
    """
    offsets = dcf_offsets(temporal_range)
    channels = x.shape[1] if x.dim() == 5 else 1
    return correlation(
        x, None, kernel_size=kernel_size, groups=groups, offsets=offsets,
        dilations=tuple(dilation * abs(o) for o in offsets), clip_ends="zero",
        scale=1.0 / math.sqrt(max(1, channels // max(1, groups))))


class LearnableCorrelation(nn.Module):
    """CorrNet's learnable groupwise correlation operator (CorrNet Sec. 3, Fig. 1, Table 1).

    Matches frame ``t`` with frame ``t-1`` (frame 0 with itself) on a K x K grid of dilation D,
    weights every channel product by ``weight[c, t, iy, ix]`` and averages over the C/G channels
    of each group. The weight starts at ones, i.e. as the plain groupwise correlation (the paper
    does not state an initialisation).

    Args:
        channels: C, input channels.
        kernel_size: K (paper: 7).
        dilation: D (paper: 2, a 13 x 13 region).
        groups: G; default ``channels // 32`` (the paper's group size g = 32), at least 1.
        num_frames: T the weight is made for; required unless ``share_time``.
        share_time: one weight (C, 1, K, K) for all time steps, so the clip length may change
            (e.g. between training phases); otherwise (C, T, K, K) as in the paper.
        filtered: ``False`` drops the weight (Table 4 "w/o filter" ablation).

    Shape:
        (B, C, T, H, W) -> (B, G*K*K, T, H, W); channel ``g*K*K + iy*K + ix``.
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        dilation: int = 2,
        groups: int | None = None,
        num_frames: int | None = None,
        share_time: bool = False,
        filtered: bool = True,
    ) -> None:
        super().__init__()
        if groups is None:
            groups = max(1, channels // 32)
        if groups < 1 or channels % groups:
            raise ValueError(f"groups={groups} must divide channels={channels}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
        if filtered and not share_time and (num_frames is None or num_frames < 1):
            raise ValueError("num_frames is required for a per-time-step weight "
                             "(or pass share_time=True)")
        self.channels, self.kernel_size, self.dilation = channels, kernel_size, dilation
        self.groups, self.share_time, self.filtered = groups, share_time, filtered
        self.num_frames = None if share_time or not filtered else num_frames
        self.out_channels = groups * kernel_size * kernel_size
        self.weight: nn.Parameter | None
        if filtered:
            steps = 1 if share_time else int(num_frames)  # type: ignore[arg-type]
            self.weight = nn.Parameter(torch.ones(channels, steps, kernel_size, kernel_size))
        else:
            self.register_parameter("weight", None)

    def forward(self, x: Tensor) -> Tensor:
        if self.num_frames is not None and x.dim() == 5 and x.shape[2] != self.num_frames:
            raise ValueError(
                f"this correlation has a weight for {self.num_frames} frames, got a clip of "
                f"{x.shape[2]}; build it with share_time=True to change clip length")
        return corrnet_correlation(x, self.weight, self.kernel_size, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.channels}, kernel_size={self.kernel_size}, dilation={self.dilation}, "
                f"groups={self.groups}, num_frames={self.num_frames}, "
                f"share_time={self.share_time}, filtered={self.filtered}")


class DenseCorrelation(nn.Module):
    """DCF's parameter-free long-term correlation volume (DCF Sec. 3.2, Algorithm 1 line 2).

    Args:
        kernel_size: K (paper: 5).
        temporal_range: L; frames t-L..t-1 and t+1..t+L (paper: 2, 1 in the last stage).
        dilation: base dilation D; offset ``tau`` uses ``D * |tau|``.
        groups: G (paper: 1).

    Shape:
        (B, C, T, H, W) -> (B, 2L*G*K*K, T, H, W); channel ``p*G*K*K + g*K*K + iy*K + ix``,
        ``p`` over offsets -L..-1, +1..+L.
    """

    def __init__(self, kernel_size: int = 5, temporal_range: int = 2, dilation: int = 1,
                 groups: int = 1) -> None:
        super().__init__()
        dcf_offsets(temporal_range)  # validates L
        self.kernel_size, self.temporal_range = kernel_size, temporal_range
        self.dilation, self.groups = dilation, groups
        self.out_channels = 2 * temporal_range * groups * kernel_size * kernel_size

    def forward(self, x: Tensor) -> Tensor:
        return dcf_correlation(x, self.kernel_size, self.temporal_range, self.dilation,
                               self.groups)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, temporal_range={self.temporal_range}, "
                f"dilation={self.dilation}, groups={self.groups}")
