"""The correlation operator (issue 4) against a plain loop reference, plus its documented layout."""
from __future__ import annotations

import math

import pytest
import torch

from vcorr.models.ops import (
    DenseCorrelation,
    LearnableCorrelation,
    correlation,
    corrnet_correlation,
    dcf_correlation,
    dcf_offsets,
)


def naive_correlation(x, weight, kernel_size, groups, offsets, dilations, clip_ends, scale):
    """Definition, written out: loop over offsets, frames and displacements; shift by copying."""
    batch, channels, frames, height, width = x.shape
    r = kernel_size // 2
    per_group = channels // groups
    volumes = []
    for tau, dil in zip(offsets, dilations):
        vol = x.new_zeros(batch, groups, kernel_size, kernel_size, frames, height, width)
        for t in range(frames):
            partner = t + tau
            if not 0 <= partner < frames:
                if clip_ends == "zero":
                    continue  # matched with a zero frame: output stays 0
                partner = t
            for iy in range(kernel_size):
                for ix in range(kernel_size):
                    dy, dx = (iy - r) * dil, (ix - r) * dil
                    # moved[h, w] = x[partner, h + dy, w + dx], zero outside the frame
                    moved = x.new_zeros(batch, channels, height, width)
                    for h in range(height):
                        for w in range(width):
                            if 0 <= h + dy < height and 0 <= w + dx < width:
                                moved[:, :, h, w] = x[:, :, partner, h + dy, w + dx]
                    products = x[:, :, t] * moved
                    if weight is not None:
                        step = t if weight.shape[1] > 1 else 0
                        products = products * weight[:, step, iy, ix].view(1, channels, 1, 1)
                    grouped = products.view(batch, groups, per_group, height, width)
                    vol[:, :, iy, ix, t] = grouped.sum(dim=2) * scale
        volumes.append(vol.reshape(batch, groups * kernel_size * kernel_size,
                                   frames, height, width))
    return torch.cat(volumes, dim=1)


def _compare(x, weight, out, ref, atol):
    """Values and gradients w.r.t. every differentiable input agree."""
    assert out.shape == ref.shape
    torch.testing.assert_close(out, ref, atol=atol, rtol=0)
    grad = torch.randn_like(out)
    inputs = [x] + ([weight] if weight is not None else [])
    ours = torch.autograd.grad(out, inputs, grad)
    theirs = torch.autograd.grad(ref, inputs, grad)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=atol, rtol=0)


# (B, C, T, H, W, K, D, G, weight time steps or None, block_elements)
CORRNET_CASES = [
    (2, 6, 4, 7, 5, 3, 1, 2, "T", None),
    (1, 4, 3, 7, 5, 5, 2, 1, "T", 1),          # one-frame blocks
    (2, 6, 5, 6, 7, 3, 3, 3, 1, 6 * 6 * 7 * 2),  # shared weight, two-frame blocks
    (1, 8, 2, 5, 5, 7, 2, 4, "T", None),       # displacements reaching past the frame
    (3, 4, 1, 4, 6, 3, 1, 2, "T", None),       # a single frame: self-correlation only
    (2, 4, 3, 5, 3, 1, 1, 1, None, None),      # K = 1, no weight
]


