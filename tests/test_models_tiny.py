"""CPU-size variants of every family (issue 22, :mod:`vcorr.models.zoo_tiny`): they take 64 and 56
px clips, C2D is exactly blind to frame order, the papers' modules sit at the papers' places
on the same backbones, the sizes are in the stated range, and a motion model learns a
time-reversal pair that C2D cannot tell apart.

Structure checks build on the meta device where they need no numbers. The suite runs in one
torch thread (``conftest._one_torch_thread``).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from vcorr import models
from vcorr.models import CPModule, NonLocalBlock, SmartConv
from vcorr.models.corrnet import CorrelationSumBlock
from vcorr.models.dcf import DCFBlock
from vcorr.models.x3d import X3DBlock

TINY = ["c2d_tiny", "c3d_tiny", "artnet_tiny", "nl_c2d_tiny", "cpnet_tiny", "r2plus1d_tiny",
        "corrnet_tiny", "r2plus1d_dw_tiny", "dcf_tiny", "x3d_tiny", "dcf_x3d_tiny"]
STAGES = ("res2", "res3", "res4", "res5")


def meta_model(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return models.create_model(name, **kw)


def perturb_zero_init_bn(model: nn.Module, seed: int = 0) -> None:
    """Nonzero gamma/beta in the BNs initialised to zero, so every residual branch and plug-in
    contributes (a fresh plug-in is the identity and could hide an order dependence)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "_vcorr_zero_init", False):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


def sites(model: nn.Module, kind: type) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, kind)]


# --------------------------------------------------------------------------- registry, sizes
def test_every_tiny_model_is_registered_as_a_cpu_variant() -> None:
    assert models.list_models("*_tiny") == TINY
    for name in TINY:
        entry = models.get_model_entry(name)
        assert entry.input_shape == (3, 8, 64, 64) and entry.num_classes == 16
        assert entry.paper.startswith("CPU-size variant of "), name


@pytest.mark.parametrize("name", TINY)
def test_parameter_count_in_range(name: str) -> None:
    """Issue 22: roughly 0.2-1.5 M parameters (fast on a 2-core CPU, yet not trivially small)."""
    params = sum(p.numel() for p in meta_model(name).parameters())
    assert 0.2e6 <= params <= 1.5e6, f"{name}: {params / 1e6:.2f} M parameters"


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", TINY)
def test_tiny_model_takes_64_and_56_px_clips(name: str) -> None:
    """(B, 3, 8, 64, 64) and random 56 px crops (B, 3, 8, 56, 56) -> (B, 16) finite logits, in
    training mode (batch statistics) with a gradient, and in eval mode."""
    torch.manual_seed(0)
    model = models.create_model(name)
    for size in (64, 56):
        x = torch.randn(2, 3, 8, size, size)
        model.train()
        out = model(x)
        assert out.shape == (2, 16) and torch.isfinite(out).all()
        out.sum().backward()
        model.eval()
        with torch.no_grad():
            assert model(x).shape == (2, 16)


@pytest.mark.parametrize("name", ["c2d_tiny", "r2plus1d_tiny", "r2plus1d_dw_tiny", "x3d_tiny"])
def test_stage_map_sizes(name: str) -> None:
    """Strides 2, 4, 8, 16 at res2..res5 (the module docstring's choice): 32, 16, 8, 4 px maps
    from 64 px, 28, 14, 7, 4 from 56 px; time is kept except CorrNet's res4/res5 strides."""
    model = models.create_model(name).eval()
    t_out = {"r2plus1d_tiny": (8, 8, 4, 2)}.get(name, (8, 8, 8, 8))
    shapes: dict[str, tuple[int, ...]] = {}
    for s in STAGES:
        getattr(model, s).register_forward_hook(
            lambda m, i, o, s=s: shapes.__setitem__(s, tuple(o.shape[2:])))
    for size, want in ((64, (32, 16, 8, 4)), (56, (28, 14, 7, 4))):
        with torch.no_grad():
            model(torch.randn(1, 3, 8, size, size))
        assert [shapes[s] for s in STAGES] == [(t, w, w) for t, w in zip(t_out, want)]


