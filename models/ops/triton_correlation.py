"""Triton kernels for the correlation operator of CorrNet and DCF: forward and backward.

Same definition as :mod:`vcorr.models.ops.correlation` (CorrNet Sec. 3: learnable groupwise
correlation of frame ``t`` with ``t-1``, per-channel, per-time-step, per-displacement weights,
clip ends matched with themselves; DCF Sec. 3.1-3.2: several temporal offsets, dilation per
offset, zero partner frames outside the clip, scale ``1/sqrt(C)``)::

    out[b, p*G*K*K + g*K*K + iy*K + ix, t, h, w] =
        scale * sum_{c in c(g)} weight[c, t, iy, ix] * x[b, c, t, h, w]
                                * x[b, c, s_p(t), h + dy, w + dx]

with ``(dy, dx) = ((iy - K//2) * d_p, (ix - K//2) * d_p)``, zeros outside the frame and
``s_p(t) = t + tau_p`` (or ``t`` itself / a zero frame when that leaves the clip).

Kernel design (all accumulation in fp32; inputs fp32, fp16 or bf16; any strides):

* Forward: one program per (batch item, frame, tile of ``BLOCK_HW`` pixels, group). It loads
  the query channels of its tile once (when the group fits one channel block) and loops over
  the offsets and the K*K displacements, reading one shifted block of the partner frame per
  displacement and reducing over the group's channels. Nothing of size K*K*C is stored.
* Backward, one kernel for both gradients, a *gather* formulation: one program per (batch
  item, frame ``u``, pixel tile, block of channels) owns ``grad_x[b, c, u, tile]`` and adds up
  every term that lands there -- ``u`` as the query frame (weight x grad_out x shifted
  partner) and ``u`` as the partner of the query frames ``u - tau`` (and of ``u`` itself at
  self-matched clip ends), read at the inversely shifted pixels. Every output element is
  written by exactly one program, so there are no atomics and the result is deterministic
  (atomics would make the sum order, hence fp32 rounding, vary from run to run). The same
  program, in its query pass, also reduces ``grad_out * x_query * x_partner`` over its pixel
  tile into a per-(batch item, tile) partial of the weight gradient; the partials are summed
  afterwards in a fixed order (deterministic again; fp32 buffer of B * tiles * T * K*K * C).
  Products are recomputed, never saved.

Block sizes and warp counts are module constants chosen for register use, not tuned on a GPU.

Testing without a GPU: Triton's interpreter runs these kernels on CPU tensors when
``TRITON_INTERPRET=1`` is in the environment *before triton is first imported* (triton's own
``tl.zeros``/``tl.sum`` are bound at import). ``tests/test_triton_correlation.py`` therefore
runs ``tests/triton_interpreter_checks.py`` in a subprocess.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["DTYPES", "backward", "check_inputs", "forward", "interpreting"]

DTYPES = (torch.float32, torch.float16, torch.bfloat16)  # fp64 stays on the PyTorch path
MAX_BLOCK_C = 32        # channels per program block (forward: per reduction step); powers of 2
MAX_BLOCK_HW_FWD = 128  # pixels per forward program
MAX_BLOCK_HW_BWD = 64   # pixels per backward program (it holds three channel x pixel blocks)
NUM_WARPS = 4
_INT32_LIMIT = 2 ** 31


@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, out_ptr, taus_ptr, dils_ptr,
    T, H, W, n_tiles, num_offsets, groups, scale,
    sxb, sxc, sxt, sxh, sxw,
    swc, swt, swy, swx,
    sob, soc, sot, soh, sow,
    CG: tl.constexpr, KSIZE: tl.constexpr, SELF_ENDS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    pid = tl.program_id(0)
    g = tl.program_id(1)
    tile = pid % n_tiles
    bt = pid // n_tiles
    b64 = (bt // T).to(tl.int64)
    t = bt % T
    hw = tile * BLOCK_HW + tl.arange(0, BLOCK_HW)
    hw_ok = hw < H * W
    h = hw // W
    w = hw % W
    cl = tl.arange(0, BLOCK_C)
    x_b = x_ptr + b64 * sxb
    q_pix = h * sxh + w * sxw
    out_tile = out_ptr + b64 * sob + t * sot + h * soh + w * sow
    if CG <= BLOCK_C:  # the whole group fits one block: load the query once for all K*K
        q_once = tl.load(x_b + t * sxt + (g * CG + cl)[:, None] * sxc + q_pix[None, :],
                         mask=(cl < CG)[:, None] & hw_ok[None, :], other=0.0).to(tl.float32)
    for p in range(num_offsets):
        tau = tl.load(taus_ptr + p)
        dil = tl.load(dils_ptr + p)
        s = t + tau
        inside = ((s >= 0) & (s < T)).to(tl.int32)
        s = s * inside + t * (1 - inside)  # partner outside the clip: the frame itself ...
        live = (inside + SELF_ENDS) > 0     # ... or, for zero clip ends, no partner at all
        for j in range(KSIZE * KSIZE):
            iy = j // KSIZE
            ix = j % KSIZE
            hh = h + (iy - KSIZE // 2) * dil
            ww = w + (ix - KSIZE // 2) * dil
            p_ok = hw_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W) & live
            p_pix = hh * sxh + ww * sxw
            acc = tl.zeros([BLOCK_HW], dtype=tl.float32)
            for c0 in range(0, CG, BLOCK_C):
                c = c0 + cl
                c_ok = c < CG
                c_x = (g * CG + c)[:, None] * sxc
                if CG <= BLOCK_C:
                    q = q_once
                else:
                    q = tl.load(x_b + t * sxt + c_x + q_pix[None, :],
                                mask=c_ok[:, None] & hw_ok[None, :], other=0.0).to(tl.float32)
                xs = tl.load(x_b + s * sxt + c_x + p_pix[None, :],
                             mask=c_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
                prod = q * xs
                if HAS_WEIGHT:
                    wv = tl.load(w_ptr + (g * CG + c) * swc + t * swt + iy * swy + ix * swx,
                                 mask=c_ok, other=0.0).to(tl.float32)
                    prod = prod * wv[:, None]
                acc += tl.sum(prod, axis=0)
            channel = (p * groups + g) * (KSIZE * KSIZE) + j
            tl.store(out_tile + channel * soc, (acc * scale).to(out_ptr.dtype.element_ty),
                     mask=hw_ok)


@triton.jit
def _backward_kernel(
    x_ptr, w_ptr, go_ptr, gx_ptr, gw_ptr, taus_ptr, dils_ptr,
    T, H, W, n_tiles, n_chunks, num_offsets, groups, scale,
    sxb, sxc, sxt, sxh, sxw,
    swc, swt, swy, swx,
    sgb, sgc, sgt, sgh, sgw,
    sdb, sdc, sdt, sdh, sdw,
    CG: tl.constexpr, KSIZE: tl.constexpr, SELF_ENDS: tl.constexpr,
    HAS_WEIGHT: tl.constexpr, NEED_X: tl.constexpr, NEED_W: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_HW: tl.constexpr,
):
    pid = tl.program_id(0)
    gc = tl.program_id(1)
    tile = pid % n_tiles
    bt = pid // n_tiles
    b = bt // T
    b64 = b.to(tl.int64)
    u = bt % T
    g = gc // n_chunks
    c = (gc % n_chunks) * BLOCK_C + tl.arange(0, BLOCK_C)  # channel within the group
    c_ok = c < CG
    cg = g * CG + c                                          # channel within the input
    hw = tile * BLOCK_HW + tl.arange(0, BLOCK_HW)
    hw_ok = hw < H * W
    h = hw // W
    w = hw % W
    x_b = x_ptr + b64 * sxb + cg[:, None] * sxc
    go_b = go_ptr + b64 * sgb
    w_c = w_ptr + cg * swc
    q = tl.load(x_b + u * sxt + (h * sxh + w * sxw)[None, :],
                mask=c_ok[:, None] & hw_ok[None, :], other=0.0).to(tl.float32)
    acc = tl.zeros([BLOCK_C, BLOCK_HW], dtype=tl.float32)
    # Weight-gradient partials, layout (B, n_tiles, T, K*K, C): this program's rows only.
    gw_row = gw_ptr + (((b64 * n_tiles + tile) * T + u) * (KSIZE * KSIZE)) * (groups * CG) + cg
    for p in range(num_offsets):
        tau = tl.load(taus_ptr + p)
        dil = tl.load(dils_ptr + p)
        go_p = go_b + ((p * groups + g) * (KSIZE * KSIZE)) * sgc
        # 1. u is the query frame of the pair (u, s): d/dx_query = weight * grad_out * partner.
        s = u + tau
        inside = ((s >= 0) & (s < T)).to(tl.int32)
        s = s * inside + u * (1 - inside)
        if inside + SELF_ENDS > 0:
            for j in range(KSIZE * KSIZE):
                iy = j // KSIZE
                ix = j % KSIZE
                hh = h + (iy - KSIZE // 2) * dil
                ww = w + (ix - KSIZE // 2) * dil
                p_ok = hw_ok & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
                xs = tl.load(x_b + s * sxt + (hh * sxh + ww * sxw)[None, :],
                             mask=c_ok[:, None] & p_ok[None, :], other=0.0).to(tl.float32)
                gq = tl.load(go_p + j * sgc + u * sgt + h * sgh + w * sgw,
                             mask=hw_ok, other=0.0).to(tl.float32)
                g_xs = gq[None, :] * xs
                if NEED_X:
                    if HAS_WEIGHT:
                        wv = tl.load(w_c + u * swt + iy * swy + ix * swx,
                                     mask=c_ok, other=0.0).to(tl.float32)
                        acc += wv[:, None] * g_xs
                    else:
                        acc += g_xs
                if NEED_W:
                    part = tl.sum(g_xs * q, axis=1)
                    prev = tl.load(gw_row + j * (groups * CG), mask=c_ok, other=0.0)
                    tl.store(gw_row + j * (groups * CG), prev + part, mask=c_ok)
        # 2. u is the partner of query frame tq: d/dx_partner = weight * grad_out * query,
        # gathered from the query pixels (h - dy, w - dx). Query frames: u - tau, and u
        # itself when u is matched with itself at a clip end.
        if NEED_X:
            for which in tl.static_range(2):
                if which == 0:
                    tq = u - tau
                    active = ((tq >= 0) & (tq < T)).to(tl.int32)
                else:
                    tq = u
                    active = (1 - inside) * SELF_ENDS
                if active > 0:
                    for j in range(KSIZE * KSIZE):
                        iy = j // KSIZE
                        ix = j % KSIZE
                        hq = h - (iy - KSIZE // 2) * dil
                        wq = w - (ix - KSIZE // 2) * dil
                        q_ok = hw_ok & (hq >= 0) & (hq < H) & (wq >= 0) & (wq < W)
                        gq = tl.load(go_p + j * sgc + tq * sgt + hq * sgh + wq * sgw,
                                     mask=q_ok, other=0.0).to(tl.float32)
                        xq = tl.load(x_b + tq * sxt + (hq * sxh + wq * sxw)[None, :],
                                     mask=c_ok[:, None] & q_ok[None, :], other=0.0).to(tl.float32)
                        g_xq = gq[None, :] * xq
                        if HAS_WEIGHT:
                            wv = tl.load(w_c + tq * swt + iy * swy + ix * swx,
                                         mask=c_ok, other=0.0).to(tl.float32)
                            g_xq = wv[:, None] * g_xq
                        acc += g_xq
    if NEED_X:
        tl.store(gx_ptr + b64 * sdb + cg[:, None] * sdc + u * sdt + (h * sdh + w * sdw)[None, :],
                 (acc * scale).to(gx_ptr.dtype.element_ty),
                 mask=c_ok[:, None] & hw_ok[None, :])


def interpreting() -> bool:
    """Whether triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def check_inputs(x: Tensor, weight: Tensor | None) -> None:
    """Raise ``ValueError`` unless the kernels can run on these tensors.

    Needs CUDA tensors (or CPU tensors under the interpreter), one device, and fp32, fp16 or
    bf16 (fp64 would silently lose precision in fp32 accumulation: use the PyTorch path).
    """
    tensors = [("x", x)] + ([("weight", weight)] if weight is not None else [])
    for name, tensor in tensors:
        if tensor.dtype not in DTYPES:
            raise ValueError(f"the Triton correlation takes fp32, fp16 or bf16; {name} is "
                             f"{tensor.dtype} (use backend='torch')")
        if tensor.device != x.device:
            raise ValueError(f"{name} is on {tensor.device}, x on {x.device}")
    if x.device.type != "cuda" and not (x.device.type == "cpu" and interpreting()):
        raise ValueError(f"the Triton correlation runs on CUDA tensors (or on CPU under "
                         f"TRITON_INTERPRET=1), got a tensor on {x.device}")


