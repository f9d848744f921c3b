"""Mixed precision (issue 16, item 3; issue 21): every registered model trains one step under
bfloat16 autocast on CPU with a finite loss and finite gradients, the convolutions under CPU
autocast give the float32 gradients of their bf16-rounded inputs on every CPU, and the CP
module's k-NN ranks neighbours in float32 under autocast.

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
from vcorr.models.ops.precision import float32_convs_on_cpu
from vcorr.models.resnet import VideoResNet

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
    autocast reaches the classifier (the logits are bfloat16), the loss and every
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


# --------------------------------------------------------------------------- exact CPU convs
# Shapes whose bfloat16 backward oneDNN gets wrong on AVX-512 CPUs (PyTorch 2.14.1; issue 21):
# a kernel larger than a 1x1 map, with padding and spatial stride 2 (late ResNet stages on small
# clips). (input (B, C, T, H, W), weight, stride, padding)
ONEDNN_BAD_CASES = [
    ((2, 256, 4, 1, 1), (512, 256, 1, 3, 3), (1, 2, 2), (0, 1, 1)),   # the reported case
    ((2, 64, 4, 1, 1), (128, 64, 1, 3, 3), (2, 2, 2), (0, 1, 1)),
    ((2, 64, 2, 1, 1), (128, 64, 3, 3, 3), (1, 2, 2), (1, 1, 1)),
    ((2, 64, 4, 1, 1), (128, 64, 1, 7, 7), (1, 2, 2), (0, 3, 3)),
    # A T=2 temporal conv, reported wrong in issue 24 (inside corrnet_26); not reproduced alone
    # on a Xeon with AVX-512 BF16 and AMX, PyTorch 2.14.1 (test_trainer_autocast_* below).
    ((2, 64, 2, 4, 4), (64, 64, 3, 1, 1), (1, 1, 1), (1, 0, 0)),
]


def _one_conv_net(weight_shape, stride, padding) -> VideoResNet:
    """A VideoResNet whose stem is exactly one convolution (no BN, ReLU or pool), head identity."""
    from vcorr.models.layers import StemSpec

    co, ci, kt, kh, kw = weight_shape
    conv = torch.nn.Conv3d(ci, co, (kt, kh, kw), stride=stride, padding=padding, bias=False)
    net = VideoResNet([], num_classes=1, in_channels=ci, stem=StemSpec(width=co, pool=False))
    net.stem = conv
    net.head = torch.nn.Identity()
    return net


@pytest.mark.parametrize("inp,weight,stride,padding", ONEDNN_BAD_CASES)
def test_cpu_autocast_conv_gradients_are_the_float32_ones(inp, weight, stride, padding):
    """Input and weight gradients of a convolution under CPU bf16 autocast, through a model's
    forward, equal the float64 gradients of the same bf16-rounded values (what float32 gives).

    Before the fix this fails on AVX-512 CPUs (relative errors up to 1e36, inf/NaN); on an
    AVX2-only CPU oneDNN is right and it cannot fail there -- the fix's own logic is checked on
    every CPU by the test below."""
    net = _one_conv_net(weight, stride, padding)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*inp, generator=g).to(BF16).float().requires_grad_()
    with torch.no_grad():
        net.stem.weight.copy_(net.stem.weight.to(BF16).float())
    with torch.autocast("cpu", dtype=BF16):
        y = net(x)
    grad_out = torch.randn(y.shape, generator=g).to(BF16)
    y.backward(grad_out.to(y.dtype))
    x64 = x.detach().double().requires_grad_()
    w64 = net.stem.weight.detach().double().requires_grad_()
    F.conv3d(x64, w64, stride=stride, padding=padding).backward(grad_out.double())
    for got, ref in ((net.stem.weight.grad, w64.grad), (x.grad, x64.grad)):
        err = (got.double() - ref).abs().max() / ref.abs().max()
        assert err < 1e-5, f"relative error {err.item():.3g}"


def test_float32_convs_on_cpu_is_a_float32_conv_of_the_inputs():
    """The mode's logic, on any CPU: under CPU bf16 autocast a conv returns float32 equal to the
    float32 conv of the same input (no bf16 rounding); linear layers still run in bf16; with autocast off,
    or in float16/bf16 models without autocast, nothing changes."""
    torch.manual_seed(0)
    conv, lin = torch.nn.Conv3d(4, 6, 3, padding=1), torch.nn.Linear(6, 2)
    x = torch.randn(2, 4, 3, 5, 5)
    ref = F.conv3d(x, conv.weight, conv.bias, padding=1)
    with torch.autocast("cpu", dtype=BF16):
        plain = conv(x)
        with float32_convs_on_cpu():
            got = conv(x)
            hidden = lin(got.mean(dim=(2, 3, 4)))
    assert plain.dtype == BF16 and got.dtype == torch.float32 and hidden.dtype == BF16
    assert torch.equal(got, ref)
    with float32_convs_on_cpu():  # autocast off: the mode is not entered
        assert torch.equal(conv(x), F.conv3d(x, conv.weight, conv.bias, padding=1))
        half = conv.to(BF16)(x.to(BF16))
    assert half.dtype == BF16


def test_every_video_resnet_forward_runs_its_convs_in_float32_under_cpu_autocast():
    """What the registered models rely on: the stem's and a stage's conv outputs are float32
    under CPU bf16 autocast (forward hooks see them), and the logits still bfloat16."""
    torch.manual_seed(0)
    model = models.create_model("c2d_r18", num_classes=3).train()
    seen = {}
    for name in ("stem.0", "res5.0.conv1"):
        mod = model.get_submodule(name)
        mod.register_forward_hook(lambda m, a, out, name=name: seen.__setitem__(name, out.dtype))
    with torch.autocast("cpu", dtype=BF16):
        out = model(torch.randn(2, 3, 4, 16, 16))
    assert seen == {"stem.0": torch.float32, "res5.0.conv1": torch.float32}
    assert out.dtype == BF16


# --------------------------------------------------------------------------- issue 24
def _relative_error(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.double() - ref).abs().max() / ref.abs().max()).item()


def test_trainer_autocast_runs_any_models_convs_in_float32():
    """The trainer's autocast (``precision.amp = "bf16"`` on CPU) applies the float32-conv
    rule itself, so a model that is not a VideoResNet gets it too: issue 24's shape, a
    (3, 1, 1) temporal conv with padding 1 at T=2, has the float32 gradient (to 1e-5 of the
    float64 one); plain bf16 autocast is off by bf16 rounding (> 1e-4), so the check can tell."""
    from vcorr.pipelines.train.config import load_config
    from vcorr.pipelines.train.trainer import _autocast

    cfg = load_config(None, ['precision.amp="bf16"'])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 64, 2, 4, 4, generator=g)
    grad_out = torch.randn(2, 64, 2, 4, 4, generator=g)
    x64 = x.double().requires_grad_()
    errors = {}
    for name, ctx in (("trainer", lambda: _autocast(cfg, torch.device("cpu"))),
                      ("plain", lambda: torch.autocast("cpu", dtype=BF16))):
        torch.manual_seed(0)
        conv = torch.nn.Conv3d(64, 64, (3, 1, 1), padding=(1, 0, 0), bias=False)
        xi = x.clone().requires_grad_()
        with ctx():
            y = conv(xi)
        y.backward(grad_out.to(y.dtype))
        w64 = conv.weight.detach().double().requires_grad_()
        F.conv3d(x64, w64, padding=(1, 0, 0)).backward(grad_out.double())
        assert torch.isfinite(conv.weight.grad).all() and torch.isfinite(xi.grad).all()
        errors[name] = max(_relative_error(conv.weight.grad, w64.grad),
                           _relative_error(xi.grad, x64.grad))
        x64.grad = None
    assert errors["trainer"] < 1e-5 and errors["plain"] > 1e-4, errors


def test_corrnet_26_res5_temporal_conv_at_t2_has_the_float32_gradient():
    """Issue 24's report: corrnet_26, 8 frames of 64x64, batch 2, under the trainer's bf16
    autocast on CPU; res5.1.conv2.0 is a (3, 1, 1) conv at T=2. Every gradient is finite, and
    that conv's weight gradient is the float32 one of its own input and output gradient (1e-5
    of float64). The rest of the model (linear, correlation) runs in bf16 by design, so the
    whole model's gradients are compared only for finiteness."""
    from vcorr.pipelines.train.config import load_config
    from vcorr.pipelines.train.trainer import _autocast

    cfg = load_config(None, ['precision.amp="bf16"'])
    torch.manual_seed(0)
    model = models.create_model("corrnet_26", num_classes=4, num_frames=8).train()
    conv = model.get_submodule("res5.1.conv2.0")
    assert isinstance(conv, torch.nn.Conv3d) and conv.kernel_size == (3, 1, 1)
    seen: dict[str, torch.Tensor] = {}

    def keep(module, args, out):
        seen["input"] = args[0].detach()
        out.register_hook(lambda g: seen.__setitem__("grad_out", g.detach()))

    conv.register_forward_hook(keep)
    x = torch.randn(2, 3, 8, 64, 64, generator=torch.Generator().manual_seed(0))
    with _autocast(cfg, torch.device("cpu")):
        loss = F.cross_entropy(model(x).float(), torch.tensor([0, 3]))
    loss.backward()
    assert seen["input"].shape[2] == 2 and seen["input"].dtype == torch.float32
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p.grad).all()]
    assert torch.isfinite(loss) and not bad, bad
    ref = torch.nn.grad.conv3d_weight(seen["input"].double(), conv.weight.shape,
                                      seen["grad_out"].double(), padding=conv.padding)
    assert _relative_error(conv.weight.grad, ref) < 1e-5