# --------------------------------------------------------------------------- frame order
def _frame_order_gap(model: nn.Module, x: torch.Tensor, perm: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x) - model(x[:, :, perm])).abs().max())


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_c2d_and_nl_c2d_tiny_are_invariant_to_frame_order(mode: str) -> None:
    """C2D has no temporal conv, stride or pooling other than the head's global mean, so any
    permutation of the frames gives the same logits (train mode: BN batch statistics are over
    B, T, H, W and do not depend on the order either). Every zero-init BN is perturbed so all
    residual branches contribute. NL C2D is invariant too: a non-local block attends over all
    positions with no position code, so permuting frames permutes its output alike (the
    benchmark can expect chance from it on reversals). The controls, R(2+1)D and CPNet (its
    MLP sees (dt, dh, dw)), run the same way, change."""
    torch.manual_seed(0)
    x = torch.randn(3, 3, 8, 64, 64)
    perm = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    reversal = torch.arange(7, -1, -1)
    for name, invariant in (("c2d_tiny", True), ("nl_c2d_tiny", True), ("r2plus1d_tiny", False),
                            ("cpnet_tiny", False)):
        model = models.create_model(name)
        perturb_zero_init_bn(model)
        if mode == "eval":
            # Nonzero running statistics, as after training.
            model.train()
            with torch.no_grad():
                model(torch.randn(4, 3, 8, 64, 64))
        model.train(mode == "train")
        if mode == "train":
            model.apply(lambda m: m.eval() if isinstance(m, nn.Dropout) else None)
        for p in (perm, reversal):
            gap = _frame_order_gap(model, x, p)
            if invariant:
                assert gap < 1e-5, f"{name} ({mode}) depends on frame order: {gap}"
            else:
                assert gap > 1e-4, f"control {name} ({mode}) did not see the order: {gap}"


def test_c2d_tiny_has_no_temporal_operation() -> None:
    """Every conv of c2d_tiny is 1 x k x k with temporal stride 1, and it has no pooling
    layer at all (the head's mean is a function, not a module)."""
    model = meta_model("c2d_tiny")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    assert convs and all(m.kernel_size[0] == 1 and m.stride[0] == 1 for m in convs)
    assert not [m for m in model.modules() if isinstance(m, (nn.MaxPool3d, nn.AvgPool3d))]


# --------------------------------------------------------------------------- modules and backbones
def test_cpnet_nl_artnet_tiny_modules_at_the_papers_places() -> None:
    """CPNet: a CP module (k=8, MLP [C/4, C/2]) inside every block of res3 and res4, before
    the ReLU (authors' ResNet-18); NL: after every block of res3-res5 (supp. Table 1);
    ARTNet: SMART units in conv1 and in every block of res2-res4."""
    cp = meta_model("cpnet_tiny")
    assert sites(cp, CPModule) == ["res3.0.post_add", "res4.0.post_add"]
    for m in (m for m in cp.modules() if isinstance(m, CPModule)):
        assert m.k == 8 and m.reduce is None and not m.downsample
        assert m.weight1.shape[0] == m.channels // 4 and m.proj.in_features == m.channels // 2
    assert sites(meta_model("nl_c2d_tiny"), NonLocalBlock) == [
        "res3.0_after0", "res4.0_after0", "res5.0_after0"]
    assert sites(meta_model("artnet_tiny"), SmartConv) == [
        "stem.0", "res2.0.conv2", "res3.0.conv2", "res4.0.conv2"]


