"""The Correspondence Proposal module of CPNet (Liu, Lee, Jin, CVPR 2019, Sec. 3; supp. B, D)
and the non-local block (Wang et al. 2018, Sec. 3.2-3.3), checked against references written
out here with Python loops and explicit distances.

* k-NN (CPNet Sec. 3.1): squared L2 over all positions of *other* frames, global top-k.
* The first MLP layer on concat(dt, dh, dw, f_i0, f_ij) (Sec. 3.2): factorised == direct.
* A whole module forward (k-NN, per-pair MLP, max over k, 1x1 back to C, BN, residual add) ==
  a naive per-pair loop.
* Fresh modules are the identity (CPNet Sec. 3.3: "gamma initialised to 0"; NL Sec. 4.1).
"""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vcorr.models import CPModule, NonLocalBlock, knn_other_frames, knn_other_frames_dense
from vcorr.models.cp import grid_positions, knn_chunk_rows




# --------------------------------------------------------------------------- references
def brute_force_neighbours(feat: torch.Tensor, frame_size: int) -> list[list[list[tuple[float, int]]]]:
    """For every (b, i): all (distance, j) with j in another frame, sorted by distance.

    Distances are explicit float64 sums of squared differences (no matmul identity).
    """
    data = feat.double().tolist()                     # [B][C][N]
    b_count, c_count, n = feat.shape
    out = []
    for b in range(b_count):
        cols = [[data[b][c][j] for c in range(c_count)] for j in range(n)]
        rows = []
        for i in range(n):
            cand = []
            for j in range(n):
                if j // frame_size == i // frame_size:
                    continue
                d = sum((cols[i][c] - cols[j][c]) ** 2 for c in range(c_count))
                cand.append((d, j))
            cand.sort()
            rows.append(cand)
        out.append(rows)
    return out