@pytest.mark.parametrize("case", CORRNET_CASES)
def test_corrnet_matches_reference_float64(case):
    b, c, t, h, w, k, d, g, steps, block = case
    gen = torch.Generator().manual_seed(sum(case[:8]))
    x = torch.randn(b, c, t, h, w, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = None
    if steps is not None:
        steps = t if steps == "T" else steps
        weight = torch.randn(c, steps, k, k, dtype=torch.float64, generator=gen,
                             requires_grad=True)
    out = correlation(x, weight, kernel_size=k, groups=g, offsets=(-1,), dilations=d,
                      clip_ends="self", block_elements=block)
    ref = naive_correlation(x, weight, k, g, (-1,), (d,), "self", 1.0 / (c // g))
    _compare(x, weight, out, ref, atol=1e-10)
    if block is None:  # the public CorrNet entry point is the same computation
        torch.testing.assert_close(corrnet_correlation(x, weight, k, d, g), out, atol=0, rtol=0)


# (B, C, T, H, W, K, L, D, G, block_elements)
DCF_CASES = [
    (2, 4, 5, 7, 5, 5, 2, 1, 1, None),
    (1, 6, 3, 5, 7, 3, 2, 2, 2, 1),   # L = 2 on 3 frames: the +-2 partners mostly missing
    (2, 4, 4, 6, 5, 3, 1, 1, 1, None),
    (1, 3, 4, 5, 5, 3, 3, 1, 3, 3 * 25 * 2),  # L = 3 > T/2, one-channel groups
]


@pytest.mark.parametrize("case", DCF_CASES)
def test_dcf_matches_reference_float64(case):
    b, c, t, h, w, k, L, d, g, block = case
    gen = torch.Generator().manual_seed(sum(case[:9]))
    x = torch.randn(b, c, t, h, w, dtype=torch.float64, generator=gen, requires_grad=True)
    offsets = dcf_offsets(L)
    dilations = tuple(d * abs(o) for o in offsets)  # dilation grows with the temporal step
    scale = 1.0 / math.sqrt(c // g)
    out = correlation(x, None, kernel_size=k, groups=g, offsets=offsets, dilations=dilations,
                      clip_ends="zero", scale=scale, block_elements=block)
    ref = naive_correlation(x, None, k, g, offsets, dilations, "zero", scale)
    _compare(x, None, out, ref, atol=1e-10)
    assert out.shape == (b, 2 * L * g * k * k, t, h, w)
    if block is None:
        torch.testing.assert_close(dcf_correlation(x, k, L, d, g), out, atol=0, rtol=0)


def test_weighted_multi_offset_self_ends_matches_reference():
    """The general form: a weight together with several offsets and self-matching clip ends."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 4, 5, 6, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(4, 4, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    kw = dict(kernel_size=3, groups=2, offsets=(2, -1), dilations=(1, 2), clip_ends="self",
              scale=0.3)
    out = correlation(x, weight, **kw, block_elements=4 * 30)
    ref = naive_correlation(x, weight, 3, 2, (2, -1), (1, 2), "self", 0.3)
    _compare(x, weight, out, ref, atol=1e-10)


def test_float32_tolerance():
    """float32 agrees with the float64 reference to 1e-5 at CorrNet-like sizes (K=7, D=2)."""
    gen = torch.Generator().manual_seed(0)
    x64 = torch.randn(1, 32, 3, 9, 11, dtype=torch.float64, generator=gen)
    w64 = torch.randn(32, 3, 7, 7, dtype=torch.float64, generator=gen)
    x32 = x64.float().requires_grad_()
    w32 = w64.float().requires_grad_()
    out = corrnet_correlation(x32, w32, 7, 2, 2)
    ref = naive_correlation(x64, w64, 7, 2, (-1,), (2,), "self", 1.0 / 16)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    x64.requires_grad_()
    w64.requires_grad_()
    ref = naive_correlation(x64, w64, 7, 2, (-1,), (2,), "self", 1.0 / 16)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    gx, gw = torch.autograd.grad(out, [x32, w32], grad.float())
    rx, rw = torch.autograd.grad(ref, [x64, w64], grad)
    torch.testing.assert_close(gx.double(), rx, atol=1e-5, rtol=0)
    torch.testing.assert_close(gw.double(), rw, atol=1e-5, rtol=0)


def test_gradcheck_corrnet_and_dcf():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(1, 4, 3, 4, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: corrnet_correlation(a, b, 3, 2, 2), (x, weight))
    assert torch.autograd.gradcheck(lambda a: dcf_correlation(a, 3, 2, 1, 1), (x,))


def test_channel_order_and_direction():
    """Channel g*K*K + iy*K + ix, iy/ix from -r (top-left first), displacement on the partner.

    A single point moves from (4, 1) in frame 0 to (2, 5) in frame 1. For frame 1 the match lies
    at displacement (dy, dx) = (+2, -4) / D = (+1, -2) grid steps; with K = 5 (r = 2) that is
    iy = 3, ix = 0, channel 15 of group 0 and 25 + 15 of group 1.
    """
    x = torch.zeros(1, 2, 2, 7, 7)
    x[0, :, 1, 2, 5] = 1.0  # query frame t = 1
    x[0, :, 0, 4, 1] = 1.0  # partner frame t - 1
    out = corrnet_correlation(x, None, kernel_size=5, dilation=2, groups=2)
    assert out.shape == (1, 50, 2, 7, 7)
    hits = (out[0, :, 1] != 0).nonzero().tolist()
    assert hits == [[15, 2, 5], [40, 2, 5]]
    # DCF: frame 0's forward partner (tau = +1, output block p = 1) holds the reverse move,
    # (dy, dx) = (-2, +4) with dilation 2 * |tau| = 2 -> iy = 1, ix = 4, channel 25 + 9.
    dcf = dcf_correlation(x[:, :1], kernel_size=5, temporal_range=1, dilation=2)
    assert (dcf[0, :, 0] != 0).nonzero().tolist() == [[34, 4, 1]]
    assert (dcf[0, :, 1] != 0).nonzero().tolist() == [[15, 2, 5]]  # tau = -1: block p = 0


def test_clip_ends():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 4, 4, 6, 6, generator=gen)
    centre = 4 * 9 + 4  # K = 9: the zero displacement
    # CorrNet: frame 0 correlates with itself, so its zero displacement is the mean square.
    out = corrnet_correlation(x, None, kernel_size=9, dilation=1, groups=1)
    torch.testing.assert_close(out[:, centre, 0], x[:, :, 0].pow(2).mean(dim=1))
    torch.testing.assert_close(out[:, centre, 2], (x[:, :, 2] * x[:, :, 1]).mean(dim=1))
    # DCF, L = 2: offsets (-2, -1, +1, +2) are blocks of 81 channels; missing partners give 0.
    dcf = dcf_correlation(x, kernel_size=9, temporal_range=2).view(2, 4, 81, 4, 6, 6)
    for p, tau in enumerate((-2, -1, 1, 2)):
        for t in range(4):
            missing = not 0 <= t + tau < 4
            assert bool((dcf[:, p, :, t] == 0).all()) == missing, (tau, t)
    # tau = +1 at the zero displacement is the scaled dot product with the next frame.
    torch.testing.assert_close(dcf[:, 2, centre, 1], (x[:, :, 1] * x[:, :, 2]).sum(1) / 2.0)


def test_only_inputs_are_saved_for_backward():
    """The autograd graph keeps x and the weight, nothing of the size of the unfolded volume."""
    x = torch.randn(1, 8, 4, 12, 12, requires_grad=True)
    weight = torch.ones(8, 4, 7, 7, requires_grad=True)
    saved: list[int] = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = corrnet_correlation(x, weight, 7, 2, 2)
    assert sorted(saved) == sorted([x.numel(), weight.numel()])
    out.sum().backward()
    assert x.grad is not None and weight.grad is not None


def test_learnable_module():
    module = LearnableCorrelation(64, kernel_size=5, dilation=2, num_frames=4)
    assert module.groups == 2 and module.out_channels == 50  # group size 32 by default
    assert module.weight.shape == (64, 4, 5, 5)
    x = torch.randn(1, 64, 4, 6, 6)
    out = module(x)
    assert out.shape == (1, 50, 4, 6, 6)
    # Ones at init: the plain groupwise correlation.
    torch.testing.assert_close(out, corrnet_correlation(x, None, 5, 2, 2))
    out.square().sum().backward()
    assert module.weight.grad is not None and module.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="share_time"):
        module(torch.randn(1, 64, 8, 6, 6))
    shared = LearnableCorrelation(64, kernel_size=5, groups=4, share_time=True)
    assert shared.weight.shape == (64, 1, 5, 5)
    for frames in (2, 8):  # clip length can change
        assert shared(torch.randn(1, 64, frames, 6, 6)).shape == (1, 100, frames, 6, 6)
    plain = LearnableCorrelation(8, kernel_size=3, groups=1, filtered=False)
    assert plain.weight is None and not list(plain.parameters())


def test_dense_module():
    module = DenseCorrelation(kernel_size=5, temporal_range=2)
    assert module.out_channels == 100 and not list(module.parameters())
    x = torch.randn(1, 16, 4, 7, 7)
    torch.testing.assert_close(module(x), dcf_correlation(x, 5, 2, 1, 1), atol=0, rtol=0)
    assert module(x).shape == (1, 100, 4, 7, 7)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kernel_size=4), "odd"),
        (dict(kernel_size=3, groups=3), "divide"),
        (dict(kernel_size=3, dilations=0), "dilation"),
        (dict(kernel_size=3, clip_ends="wrap"), "clip_ends"),
        (dict(kernel_size=3, offsets=()), "offset"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        correlation(torch.randn(1, 4, 2, 3, 3), None, **kwargs)


def test_bad_weight_shape():
    with pytest.raises(ValueError, match="weight must have shape"):
        corrnet_correlation(torch.randn(1, 4, 3, 5, 5), torch.ones(4, 2, 3, 3), 3, 1, 1)
    with pytest.raises(ValueError, match=r"\(B, C, T, H, W\)"):
        corrnet_correlation(torch.randn(4, 3, 5, 5), None, 3, 1, 1)


# float32 against the float64 loop reference at 1e-5, values and gradients, over K, D, G, several
# offsets (L), odd frame sizes, both clip ends, with/without a weight and with frames split into
# blocks. (B, C, T, H, W, K, D, G, offsets, clip_ends, weight time steps or None, block_elements)
FLOAT32_CASES = [
    (2, 8, 5, 7, 9, 3, 1, 2, (-1,), "self", "T", None),
    (1, 6, 3, 9, 7, 5, 2, 3, (-2, -1, 1, 2), "zero", None, None),      # DCF L = 2 on 3 frames
    (2, 4, 4, 5, 5, 7, 1, 1, (-1, 1), "zero", 1, 4 * 25),            # weight with zero ends
    (1, 9, 2, 3, 5, 9, 1, 3, (-1, 1, 2), "zero", "T", None),         # window wider than the frame
    (3, 4, 1, 6, 5, 3, 2, 4, (-1,), "self", None, 1),                # a single frame
    (1, 4, 6, 4, 3, 5, 1, 2, (3, -3), "self", "T", 4 * 12 * 2),      # |tau| = T/2, split runs
]


@pytest.mark.parametrize("case", FLOAT32_CASES)
def test_float32_matches_reference(case):
    b, c, t, h, w, k, d, g, offsets, ends, steps, block = case
    gen = torch.Generator().manual_seed(len(offsets) * 100 + k * 10 + c)
    x64 = torch.randn(b, c, t, h, w, dtype=torch.float64, generator=gen, requires_grad=True)
    w64 = None
    if steps is not None:
        w64 = torch.randn(c, t if steps == "T" else steps, k, k, dtype=torch.float64,
                          generator=gen, requires_grad=True)
    dilations = tuple(d * abs(o) for o in offsets)
    scale = 1.0 / math.sqrt(c // g)
    x32 = x64.detach().float().requires_grad_()
    w32 = None if w64 is None else w64.detach().float().requires_grad_()
    out = correlation(x32, w32, kernel_size=k, groups=g, offsets=offsets, dilations=dilations,
                      clip_ends=ends, scale=scale, block_elements=block)
    ref = naive_correlation(x64, w64, k, g, offsets, dilations, ends, scale)
    assert out.shape == ref.shape == (b, len(offsets) * g * k * k, t, h, w)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=0)
    grad = torch.randn(ref.shape, dtype=torch.float64, generator=gen)
    ours = torch.autograd.grad(out, [x32] + ([w32] if w32 is not None else []), grad.float())
    theirs = torch.autograd.grad(ref, [x64] + ([w64] if w64 is not None else []), grad)
    for a, r in zip(ours, theirs):
        torch.testing.assert_close(a.double(), r, atol=1e-5, rtol=0)


def test_clip_without_partners_gives_zero_output_and_gradient():
    """DCF ends on a one-frame clip: every partner is missing, so output and gradient are 0."""
    x = torch.randn(2, 4, 1, 5, 5, requires_grad=True)
    out = dcf_correlation(x, kernel_size=3, temporal_range=2)
    assert out.shape == (2, 36, 1, 5, 5) and not out.any()
    (grad,) = torch.autograd.grad(out, x, torch.randn_like(out))
    assert not grad.any()