def test_corrnet_and_dcf_tiny_blocks_at_the_papers_places() -> None:
    """CorrNet: one correlation-sum block after res2, res3, res4 (Sec. 4); DCF: one DCF block
    after the last block of res2, res3, res4 (Sec. 3.3), sharing one pyramid, L = 2, 2, 1."""
    corr = meta_model("corrnet_tiny")
    assert sites(corr, CorrelationSumBlock) == ["res2.0_after0", "res3.0_after0", "res4.0_after0"]
    for block in (m for m in corr.modules() if isinstance(m, CorrelationSumBlock)):
        assert block.corr.kernel_size == 7 and block.corr.dilation == 1
    last_blocks = {"dcf_tiny": ("0", "0", "0"), "dcf_x3d_tiny": ("0", "1", "2")}
    for name, last in last_blocks.items():
        model = meta_model(name)
        blocks = [m for m in model.modules() if isinstance(m, DCFBlock)]
        assert sites(model, DCFBlock) == [f"{s}.{i}_after0"
                                          for s, i in zip(("res2", "res3", "res4"), last)], name
        assert len({id(b.pyramid) for b in blocks}) == 1 and blocks[0].pyramid is not None
        assert [b.corr.offsets for b in blocks] == [(-2, -1, 1, 2), (-2, -1, 1, 2), (-1, 1)]
    assert sum(isinstance(m, X3DBlock) for m in meta_model("dcf_x3d_tiny").modules()) == 8


def _backbone(model: nn.Module, plugin: tuple[type, ...]) -> dict[str, tuple[int, ...]]:
    """Parameter shapes outside the plug-ins."""
    inside = {n for n, m in model.named_modules() if isinstance(m, plugin)}
    return {n: tuple(p.shape) for n, p in model.named_parameters()
            if not any(n.startswith(s + ".") for s in inside)}


@pytest.mark.parametrize("base,variants,plugins", [
    ("c2d_tiny", ("cpnet_tiny", "nl_c2d_tiny"), (CPModule, NonLocalBlock)),
    ("r2plus1d_dw_tiny", ("dcf_tiny",), (DCFBlock,)),
    ("x3d_tiny", ("dcf_x3d_tiny",), (DCFBlock,)),
])
def test_module_variants_share_their_baseline_backbone(base: str, variants: tuple[str, ...],
                                                       plugins: tuple[type, ...]) -> None:
    """CPNet / NL = C2D + modules, DCF = its backbone + DCF blocks: the same parameters, names
    and shapes once the plug-ins are left out."""
    want = _backbone(meta_model(base), plugins)
    for name in variants:
        assert _backbone(meta_model(name), plugins) == want, name


def test_corrnet_tiny_is_r2plus1d_tiny_with_the_papers_flop_changes() -> None:
    """CorrNet-26 = R(2+1)D-26 with conv1 halved and 2D res2 (Sec. 6.1), plus the blocks."""
    base = _backbone(meta_model("r2plus1d_tiny"), (CorrelationSumBlock,))
    corr = _backbone(meta_model("corrnet_tiny"), (CorrelationSumBlock,))
    assert base["stem.0.weight"][0] == 2 * corr["stem.0.weight"][0]
    later = {n: s for n, s in base.items() if n.startswith(("res3", "res4", "res5", "head"))}
    assert later == {n: s for n, s in corr.items() if n in later}