def exact_distances(feat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, N, k) float64 squared distances from every query to its returned neighbours."""
    f = feat.double().transpose(1, 2)                 # (B, N, C)
    nb = torch.stack([f[b, idx[b]] for b in range(f.shape[0])])   # (B, N, k, C)
    return (nb - f.unsqueeze(2)).pow(2).sum(-1)


def check_against_brute_force(feat: torch.Tensor, idx: torch.Tensor, k: int, frame_size: int,
                              *, tol: float = 0.0) -> None:
    """Assert ``idx`` is a valid k-NN result: shape, own-frame exclusion, no duplicates, sorted,
    distances equal to the brute-force k smallest, and the exact set where it is unambiguous
    (the k-th distance strictly below the (k+1)-th by more than ``tol``)."""
    b_count, _, n = feat.shape
    assert idx.shape == (b_count, n, k) and idx.dtype == torch.long
    ref = brute_force_neighbours(feat, frame_size)
    got_d = exact_distances(feat, idx)
    for b in range(b_count):
        for i in range(n):
            row = idx[b, i].tolist()
            assert all(j // frame_size != i // frame_size for j in row), (b, i, row)
            assert len(set(row)) == k, f"duplicate neighbours {row}"
            want = [d for d, _ in ref[b][i][:k]]
            got = got_d[b, i].tolist()
            assert got == pytest.approx(want, rel=tol, abs=tol), (b, i)
            assert all(x <= y + tol for x, y in zip(got, got[1:])), "not nearest first"
            if k == len(ref[b][i]) or ref[b][i][k - 1][0] < ref[b][i][k][0] - tol:
                assert set(row) == {j for _, j in ref[b][i][:k]}, (b, i)


# --------------------------------------------------------------------------- k-NN
# (T, H, W, C, k): k below, equal to and above one frame (H*W), up to all other positions.
KNN_CASES = [(3, 2, 2, 5, 1), (3, 2, 2, 5, 3), (3, 2, 2, 5, 4), (3, 2, 2, 5, 7),
             (3, 2, 2, 5, 8), (2, 3, 3, 4, 9), (4, 2, 3, 6, 13), (5, 1, 1, 3, 4)]


@pytest.mark.parametrize("t,h,w,c,k", KNN_CASES)
def test_knn_matches_brute_force(t: int, h: int, w: int, c: int, k: int) -> None:
    """Random features: the k nearest positions of other frames, nearest first (Sec. 3.1)."""
    g = torch.Generator().manual_seed(t * 100 + h * 10 + k)
    feat = torch.randn(2, c, t * h * w, generator=g)
    idx = knn_other_frames(feat, k, h * w)
    check_against_brute_force(feat, idx, k, h * w, tol=1e-4)
    check_against_brute_force(feat, knn_other_frames_dense(feat, k, h * w), k, h * w, tol=1e-4)


def test_knn_all_other_positions_when_k_is_maximal() -> None:
    """k = N - H*W returns every position of every other frame exactly once."""
    t, hw = 3, 4
    feat = torch.randn(2, 3, t * hw, generator=torch.Generator().manual_seed(1))
    idx = knn_other_frames(feat, t * hw - hw, hw)
    for b in range(2):
        for i in range(t * hw):
            own = i // hw
            assert sorted(idx[b, i].tolist()) == [j for j in range(t * hw) if j // hw != own]


def tied_features(seed: int, b: int = 2, c: int = 2, n: int = 24) -> torch.Tensor:
    """Integer features in {0, 1, 2}: many exactly equal distances, all exact in float32."""
    return torch.randint(0, 3, (b, c, n), generator=torch.Generator().manual_seed(seed)).float()


@pytest.mark.parametrize("k", [1, 3, 6, 7, 12, 18])
def test_knn_exact_ties(k: int) -> None:
    """Ties: the returned distances are exactly the k smallest ones; the set where unambiguous."""
    feat = tied_features(k)
    idx = knn_other_frames(feat, k, 6)                  # 4 frames of 6 positions
    check_against_brute_force(feat, idx, k, 6, tol=0.0)
    check_against_brute_force(feat, knn_other_frames_dense(feat, k, 6), k, 6, tol=0.0)


def test_knn_never_returns_own_frame_even_when_it_is_closest() -> None:
    """Own-frame positions at distance 0 (every position of a frame identical; also all
    positions of the clip identical) must still be excluded (notes: 'Same-frame exclusion')."""
    t, hw, c = 4, 6, 3
    per_frame = torch.arange(t, dtype=torch.float32).repeat_interleave(hw) * 10.0
    frame_const = per_frame.view(1, 1, -1).expand(2, c, -1).contiguous()
    all_equal = torch.ones(2, c, t * hw)
    for feat in (frame_const, all_equal):
        for k in (1, hw, hw + 1, (t - 1) * hw):
            for idx in (knn_other_frames(feat, k, hw), knn_other_frames(feat, k, hw, chunk_rows=1),
                        knn_other_frames(feat, k, hw, chunk_rows=5),
                        knn_other_frames_dense(feat, k, hw)):
                query_frame = torch.arange(t * hw).view(1, -1, 1) // hw
                assert not (idx // hw == query_frame).any()
                assert all(len(set(r)) == k for r in idx.reshape(-1, k).tolist())
    # Frame-constant features: frame t's nearest other frames are t-1 / t+1 (distance 100).
    idx = knn_other_frames(frame_const, hw, hw)
    assert set((idx[0, 0] // hw).tolist()) == {1}          # frame 0 -> all of frame 1
    assert set((idx[0, 3 * hw] // hw).tolist()) == {2}     # frame 3 -> all of frame 2


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 5, 7, 11, 23, 24, 25, 1000])
def test_knn_chunking_is_invisible(chunk_rows: int) -> None:
    """Any chunk size (also ones straddling frame boundaries) gives the unchunked result:
    identical indices for tie-free features, identical distances with ties."""
    t, hw = 4, 6
    feat = torch.randn(2, 5, t * hw, generator=torch.Generator().manual_seed(7))
    for k in (1, 5, 7, 18):
        full = knn_other_frames(feat, k, hw, chunk_rows=t * hw)
        assert torch.equal(knn_other_frames(feat, k, hw, chunk_rows=chunk_rows), full)
        assert torch.equal(knn_other_frames(feat, k, hw), full)
        assert torch.equal(knn_other_frames_dense(feat, k, hw), full)
    tied = tied_features(3)
    for k in (2, 6, 9):
        full = knn_other_frames(tied, k, hw, chunk_rows=t * hw)
        part = knn_other_frames(tied, k, hw, chunk_rows=chunk_rows)
        assert torch.equal(exact_distances(tied, part), exact_distances(tied, full))
        check_against_brute_force(tied, part, k, hw)


def test_knn_chunk_rows_default() -> None:
    """The default chunk keeps one (B, rows, N) block within the element budget, >= 1 row."""
    assert knn_chunk_rows(2, 100, chunk_elements=1000) == 5
    assert knn_chunk_rows(2, 100, chunk_elements=10) == 1
    assert knn_chunk_rows(1, 100, chunk_elements=10 ** 9) == 100


def test_knn_errors() -> None:
    """k must fit outside the query's frame; N must be whole frames."""
    feat = torch.randn(1, 2, 12)
    with pytest.raises(ValueError):
        knn_other_frames(feat, 9, 4)            # only 8 positions outside a frame
    with pytest.raises(ValueError):
        knn_other_frames(feat, 0, 4)
    with pytest.raises(ValueError):
        knn_other_frames(feat, 2, 5)            # 12 is not a whole number of 5-position frames
    knn_other_frames(feat, 8, 4)                # the largest valid k