def _extent(t: Tensor) -> int:
    """Largest element offset inside one batch item (dims 1..) of ``t``."""
    return sum((n - 1) * s for n, s in zip(t.shape[1:], t.stride()[1:]))


def _check_offsets(*tensors: Tensor) -> None:
    # Kernels index within a batch item in int32 (only the batch term is int64).
    for t in tensors:
        if _extent(t) >= _INT32_LIMIT:
            raise ValueError(f"a batch item of shape {tuple(t.shape[1:])} exceeds 2^31 "
                             "elements, which the Triton correlation indexes in int32")


@functools.lru_cache(maxsize=64)
def _offset_table(offsets: tuple[int, ...], dilations: tuple[int, ...],
                  device: torch.device) -> tuple[Tensor, Tensor]:
    """The offsets and dilations as device tensors, made once per configuration (a fresh
    host-to-device copy at every call would synchronise the stream)."""
    return (torch.tensor(offsets, dtype=torch.int32, device=device),
            torch.tensor(dilations, dtype=torch.int32, device=device))


def _pow2_block(n: int, limit: int, floor: int = 1) -> int:
    return max(floor, min(triton.next_power_of_2(max(1, n)), limit))


def _weight_strides(weight: Tensor | None) -> tuple[int, int, int, int]:
    """(channel, time, iy, ix) strides; time stride 0 for a weight shared over time."""
    if weight is None:
        return 0, 0, 0, 0
    sc, st, sy, sx = weight.stride()
    return sc, (0 if weight.shape[1] == 1 else st), sy, sx