# --------------------------------------------------------------------------- early learning check
def _texture(n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """(n, 3, size, size) smooth random texture, zero mean and unit std per sample."""
    x = torch.randn(n, 3, size + 4, size + 4, generator=gen)
    x = F.avg_pool2d(F.avg_pool2d(x, 3, 1), 3, 1)
    return (x - x.mean(dim=(1, 2, 3), keepdim=True)) / x.std(dim=(1, 2, 3), keepdim=True)


def rightward_clips(n: int, *, gen: torch.Generator, frames: int = 8, size: int = 32,
                    radius: int = 5, speeds: tuple[int, ...] = (1, 2, 3)) -> torch.Tensor:
    """(n, 3, frames, size, size): a textured disc (brighter than the background) moving right
    by a whole number of pixels per frame over a static textured background; speed, start and
    row drawn per clip, the disc fully inside every frame."""
    background = _texture(n, size, gen)
    sprite = _texture(n, 2 * radius + 1, gen) + 2.0
    v = torch.tensor(speeds)[torch.randint(len(speeds), (n,), generator=gen)].view(n, 1, 1, 1)
    room = size - 2 * radius - v.view(n) * (frames - 1)
    x0 = radius + (torch.rand(n, generator=gen) * room).long().view(n, 1, 1, 1)
    y0 = radius + (torch.rand(n, generator=gen) * (size - 2 * radius)).long().view(n, 1, 1, 1)
    t = torch.arange(frames).view(1, frames, 1, 1)
    dy = torch.arange(size).view(1, 1, size, 1) - y0                     # (n, 1, H, 1)
    dx = torch.arange(size).view(1, 1, 1, size) - (x0 + v * t)           # (n, T, 1, W)
    inside = dy ** 2 + dx ** 2 <= radius ** 2                             # (n, T, H, W)
    side = 2 * radius + 1
    index = ((dy + radius).clamp(0, side - 1) * side + (dx + radius).clamp(0, side - 1))
    index = index.expand(n, frames, size, size).reshape(n, 1, -1).expand(n, 3, -1)
    disc = sprite.reshape(n, 3, -1).gather(2, index).view(n, 3, frames, size, size)
    return torch.where(inside.unsqueeze(1), disc, background.unsqueeze(2).expand_as(disc))


def reversal_batch(n: int, *, gen: torch.Generator, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Class 0: rightward clips; class 1: the exact time reversal of fresh rightward clips.
    Both classes have the same distribution of frame sets, so only the order tells them apart."""
    right = rightward_clips(n - n // 2, gen=gen, **kw)
    left = rightward_clips(n // 2, gen=gen, **kw).flip(2)
    labels = torch.cat([torch.zeros(len(right)), torch.ones(len(left))]).long()
    return torch.cat([right, left]), labels


# 32 px clips keep the test short; 2-3 px per frame is 1-1.5 cells at res2 (stride 2), where
# CorrNet's first correlation block sits.
LEARN = {"frames": 8, "size": 32, "radius": 4, "speeds": (2, 3)}


def train_on_reversals(name: str, *, steps: int, batch: int = 8, lr: float = 3e-3,
                       seed: int = 0) -> nn.Module:
    """``steps`` Adam steps on fresh reversal batches (2 classes, no dropout); eval mode after."""
    torch.manual_seed(seed)
    model = models.create_model(name, num_classes=2, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed + 1)
    model.train()
    for _ in range(steps):
        x, y = reversal_batch(batch, gen=gen, **LEARN)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_corrnet_tiny_learns_a_reversal_pair_that_c2d_cannot_tell_apart() -> None:
    """The early learning check (issue 22): 40 Adam steps (lr 3e-3) of 8 clips (8 x 32 x 32, a
    textured disc moving 2-3 px per frame over a textured background). Held out: 32 rightward
    clips and their exact time reversals. CorrNet (correlation-sum blocks) separates them; C2D,
    trained the same way, gives a clip and its reversal the same logits, so it gets exactly one
    of every pair right (50%). Measured on this setting: CorrNet 1.00 for each of seeds 0-7
    (0.75-1.00 with 30 steps)."""
    gen = torch.Generator().manual_seed(1234)
    right = rightward_clips(32, gen=gen, **LEARN)
    x = torch.cat([right, right.flip(2)])
    y = torch.cat([torch.zeros(32), torch.ones(32)]).long()
    corrnet, c2d_net = (train_on_reversals(name, steps=40) for name in ("corrnet_tiny", "c2d_tiny"))
    with torch.no_grad():
        corr, c2d = corrnet(x), c2d_net(x)
    assert float((corr.argmax(1) == y).float().mean()) >= 0.85
    torch.testing.assert_close(c2d[:32], c2d[32:], atol=1e-5, rtol=0)
    assert float((c2d.argmax(1) == y).float().mean()) == 0.5