# --------------------------------------------------------------------------- module pieces
def randomise_bn(module: nn.Module, seed: int) -> None:
    """Nonzero gamma (also the zero-initialised output BN), beta and running statistics."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("channels,reduction", [(8, None), (16, 8)])
def test_first_layer_factorised_equals_direct(channels: int, reduction: int | None) -> None:
    """``A f_i0 + B f_ij + P (p_ij - p_i0)`` == the 2C+3 layer on the concatenation (Sec. 3.2),
    values and gradients."""
    torch.manual_seed(0)
    m = CPModule(channels, k=5, reduction=reduction)
    c = m.feat_dim
    t, h, w = 3, 3, 3
    f = torch.randn(2, c, t * h * w, requires_grad=True)
    pos = grid_positions(t, h, w)
    idx = knn_other_frames(f.detach(), 5, h * w)
    fast = m.first_layer(f, pos, idx)
    direct = m.first_layer_direct(f, pos, idx)
    assert fast.shape == (2, t * h * w, 5, m.weight1.shape[0])
    torch.testing.assert_close(fast, direct, atol=1e-5, rtol=1e-5)
    probe = torch.randn_like(fast)
    grads_fast = torch.autograd.grad((fast * probe).sum(), [f, m.weight1, m.bias1])
    grads_direct = torch.autograd.grad((direct * probe).sum(), [f, m.weight1, m.bias1])
    for a, b in zip(grads_fast, grads_direct):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-5)


def test_grid_positions() -> None:
    """Normalised coordinates (t/T, h/H, w/W) in (t, h, w) raster order (notes, CPNet)."""
    pos = grid_positions(2, 3, 4)
    assert pos.shape == (3, 24)
    n = 1 * 12 + 2 * 4 + 3                           # (t, h, w) = (1, 2, 3)
    torch.testing.assert_close(pos[:, n], torch.tensor([1 / 2, 2 / 3, 3 / 4]))


def bn_eval(bn: nn.Module, v: torch.Tensor) -> torch.Tensor:
    """Inference BatchNorm on a channel vector (or channels-first tensor), written out."""
    shape = (-1,) + (1,) * (v.dim() - 1)
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    return (v - bn.running_mean.double().view(shape)) * scale.view(shape) + bn.bias.double().view(shape)


@torch.no_grad()
def naive_cp_forward(m: CPModule, x: torch.Tensor) -> torch.Tensor:
    """CPNet Sec. 3 / supp. B, D, one pair at a time (float64): optional reduction (1x1 conv +
    BN) and 2x bilinear downsampling; per position the k nearest positions of other frames
    (explicit distances); per pair the MLP on concat(dt, dh, dw, f_i0, f_ij) with BN + ReLU on
    every layer; max over the k pairs; 1x1 back to C; upsample; BN; residual add."""
    x = x.double()
    b_count, c_in, t, h, w = x.shape
    f = x
    if m.reduce is not None:
        conv, bn = m.reduce
        f = bn_eval(bn, torch.einsum("oc,bcthw->bothw", conv.weight.double()[:, :, 0, 0, 0], x)
                    .transpose(0, 1)).transpose(0, 1)
    if m.downsample:
        frames = f.transpose(1, 2).reshape(b_count * t, -1, h, w)
        frames = F.interpolate(frames, size=(h // 2, w // 2), mode="bilinear", align_corners=False)
        f = frames.reshape(b_count, t, -1, h // 2, w // 2).transpose(1, 2)
    _, c, _, hf, wf = f.shape
    positions = [(tt, hh, ww) for tt in range(t) for hh in range(hf) for ww in range(wf)]
    k = min(m.k, len(positions) - hf * wf)
    w1, b1 = m.weight1.double(), m.bias1.double()
    layers = list(m.mlp)
    out = torch.zeros(b_count, c_in, t, hf, wf, dtype=torch.float64)
    for b in range(b_count):
        feats = [f[b, :, tt, hh, ww] for tt, hh, ww in positions]
        for i, (ti, hi, wi) in enumerate(positions):
            dists = []
            for j, (tj, hj, wj) in enumerate(positions):
                if tj != ti:
                    space_time = ((tj - ti) / t) ** 2 + ((hj - hi) / hf) ** 2 + ((wj - wi) / wf) ** 2
                    dists.append((float(((feats[i] - feats[j]) ** 2).sum())
                                  + m.tie_break * space_time, j))
            dists.sort()
            embeds = []
            for _, j in dists[:k]:
                tj, hj, wj = positions[j]
                dp = torch.tensor([(tj - ti) / t, (hj - hi) / hf, (wj - wi) / wf], dtype=torch.float64)
                e = torch.relu(bn_eval(m.bn1, w1 @ torch.cat([dp, feats[i], feats[j]]) + b1))
                for lin, bn, act in zip(layers[0::3], layers[1::3], layers[2::3]):
                    assert isinstance(lin, nn.Linear) and isinstance(act, nn.ReLU)
                    e = torch.relu(bn_eval(bn, lin.weight.double() @ e + lin.bias.double()))
                embeds.append(e)
            pooled = torch.stack(embeds).max(dim=0).values
            out[b, :, ti, hi, wi] = m.proj.weight.double() @ pooled + m.proj.bias.double()
    if m.downsample:
        frames = out.transpose(1, 2).reshape(b_count * t, c_in, hf, wf)
        frames = F.interpolate(frames, size=(h, w), mode="bilinear", align_corners=False)
        out = frames.reshape(b_count, t, c_in, h, w).transpose(1, 2)
    return x + bn_eval(m.bn_out, out.transpose(0, 1)).transpose(0, 1)


CP_CONFIGS = {
    "r18": dict(channels=8, kw=dict(k=4), size=3),
    "r18_k_above_frame": dict(channels=8, kw=dict(k=12), size=3),
    "tie_break": dict(channels=8, kw=dict(k=4, tie_break=2.0), size=3),
    "r101": dict(channels=16, kw=dict(k=4, mlp_ratios=(1 / 8,), reduction=8), size=3),
    "r101_downsample": dict(channels=16, kw=dict(k=4, mlp_ratios=(1 / 8,), reduction=8,
                                                 downsample=True), size=4),
}


@pytest.mark.parametrize("config", list(CP_CONFIGS))
def test_cp_module_equals_naive_per_pair_reference(config: str) -> None:
    """Whole CPModule forward (eval mode, random BN statistics, nonzero output gamma) equals
    the per-pair loop reference on a (2, C, 3, H, W) clip within 1e-5."""
    cfg = CP_CONFIGS[config]
    torch.manual_seed(1)
    m = CPModule(cfg["channels"], **cfg["kw"])
    randomise_bn(m, seed=2)
    m.eval()
    s = cfg["size"]
    x = torch.randn(2, cfg["channels"], 3, s, s, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = m(x)
    ref = naive_cp_forward(m, x)
    assert (y - x).abs().max() > 1e-2, "the module must not be the identity here"
    torch.testing.assert_close(y.double(), ref, atol=1e-5, rtol=1e-5)


def test_cp_module_needs_two_frames_and_positive_k() -> None:
    """Neighbours come from other frames: one frame is an error, as are k < 1 and a negative
    tie-break weight."""
    with pytest.raises(ValueError):
        CPModule(8)(torch.randn(1, 8, 1, 3, 3))
    with pytest.raises(ValueError):
        CPModule(8, k=0)
    with pytest.raises(ValueError, match="tie_break"):
        CPModule(8, tie_break=-0.1)


def test_cp_module_parameter_shapes() -> None:
    """MLP widths [C/4, C/2] and first layer of 2C+3 inputs (supp. B); [C/8] on the C/8
    reduced feature for ResNet-101 (notes)."""
    m = CPModule(64)
    assert m.weight1.shape == (16, 2 * 64 + 3) and m.bias1.shape == (16,)
    assert isinstance(m.mlp[0], nn.Linear) and (m.mlp[0].in_features, m.mlp[0].out_features) == (16, 32)
    assert (m.proj.in_features, m.proj.out_features) == (32, 64)
    m = CPModule(64, k=4, mlp_ratios=(1 / 8,), reduction=8)
    assert m.feat_dim == 8 and m.weight1.shape == (8, 2 * 8 + 3) and len(m.mlp) == 0
    assert (m.proj.in_features, m.proj.out_features) == (8, 64)


# --------------------------------------------------------------------------- identity at init
IDENTITY_CASES = {
    "cp_r18": (lambda: CPModule(8, k=4), (8, 3, 3, 3)),
    "cp_r101": (lambda: CPModule(16, k=4, mlp_ratios=(1 / 8,), reduction=8, downsample=True),
                (16, 3, 6, 6)),
    "cp_r101_odd": (lambda: CPModule(16, k=4, mlp_ratios=(1 / 8,), reduction=8, downsample=True),
                    (16, 2, 5, 7)),
    "nl": (lambda: NonLocalBlock(8), (8, 3, 4, 4)),
    "nl_odd": (lambda: NonLocalBlock(8), (8, 2, 3, 5)),
    "nl_no_subsample": (lambda: NonLocalBlock(8, sub_sample=False), (8, 2, 3, 3)),
}


@pytest.mark.parametrize("case", list(IDENTITY_CASES))
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fresh_module_is_identity(case: str, mode: str) -> None:
    """A freshly built CP module / NL block returns its input exactly (output BN gamma = beta
    = 0: CPNet Sec. 3.3, NL Sec. 4.1), in train and eval mode, yet its output gamma receives
    a gradient (it can learn to leave the identity)."""
    factory, shape = IDENTITY_CASES[case]
    torch.manual_seed(0)
    m = factory()
    m.train(mode == "train")
    x = torch.randn(2, *shape, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    assert torch.equal(y, x)
    (y * torch.randn_like(y)).sum().backward()
    gamma = m.bn_out.weight if isinstance(m, CPModule) else m.bn.weight
    assert gamma.grad is not None and gamma.grad.abs().max() > 0


def test_cp_module_sees_other_frames_only() -> None:
    """Changing one frame changes the CP output of *other* frames (neighbours come only from
    other frames), and the k-NN indices of a frame never point into it (CPNet Sec. 3.1)."""
    torch.manual_seed(0)
    m = CPModule(8, k=3)
    randomise_bn(m, 1)
    m.eval()
    m.keep_knn = True
    x = torch.randn(1, 8, 3, 3, 3)
    with torch.no_grad():
        y = m(x)
        idx = m.last_knn
        assert idx is not None and idx.shape == (1, 27, 3)
        assert not (idx // 9 == (torch.arange(27) // 9).view(1, -1, 1)).any()
        x2 = x.clone()
        x2[:, :, 2] += 3.0
        y2 = m(x2)
    assert not torch.allclose(y[:, :, 0], y2[:, :, 0])



def test_tie_break_picks_the_nearest_position_among_equal_features() -> None:
    """With a flat feature map every distance ties; ``tie_break`` makes each query's neighbour
    the same (h, w) in an adjacent frame, and a unique nearest feature still wins over a nearer
    position (the toy's square finds the square, the black background stays in place)."""
    m = CPModule(4, k=1, tie_break=0.01)
    m.keep_knn = True
    x = torch.zeros(1, 4, 3, 5, 5)
    with torch.no_grad():
        m(x)
    idx = m.last_knn[0, :, 0]
    t, hw = idx // 25, idx % 25
    query = torch.arange(75)
    assert torch.equal(hw, query % 25)
    assert ((t - query // 25).abs() == 1).all()
    x[0, :, 0, 4, 4] = 1.0          # a feature only at (0, 4, 4) and (2, 0, 0)
    x[0, :, 2, 0, 0] = 1.0
    with torch.no_grad():
        m(x)
    assert m.last_knn[0, 4 * 5 + 4, 0] == 2 * 25     # (0, 4, 4) -> (2, 0, 0), far but equal
