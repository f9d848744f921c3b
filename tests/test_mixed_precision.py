"""Mixed precision (issue 16, item 3): every registered model trains one step under bfloat16
autocast on CPU with a finite loss and finite gradients, and the CP module's k-NN ranks
neighbours in float32 under autocast.

The k-NN case is built so that bfloat16 arithmetic must reorder neighbours: features are
32 + multiples of 1/4 below 36 (exact in bfloat16, whose spacing there is 1/4), so float32 (and
float64) distances are exact, while a bfloat16 ``|a|^2 + |b|^2 - 2 a.b`` of magnitude ~2^13 has
a spacing of 16 or more, far above the gaps (multiples of 1/16) between neighbours. The test
shows the bfloat16 ranking is wrong on this case before checking that ours is right.

Time: bfloat16 convolutions on a CPU without AVX-512 BF16 take PyTorch's slow reference path
(``slow_conv3d``, a plain bfloat16 GEMM), whose cost follows the weights more than the clip:
about 100 s for the 52 models in one thread on a shared 2-core VM, up to 5 s for a
ResNet-101. Smaller clips than 2 x 4 x 16 x 16 save little and let training-mode BatchNorm
see 2 values per channel in res5, where its gradient explodes in float32 too.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vcorr import models
from vcorr.models.cp import CPModule, grid_positions, knn_other_frames, knn_other_frames_dense

BF16 = torch.bfloat16


# --------------------------------------------------------------------------- k-NN in float32
def exact_case(b: int = 2, c: int = 8, t: int = 3, h: int = 4, w: int = 4,
               seed: int = 0) -> torch.Tensor:
    """(B, C, T*H*W) bfloat16 features whose distances are exact in float32 (module doc)."""
    g = torch.Generator().manual_seed(seed)
    feat = (32 + 0.25 * torch.randint(0, 16, (b, c, t * h * w), generator=g)).to(BF16)
    assert torch.equal(feat.float().to(BF16), feat)
    return feat


def neighbour_distances(feat: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """float64 squared distances (B, N, k) of the returned neighbours, in the returned order:
    equal for two results exactly when both list the k nearest, nearest first (ties may swap
    indices but never distances)."""
    x = feat.double().transpose(1, 2)                                   # (B, N, C)
    nb = torch.stack([x[i][idx[i]] for i in range(x.shape[0])])        # (B, N, k, C)
    return (nb - x.unsqueeze(2)).pow(2).sum(-1)


def bf16_ranking(feat: torch.Tensor, k: int, frame_size: int) -> torch.Tensor:
    """The k-NN with distances computed in bfloat16 (what autocast would run)."""
    sq = feat.pow(2).sum(dim=1)
    dist = sq.unsqueeze(2) + sq.unsqueeze(1) - 2 * torch.bmm(feat.transpose(1, 2), feat)
    assert dist.dtype == BF16
    frame = torch.arange(feat.shape[-1]) // frame_size
    dist.masked_fill_(frame.unsqueeze(1) == frame.unsqueeze(0), float("inf"))
    return dist.topk(k, dim=2, largest=False, sorted=True).indices


def test_bf16_distances_reorder_neighbours_on_the_case():
    """The premise: on this case a bfloat16 distance gets the neighbours wrong."""
    feat, k, f = exact_case(), 4, 16
    ref = neighbour_distances(feat, knn_other_frames_dense(feat.double(), k, f))
    wrong = neighbour_distances(feat, bf16_ranking(feat, k, f))
    assert (wrong != ref).any(dim=-1).float().mean() > 0.5


@pytest.mark.parametrize("chunk_rows", [None, 16, 5], ids=["whole", "frames", "parts"])
def test_knn_ranks_in_float32_under_autocast(chunk_rows):
    feat, k, f = exact_case(), 4, 16
    ref = neighbour_distances(feat, knn_other_frames_dense(feat.double(), k, f))
    with torch.autocast("cpu", dtype=BF16):
        got = knn_other_frames(feat, k, f, chunk_rows=chunk_rows)
        dense = knn_other_frames_dense(feat, k, f)
    assert torch.equal(neighbour_distances(feat, got), ref)
    assert torch.equal(neighbour_distances(feat, dense), ref)


@pytest.mark.parametrize("tie_break", [0.0, 0.01])
def test_cp_module_under_autocast_uses_float32_neighbours(tie_break):
    """The module's own path: bfloat16 block output under autocast (as inside a model), the
    neighbours equal those of the same values in float64; the output stays close to the
    float32 module's (the MLP runs in bfloat16)."""
    b, c, t, h, w = 2, 8, 3, 4, 4
    x = exact_case(b, c, t, h, w).view(b, c, t, h, w)
    torch.manual_seed(0)
    cp = CPModule(c, k=4, mlp_ratios=(1.0, 1.0), tie_break=tie_break).train()
    with torch.no_grad():
        cp.bn_out.weight.fill_(1.0)           # not the identity: the output is compared
    cp.keep_knn = True
    with torch.autocast("cpu", dtype=BF16):
        out = cp(x)
    got = cp.last_knn
    ref = cp(x.double().float())              # float32 module, same (exact) values
    want = cp.last_knn
    keys = x.reshape(b, c, -1)
    if tie_break:
        # The ranked keys include the scaled positions: compare on those float64 keys.
        pos = grid_positions(t, h, w, dtype=torch.float64) * tie_break ** 0.5
        keys = torch.cat([keys.double(), pos.expand(b, 3, -1)], dim=1)
    assert out.dtype == BF16
    assert torch.equal(neighbour_distances(keys, got), neighbour_distances(keys, want))
    assert torch.allclose(out.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())


# --------------------------------------------------------------------------- every model
FRAMES, SIZE, TOY_SIZE, BATCH = 4, 16, 8, 2


@pytest.mark.parametrize("name", models.list_models())
def test_every_model_trains_a_step_under_bf16_autocast(name: str) -> None:
    """One training step (forward and loss under CPU bfloat16 autocast, backward, SGD step):
    the convolutions really run in bfloat16 (the logits are bfloat16), the loss and every
    trainable parameter's gradient are finite, and the step changes the weights. Clips of
    2 x 3 x 4 x 16 x 16 (toy models 8 x 8), models with per-clip-length parts built for 4 frames."""
    entry = models.get_model_entry(name)
    kw = {"num_frames": FRAMES} if "num_frames" in entry.defaults else {}
    torch.manual_seed(0)
    model = models.create_model(name, num_classes=3, **kw).train()
    size = TOY_SIZE if name.startswith("toy_") else SIZE
    x = torch.randn(BATCH, entry.input_shape[0], FRAMES, size, size)
    y = torch.tensor([0, 2])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.autocast("cpu", dtype=BF16):
        out = model(x)
        loss = F.cross_entropy(out.float(), y)
    assert out.dtype == BF16, f"{name}: autocast did not reach the classifier ({out.dtype})"
    assert torch.isfinite(loss), f"{name}: loss {loss.item()}"
    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in params if p.grad is None]
    bad = [n for n, p in params if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not missing and not bad, f"{name}: no gradient {missing[:3]}, non-finite {bad[:3]}"
    opt.step()
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), before))
