"""Correspondence Proposal (CP) module of CPNet (Liu, Lee, Jin, CVPR 2019, Sec. 3; supp. B, D).

For every position i0 of a clip's feature map (B, C, T, H, W) the module

1. finds its k nearest neighbours i1..ik in feature space (squared L2) among all T*H*W
   positions, excluding every position of i0's own frame (:func:`knn_other_frames`; no
   gradient flows through the indices);
2. embeds each pair with a shared MLP on ``concat(dt, dh, dw, f_i0, f_ij)`` (2C+3 inputs; the
   relative position is that of the neighbour minus that of the query, with grid coordinates
   normalised as (t/T, h/H, w/W)); 1x1 layers with bias + BN + ReLU, ReLU also on the last;
3. max-pools over the k pairs, maps back to C channels with a 1x1 conv and a BatchNorm whose
   gamma starts at 0, and adds the result to its input.

It is inserted as a ``post_add`` plug-in so it sees a residual block's pre-ReLU output.
Optional (ResNet-101 model, supp. D): a 1x1 reduction to ``C/reduction`` (conv + BN, no ReLU)
before the k-NN, and 2x bilinear spatial downsampling before the k-NN (upsampled back after).

The first MLP layer is applied in factorised form: ``W [f_i0; f_ij; dp] = A f_i0 + B f_ij + P dp``
and ``dp = p_ij - p_i0``, so each point is projected once (``A f - P p`` and ``B f + P p``) and
only the C1-wide projections of the neighbours are gathered; the (B, 2C+3, N, k) pair tensor is
never built. :meth:`CPModule.first_layer_direct` is the literal form, kept for tests.

Speed on CPU (same math; ``vcorr bench knn`` / ``vcorr bench models``): the k-NN never builds
the (B, N, N) matrix and selects with an exact two-stage top-k on group minima; float32 matmuls
(k-NN distances, the MLP's and the projections' 1x1 layers) use oneDNN where torch has it
(:func:`onednn_linear_available`; :data:`USE_ONEDNN` turns it off); the last ReLU and the max
over the k pairs are one autograd function with the same gradient; the output BatchNorm runs on
(B*N, C) rows. Results differ from the plain torch formulation only by float rounding.

Mixed precision: under autocast the MLP and projections run in bfloat16/float16, but the k-NN
always ranks in float32 (:func:`knn_other_frames`). Under ``torch.compile`` only public ops are
used (no oneDNN calls), so the compiler sees and lowers every matmul itself.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vcorr.models.layers import zero_init_bn

# --- oneDNN fp32 matmul -------------------------------------------------------------------
# torch.matmul/bmm/F.linear in float32 on CPU go to the BLAS (MKL); on some CPUs (AMD EPYC with
# AVX-512) MKL's sgemm reaches only ~40% of what oneDNN's does (measured ~80 vs ~200 GFLOP/s
# per core). torch exposes oneDNN's fp32 matmul as ``torch.ops.mkldnn._linear_pointwise`` (the
# kernel TorchInductor uses on CPU); it is used when present and checked once against F.linear.
USE_ONEDNN = True                  # set False to use only torch's public ops (BLAS)
ONEDNN_MIN_MACS = 1 << 24          # smaller k-NN problems stay on one batched baddbmm call
_onednn_ok: bool | None = None


def onednn_linear_available() -> bool:
    """Whether oneDNN's fp32 linear (``torch.ops.mkldnn._linear_pointwise``) is used: it exists,
    agrees with ``F.linear`` on a small check, and :data:`USE_ONEDNN` is set. False while
    ``torch.compile`` traces: the compiler lowers the public ops itself (TorchInductor picks
    oneDNN for CPU matmuls), and the availability check cannot be traced."""
    global _onednn_ok
    if not USE_ONEDNN or torch.compiler.is_compiling():
        return False
    if _onednn_ok is None:
        _onednn_ok = False
        try:
            if (torch.backends.mkldnn.is_available()
                    and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
                gen = torch.Generator().manual_seed(0)
                x, w, bias = (torch.randn(s, generator=gen) for s in ((5, 7), (3, 7), (3,)))
                with torch.no_grad():
                    got = torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")
                _onednn_ok = bool(torch.allclose(got, F.linear(x, w, bias), atol=1e-5, rtol=1e-5))
        except (RuntimeError, AttributeError, TypeError):
            _onednn_ok = False
    return _onednn_ok


def _linear_onednn(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ w.T + bias`` with oneDNN (no autograd; see :func:`linear`)."""
    return torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")