def forward(
    x: Tensor,
    weight: Tensor | None,
    *,
    kernel_size: int,
    groups: int,
    offsets: Sequence[int],
    dilations: Sequence[int],
    clip_ends: str,
    scale: float,
) -> Tensor:
    """Correlation volume (definition in the module doc; CorrNet Sec. 3, DCF Sec. 3.1-3.2).

    Arguments are already validated by :func:`vcorr.models.ops.correlation.correlation`; this
    checks only what the kernels need (:func:`check_inputs`). The output has x's dtype; sums
    are fp32.

    Shape:
        x (B, C, T, H, W), weight (C, T or 1, K, K) or None -> (B, P*G*K*K, T, H, W),
        P = len(offsets).

    Raises:
        ValueError: device or dtype the kernels do not take (:func:`check_inputs`), or a batch
            item beyond int32 indexing.
    """
    check_inputs(x, weight)
    b, c, t, h, w = x.shape
    kk = kernel_size * kernel_size
    cg = c // groups
    out = torch.empty(b, len(offsets) * groups * kk, t, h, w, dtype=x.dtype, device=x.device)
    if x.numel() == 0:  # nothing to launch; a group of no channels sums to 0
        return out.zero_()
    _check_offsets(x, out)
    block_c = _pow2_block(cg, MAX_BLOCK_C)
    block_hw = _pow2_block(h * w, MAX_BLOCK_HW_FWD, 16)
    n_tiles = triton.cdiv(h * w, block_hw)
    taus, dils = _offset_table(tuple(offsets), tuple(dilations), x.device)
    grid = (b * t * n_tiles, groups)
    _forward_kernel[grid](
        x, weight if weight is not None else x, out, taus, dils,
        t, h, w, n_tiles, len(offsets), groups, float(scale),
        *x.stride(), *_weight_strides(weight), *out.stride(),
        CG=cg, KSIZE=kernel_size, SELF_ENDS=int(clip_ends == "self"),
        HAS_WEIGHT=weight is not None, BLOCK_C=block_c, BLOCK_HW=block_hw,
        num_warps=NUM_WARPS)
    return out