class _LinearOneDNN(torch.autograd.Function):
    """``F.linear`` with oneDNN for the forward and the input gradient (and the weight gradient
    unless the rows are many and the matrices thin, where the BLAS is faster)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor,  # type: ignore[override]
                bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _linear_onednn(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _linear_onednn(grad, weight.t().contiguous(), None)
        g2, x2 = grad.reshape(-1, grad.shape[-1]), x.reshape(-1, x.shape[-1])
        if ctx.needs_input_grad[1]:
            if g2.shape[0] <= 256 * min(weight.shape):
                grad_w = _linear_onednn(g2.t(), x2.t(), None)
            else:
                grad_w = g2.t() @ x2
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; with oneDNN for float32 CPU tensors where available
    (:func:`onednn_linear_available`). Same math; rounding may differ in the last bits."""
    if (x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu") and onednn_linear_available()):
        return _LinearOneDNN.apply(x, weight, bias)
    return F.linear(x, weight, bias)


# Default working-set of one k-NN chunk, in distance-matrix elements (16 MiB of float32). At
# 8 x 28 x 28 positions this is half a frame of one clip against all positions per chunk, the
# fastest layout measured on CPU: larger blocks fall out of the cache, smaller ones make more,
# less efficient matmul calls.
DEFAULT_CHUNK_ELEMENTS = 1 << 22


def knn_chunk_rows(batch: int, n: int, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> int:
    """Query rows per chunk so that one (batch, rows, n) distance block has <= chunk_elements."""
    return max(1, min(n, chunk_elements // max(1, batch * n)))


def _topk_cost(n: int, k: int) -> float:
    """Rough ns per row of ``torch.topk(k)`` over n values on CPU (a heap partial sort when
    64 k <= n, otherwise nth_element, which costs ~4x more per value)."""
    return n * (2.5 if 64 * k <= n else 9.0)


def knn_group_size(frame_size: int, n: int, k: int) -> int:
    """Values per group of the two-stage top-k in :func:`knn_other_frames` (1: plain top-k).

    A group is ``g`` positions of one frame, ``frame_size / g`` apart. Cost model per query row:
    top-k over the ~(n - frame_size) / g group minima of the other frames, then gathering and
    ranking k * g candidates; g must divide the frame and leave at least k groups outside the
    own frame.
    """
    others = n - frame_size
    best, best_cost = 1, _topk_cost(others, k)
    for g in range(2, frame_size + 1):
        if frame_size % g or others // g < k:
            continue
        cost = _topk_cost(others // g, k) + 12.0 * k * g
        if cost < best_cost:
            best, best_cost = g, cost
    return best


def _select(d: torch.Tensor, k: int, frame_size: int, g: int, offsets: torch.Tensor | None,
            own: tuple[int, int] | None) -> torch.Tensor:
    """Column indices (nb, r, k) of the k smallest values of every row of ``d`` (nb, r, cols),
    nearest first; ``cols`` is whole frames of ``frame_size``.

    ``own=(t0, t1)``: the rows are queries of frames t0..t1-1 (whole frames, or a part of frame
    t0 when t1 == t0 + 1) whose own frame's columns must not be chosen; they are skipped at
    group level (never written into ``d``).
    With ``g > 1``, exact two-stage top-k: the minimum of every group of g columns, the k groups
    with the smallest minima, then the k smallest of those k * g candidates. Any value outside
    the chosen groups is >= the k-th chosen group minimum >= the k-th smallest candidate, so
    the result equals a top-k over the whole row (up to the order of exactly equal values).
    """
    nb, r, cols = d.shape
    w = frame_size // g
    mins = d if g == 1 else d.view(nb, r, cols // frame_size, g, w).amin(dim=3).view(nb, r, -1)
    if own is not None:   # with g == 1 this writes into d: fine, it is not read again
        t0, t1 = own
        if t1 == t0 + 1:
            mins[:, :, t0 * w:t1 * w] = float("inf")
        else:
            frames = mins.view(nb, t1 - t0, frame_size, cols // frame_size, w)[:, :, :, t0:t1]
            frames.diagonal(dim1=1, dim2=3).fill_(float("inf"))
    if g == 1:
        return mins.topk(k, dim=2, largest=False, sorted=True).indices
    groups = mins.topk(k, dim=2, largest=False, sorted=False).indices          # (nb, r, k)
    first = groups + (groups // w) * (frame_size - w)                          # first column
    cand_cols = (first.unsqueeze(-1) + offsets).view(nb, r, k * g)
    best = d.gather(2, cand_cols).topk(k, dim=2, largest=False, sorted=True).indices
    return cand_cols.gather(2, best)


def _row_chunks(n: int, frame_size: int, rows: int) -> Iterator[tuple[int, int, int, int]]:
    """(start, stop, t0, t1): whole frames t0..t1-1 at a time when ``rows >= frame_size``,
    else equal parts of at most ``rows`` rows of one frame t0 (t1 = t0 + 1)."""
    f = frame_size
    if rows >= f:
        step = rows // f
        for t0 in range(0, n // f, step):
            t1 = min(n // f, t0 + step)
            yield t0 * f, t1 * f, t0, t1
        return
    part = -(-f // -(-f // rows))
    for t in range(n // f):
        for start in range(t * f, (t + 1) * f, part):
            yield start, min((t + 1) * f, start + part), t, t + 1


_HALF = (torch.float16, torch.bfloat16)


@torch.no_grad()
def knn_other_frames(feat: torch.Tensor, k: int, frame_size: int, *,
                     chunk_rows: int | None = None,
                     chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """k nearest neighbours of every position among the positions of *other* frames.

    Distances are always computed and ranked in at least float32, with autocast off:
    bfloat16/float16 features (a model under mixed precision) are converted first. A bfloat16
    distance ``|b|^2 - 2 a.b`` keeps 8 bits of magnitudes ~|f|^2, which is far coarser than the
    gaps between near neighbours and would reorder them (tests/test_mixed_precision.py).
    """
    if feat.device.type not in ("cpu", "cuda"):  # meta (counting GMACs): no autocast there
        return _knn_other_frames(feat, k, frame_size, chunk_rows=chunk_rows,
                                 chunk_elements=chunk_elements)
    with torch.autocast(feat.device.type, enabled=False):
        return _knn_other_frames(feat.float() if feat.dtype in _HALF else feat, k, frame_size,
                                 chunk_rows=chunk_rows, chunk_elements=chunk_elements)


def _knn_other_frames(feat: torch.Tensor, k: int, frame_size: int, *,
                      chunk_rows: int | None = None,
                      chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """:func:`knn_other_frames` on float32/float64 features, autocast off.

    ``feat`` is (B, C, N) with positions in (t, h, w) raster order, N = T * frame_size.
    Distance is plain squared L2, ranked via ``|b|^2 - 2 a.b`` (``|a|^2`` is the same for a whole
    query row and does not change the ranking). The (B, N, N) matrix is never built; queries go
    in chunks of at most ``chunk_rows`` rows (default: blocks of ``chunk_elements`` distances):
    whole frames at a time when ``chunk_rows >= frame_size``, else parts of one frame.

    * On CPU in float32, with oneDNN (:func:`onednn_linear_available`) and enough work, one
      clip at a time: ``|b|^2 - 2 a.b`` for a chunk of queries against all N keys is one oneDNN
      matmul with bias (about 2.4x faster than ``torch.bmm``'s BLAS on some CPUs, e.g. AMD
      EPYC with AVX-512); the own frame is skipped at selection.
    * Otherwise ``torch.baddbmm``: one block of all frames if the (B, N, N) matrix fits in
      ``chunk_elements``; else parts of one frame against the keys of the *other* frames only
      (two ``baddbmm`` calls into one buffer, 1/T of the multiply-adds saved), splitting the
      batch if needed.

    Selection is an exact two-stage top-k on group minima (see :func:`knn_group_size`), much
    cheaper than ``torch.topk`` over whole rows. Ties are broken arbitrarily.
    Returns (B, N, k) int64 indices, nearest first.
    """
    b, c, n = feat.shape
    if frame_size < 1 or n % frame_size:
        raise ValueError(f"N={n} positions is not a whole number of frames of {frame_size}")
    if not 1 <= k <= n - frame_size:
        raise ValueError(f"k={k} must be in 1..{n - frame_size} (positions outside the query's frame)")
    f, m = frame_size, n - frame_size
    g = knn_group_size(f, n, k)
    offsets = torch.arange(g, device=feat.device) * (f // g) if g > 1 else None
    sq = feat.pow(2).sum(dim=1).unsqueeze(1)           # (B, 1, N)
    out = torch.empty(b, n, k, dtype=torch.long, device=feat.device)

    if (feat.device.type == "cpu" and feat.dtype == torch.float32
            and n * n * c >= ONEDNN_MIN_MACS and onednn_linear_available()):
        keys = feat.transpose(1, 2).contiguous()       # (B, N, C)
        rows = chunk_rows or max(1, chunk_elements // n)
        for i in range(b):
            for start, stop, t0, t1 in _row_chunks(n, f, rows):
                d = _linear_onednn(keys[i, start:stop] * -2.0, keys[i], sq[i, 0])   # (r, N)
                out[i, start:stop] = _select(d.unsqueeze(0), k, f, g, offsets, (t0, t1))[0]
        return out

    queries = feat.transpose(1, 2)                     # (B, N, C), a view
    if chunk_rows is None:
        whole = b * n * n <= chunk_elements
        rows, batch_step = n, b
        if not whole:
            rows = min(f, max(1, chunk_elements // m))
            batch_step = max(1, min(b, chunk_elements // (rows * m)))
    else:
        whole, rows, batch_step = chunk_rows >= f, chunk_rows, b
    if not whole and torch.compiler.is_compiling():
        # torch.compile cannot trace baddbmm(out=) into the strided buffer below (a graph
        # break per call): there, chunks of queries go against all keys (1/T more work).
        whole, rows = True, chunk_rows or knn_chunk_rows(b, n, chunk_elements)

    if whole:  # queries (whole frames or parts of one) against all keys, own frame skipped
        for start, stop, t0, t1 in _row_chunks(n, f, rows):
            d = torch.baddbmm(sq, queries[:, start:stop], feat, alpha=-2.0)
            out[:, start:stop] = _select(d, k, f, g, offsets, (t0, t1))
        return out

    buf = torch.empty(batch_step * min(rows, f) * m, dtype=feat.dtype, device=feat.device)
    for b0 in range(0, b, batch_step):
        b1 = min(b, b0 + batch_step)
        fb, sqb, qb = feat[b0:b1], sq[b0:b1], queries[b0:b1]
        for start, stop, t, _ in _row_chunks(n, f, rows):
            lo, hi = t * f, (t + 1) * f
            d = buf[:(b1 - b0) * (stop - start) * m].view(b1 - b0, stop - start, m)
            q = qb[:, start:stop]
            # Keys of frames before and after t, side by side: column j is position j below
            # lo and j + f from lo on.
            if lo:
                torch.baddbmm(sqb[..., :lo], q, fb[..., :lo], alpha=-2.0, out=d[..., :lo])
            if hi < n:
                torch.baddbmm(sqb[..., hi:], q, fb[..., hi:], alpha=-2.0, out=d[..., lo:])
            col = _select(d, k, f, g, offsets, None)
            out[b0:b1, start:stop] = col + f * (col >= lo)
    return out


@torch.no_grad()
def knn_other_frames_dense(feat: torch.Tensor, k: int, frame_size: int) -> torch.Tensor:
    """Reference form of :func:`knn_other_frames` holding the whole (B, N, N) distance matrix
    ``|a|^2 + |b|^2 - 2ab`` (the paper's formulation; memory O(B N^2)), in at least float32 as
    :func:`knn_other_frames`. Used by the benchmark."""
    with torch.autocast(feat.device.type, enabled=False):
        return _knn_dense(feat.float() if feat.dtype in _HALF else feat, k, frame_size)


def _knn_dense(feat: torch.Tensor, k: int, frame_size: int) -> torch.Tensor:
    b, c, n = feat.shape
    sq = feat.pow(2).sum(dim=1)
    dist = sq.unsqueeze(2) + sq.unsqueeze(1) - 2 * torch.bmm(feat.transpose(1, 2), feat)
    frame = torch.arange(n, device=feat.device) // frame_size
    dist.masked_fill_(frame.unsqueeze(1) == frame.unsqueeze(0), float("inf"))
    return dist.topk(k, dim=2, largest=False, sorted=True).indices


class _ReluMaxOverK(torch.autograd.Function):
    """``relu(e).amax(dim=2)`` for e (B, N, k, C) with the same values and the same gradient as
    autograd gives for ``F.relu`` followed by ``amax`` (the gradient is split evenly between
    exactly tied maxima; none flows where the maximum is 0), in fewer passes over e:
    ``relu(amax(e)) == amax(relu(e))``, and the backward is two passes over e instead of a
    bool mask, its cast, a multiply and the ReLU's own backward."""

    @staticmethod
    def forward(ctx, e: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = e.amax(dim=2).clamp_min_(0)
        ctx.save_for_backward(e, out)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        e, out = ctx.saved_tensors
        # 1.0 at the maxima, written as float directly (a bool mask would be cast later).
        hit = torch.empty_like(e)
        torch.eq(e, out.unsqueeze(2), out=hit)
        # Where the maximum is 0 (all pairs cut by the ReLU) no gradient flows, as with F.relu;
        # tied maxima share it evenly, as with amax.
        share = torch.where(out > 0, grad / hit.sum(dim=2), 0.0)
        return hit.mul_(share.unsqueeze(2))


def _batch_norm_rows(bn: nn.modules.batchnorm._BatchNorm, rows: torch.Tensor) -> torch.Tensor:
    """``bn`` (any BatchNorm*d, C channels) applied to (M, C) rows, exactly as ``bn(x)`` on the
    channels-first tensor x whose positions the rows are: the same statistics, running-stat and
    ``num_batches_tracked`` updates (mirrors ``torch.nn.modules.batchnorm._BatchNorm.forward``)."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    track = not bn.training or bn.track_running_stats
    return F.batch_norm(rows, bn.running_mean if track else None, bn.running_var if track else None,
                        bn.weight, bn.bias, use_batch_stats, factor, bn.eps)


def _relu_max_over_k(e: torch.Tensor) -> torch.Tensor:
    return _ReluMaxOverK.apply(e)


def grid_positions(t: int, h: int, w: int, *, dtype: torch.dtype = torch.float32,
                   device: torch.device | str | None = None) -> torch.Tensor:
    """(3, T*H*W) normalised coordinates (t/T, h/H, w/W) in raster order."""
    tt, hh, ww = torch.meshgrid(torch.arange(t, dtype=dtype, device=device) / t,
                                torch.arange(h, dtype=dtype, device=device) / h,
                                torch.arange(w, dtype=dtype, device=device) / w, indexing="ij")
    return torch.stack([tt.reshape(-1), hh.reshape(-1), ww.reshape(-1)])


class CPModule(nn.Module):
    """Correspondence Proposal module (CPNet Sec. 3, Fig. 3; supp. B and D).

    Args:
        channels: C, channels of the block output it is added to.
        k: neighbours per position (8 on Kinetics, 12 on Something/Jester, 4 for ResNet-101).
        mlp_ratios: MLP widths as fractions of C ([C/4, C/2] for ResNet-18/34; [C/8] for
            ResNet-101 with ``reduction=8``).
        reduction: if set, a 1x1 conv + BN (no ReLU) to C/reduction before the k-NN.
        downsample: 2x bilinear spatial downsampling before the k-NN, upsampled back after.
        chunk_rows: query rows per k-NN chunk (default: from a 64 MiB working set).
        tie_break: w >= 0; the k-NN ranks ``|f_a - f_b|^2 + w |p_a - p_b|^2`` (p: the normalised
            (t, h, w) positions), so that among equally near features the nearest in space-time
            wins. 0 (default) is the paper's distance. Real features are almost never tied; a
            synthetic flat background is (the toy: thousands of exactly equal distances, which
            the authors' TF top-k breaks by lowest index and ours by float rounding).

    If a clip has fewer than k positions outside a frame, k is clamped to that number (tiny
    test clips); at least two frames are required.
    Shape: (B, C, T, H, W) -> (B, C, T, H, W); a freshly built module is the identity.
    """

    # Pretrained backbones leave the module at its initial (identity) state: pipelines.weights.
    identity_at_init = True

    def __init__(self, channels: int, k: int = 8, mlp_ratios: Sequence[float] = (0.25, 0.5), *,
                 reduction: int | None = None, downsample: bool = False,
                 chunk_rows: int | None = None, tie_break: float = 0.0) -> None:
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be positive, got {k}")
        if tie_break < 0:
            raise ValueError(f"tie_break must be >= 0, got {tie_break}")
        widths = [max(1, int(round(channels * r))) for r in mlp_ratios]
        if not widths:
            raise ValueError("the CP module needs at least one MLP layer")
        self.channels, self.k, self.downsample, self.chunk_rows = channels, k, downsample, chunk_rows
        self.tie_break = tie_break
        feat_dim = channels
        self.reduce: nn.Module | None = None
        if reduction:
            feat_dim = max(1, channels // reduction)
            self.reduce = nn.Sequential(nn.Conv3d(channels, feat_dim, 1, bias=False),
                                        nn.BatchNorm3d(feat_dim))
        self.feat_dim = feat_dim
        # First MLP layer on concat(dt, dh, dw, f_i0, f_ij): stored as one (C1, 3 + 2C') weight
        # so the parameters are exactly those of the direct 1x1 layer.
        c1 = widths[0]
        self.weight1 = nn.Parameter(torch.empty(c1, 3 + 2 * feat_dim))
        self.bias1 = nn.Parameter(torch.empty(c1))
        nn.init.kaiming_uniform_(self.weight1, a=5 ** 0.5)  # nn.Linear's default
        bound = 1 / (3 + 2 * feat_dim) ** 0.5
        nn.init.uniform_(self.bias1, -bound, bound)
        self.bn1 = nn.BatchNorm1d(c1)
        rest: list[nn.Module] = []
        for w_in, w_out in zip(widths[:-1], widths[1:]):
            rest += [nn.Linear(w_in, w_out), nn.BatchNorm1d(w_out), nn.ReLU(inplace=True)]
        self.mlp = nn.Sequential(*rest)
        self.proj = nn.Linear(widths[-1], channels)   # the 1x1 conv back to C
        self.bn_out = nn.BatchNorm3d(channels)
        zero_init_bn(self.bn_out)
        self.keep_knn = False           # set True to keep the last indices (visualisation)
        self.last_knn: torch.Tensor | None = None

    # -- pieces, exposed for tests and visualisation ------------------------------------------
    def knn_features(self, x: torch.Tensor) -> torch.Tensor:
        """The features the k-NN runs on: (optionally reduced, downsampled) x, (B, C', T, H', W')."""
        f = self.reduce(x) if self.reduce is not None else x
        if self.downsample:
            b, c, t, h, w = f.shape
            f2 = F.interpolate(f.transpose(1, 2).reshape(b * t, c, h, w),
                               size=(max(1, h // 2), max(1, w // 2)), mode="bilinear",
                               align_corners=False)
            f = f2.reshape(b, t, c, *f2.shape[-2:]).transpose(1, 2)
        return f

    @property
    def _last_relu(self) -> bool:
        """True when the MLP ends in a ReLU (always, as built) so that it can be fused with the
        max over the k pairs (:func:`_relu_max_over_k`)."""
        return len(self.mlp) > 0 and isinstance(self.mlp[-1], nn.ReLU)

    def mlp_pre_relu(self, e: torch.Tensor) -> torch.Tensor:
        """The MLP after the first layer, without its last ReLU."""
        for layer in list(self.mlp)[:-1]:
            e = linear(e, layer.weight, layer.bias) if type(layer) is nn.Linear else layer(e)
        return e

    def first_layer(self, f: torch.Tensor, pos: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Factorised first layer. f (B, C', N), pos (3, N), idx (B, N, k) -> (B, N, k, C1)."""
        b, c, n = f.shape
        k = idx.shape[-1]
        w_pos, w_q, w_nb = self.weight1.split([3, c, c], dim=1)
        c1 = w_q.shape[0]
        pos_proj = (w_pos @ pos).t()                                    # (N, C1)
        ft = f.transpose(1, 2)                                          # (B, N, C')
        both = linear(ft, torch.cat([w_q, w_nb]))                       # (B, N, 2 C1): A f, B f
        query = both[..., :c1] - pos_proj + self.bias1                  # (B, N, C1)
        neigh = both[..., c1:] + pos_proj                               # (B, N, C1)
        flat = (idx + torch.arange(b, device=idx.device).view(b, 1, 1) * n).reshape(-1)
        gathered = neigh.reshape(b * n, -1).index_select(0, flat).view(b, n, k, -1)
        return query.unsqueeze(2) + gathered

    def first_layer_direct(self, f: torch.Tensor, pos: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """The literal 2C'+3 form of :meth:`first_layer` (memory O(B N k C')); for tests."""
        b, c, n = f.shape
        k = idx.shape[-1]
        ft = f.transpose(1, 2)
        f_q = ft.unsqueeze(2).expand(b, n, k, c)
        f_nb = torch.stack([ft[i, idx[i]] for i in range(b)])          # (B, N, k, C')
        p = pos.t()
        dp = p[idx] - p.view(1, n, 1, 3)                                 # (B, N, k, 3)
        pair = torch.cat([dp, f_q, f_nb], dim=-1)                       # (B, N, k, 2C'+3)
        return pair @ self.weight1.t() + self.bias1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.knn_features(x)
        b, c, t, h, w = f.shape
        if t < 2:
            raise ValueError("the CP module needs at least 2 frames (neighbours come from other frames)")
        n = t * h * w
        flat = f.reshape(b, c, n)
        k = min(self.k, n - h * w)
        pos = grid_positions(t, h, w, dtype=f.dtype, device=f.device)
        keys = flat.detach()
        if keys.dtype in _HALF:   # mixed precision: neighbours are ranked in float32
            keys = keys.float()
        if self.tie_break:
            kpos = (pos if pos.dtype == keys.dtype
                    else grid_positions(t, h, w, dtype=keys.dtype, device=keys.device))
            keys = torch.cat([keys, (kpos * self.tie_break ** 0.5).expand(b, 3, n)], dim=1)
        idx = knn_other_frames(keys, k, h * w, chunk_rows=self.chunk_rows)
        if self.keep_knn:
            self.last_knn = idx
        e = self.first_layer(flat, pos, idx)                            # (B, N, k, C1)
        e = F.relu(self.bn1(e.reshape(-1, e.shape[-1])), inplace=True)    # BN keeps its input
        e = self.mlp_pre_relu(e) if self._last_relu else self.mlp(e)
        # max over the k pairs; the last ReLU is applied after the max (the same values).
        e = e.view(b, n, k, -1)
        g = _relu_max_over_k(e) if self._last_relu else e.amax(dim=2)
        g = linear(g, self.proj.weight, self.proj.bias)                 # 1x1 back to C: (B, N, C)
        if (h, w) != tuple(x.shape[-2:]):   # downsampled k-NN: upsample, then the output BN
            g = g.view(b, t, h, w, self.channels).permute(0, 1, 4, 2, 3)
            g = g.reshape(b * t, self.channels, h, w)
            g = F.interpolate(g, size=x.shape[-2:], mode="bilinear", align_corners=False)
            g = g.reshape(b, t, self.channels, *x.shape[-2:]).transpose(1, 2)
            return x + self.bn_out(g)
        # The output BatchNorm on the (B*N, C) rows, then viewed as (B, C, T, H, W) without a
        # copy: BatchNorm's kernels for rows are several times faster than for a channels-first
        # (B, C, T, H, W) tensor with few positions per frame (the same statistics and updates).
        g = _batch_norm_rows(self.bn_out, g.view(b * n, self.channels))
        return x + g.view(b, t, h, w, self.channels).permute(0, 4, 1, 2, 3)