def backward(
    x: Tensor,
    weight: Tensor | None,
    grad_out: Tensor,
    *,
    kernel_size: int,
    groups: int,
    offsets: Sequence[int],
    dilations: Sequence[int],
    clip_ends: str,
    scale: float,
    need_x: bool = True,
    need_w: bool = True,
) -> tuple[Tensor | None, Tensor | None]:
    """Gradients of :func:`forward` w.r.t. ``x`` and ``weight``, products recomputed.

    ``grad_x`` has x's dtype, ``grad_weight`` the weight's; both are summed in fp32, in a
    fixed order (deterministic). ``need_w`` is ignored without a weight.

    Shape:
        x (B, C, T, H, W), weight (C, T or 1, K, K) or None, grad_out (B, P*G*K*K, T, H, W)
        -> (grad_x like x or None, grad_weight like weight or None).

    Raises:
        ValueError: as :func:`forward`, or a grad_out of another shape or device.
    """
    check_inputs(x, weight)
    b, c, t, h, w = x.shape
    kk = kernel_size * kernel_size
    cg = c // groups
    expected = (b, len(offsets) * groups * kk, t, h, w)
    if tuple(grad_out.shape) != expected or grad_out.device != x.device:
        raise ValueError(f"grad_out must be {expected} on {x.device}, got "
                         f"{tuple(grad_out.shape)} on {grad_out.device}")
    need_w = need_w and weight is not None
    if not (need_x or need_w):
        return None, None
    if x.numel() == 0:
        return (torch.zeros_like(x) if need_x else None,
                torch.zeros_like(weight) if need_w else None)
    block_c = _pow2_block(cg, MAX_BLOCK_C)
    block_hw = _pow2_block(h * w, MAX_BLOCK_HW_BWD, 16)
    n_tiles = triton.cdiv(h * w, block_hw)
    n_chunks = triton.cdiv(cg, block_c)
    grad_x = torch.empty_like(x) if need_x else None  # x's layout where x is dense
    partial = (torch.zeros(b, n_tiles, t, kk, c, dtype=torch.float32, device=x.device)
               if need_w else None)
    _check_offsets(x, grad_out, *([grad_x] if grad_x is not None else []))
    taus, dils = _offset_table(tuple(offsets), tuple(dilations), x.device)
    dummy = x  # stands for absent tensors; the kernel never touches them (constexpr flags)
    grid = (b * t * n_tiles, groups * n_chunks)
    _backward_kernel[grid](
        x, weight if weight is not None else dummy, grad_out,
        grad_x if grad_x is not None else dummy, partial if partial is not None else dummy,
        taus, dils,
        t, h, w, n_tiles, n_chunks, len(offsets), groups, float(scale),
        *x.stride(), *_weight_strides(weight), *grad_out.stride(),
        *(grad_x.stride() if grad_x is not None else (0,) * 5),
        CG=cg, KSIZE=kernel_size, SELF_ENDS=int(clip_ends == "self"),
        HAS_WEIGHT=weight is not None, NEED_X=need_x, NEED_W=need_w,
        BLOCK_C=block_c, BLOCK_HW=block_hw, num_warps=NUM_WARPS)
    grad_w = None
    if partial is not None and weight is not None:
        gw = partial.sum(dim=(0, 1)) * scale  # (T, K*K, C)
        if weight.shape[1] == 1:
            gw = gw.sum(dim=0, keepdim=True)
        grad_w = gw.permute(2, 0, 1).reshape(weight.shape).to(weight.dtype)
    return grad_x, grad_w
