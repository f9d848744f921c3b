"""``vcorr visualize``: pixel correlation on known motion, CP proposals and the set A of Eq. 2,
figures and the CLI. Tiny clips (32-64 px, 4-6 frames) keep it fast."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from models.cp import CPModule, grid_positions
from pipelines.visualize.clip import Clip
from pipelines.visualize.correlation import draw_stages, model_stages, pixel_correlation
from pipelines.visualize.correspondences import (module_correspondences, mlp_outputs,
                                                 parse_points, winners)

SQ, STEP = 8, 8


def square_frames(t: int = 4, h: int = 32, w: int = 32, textured: bool = True) -> np.ndarray:
    """A (textured) 8x8 square moving STEP pixels right per frame on a dark background."""
    rng = np.random.default_rng(1)
    tex = rng.integers(60, 256, (SQ, SQ, 3)).astype(np.uint8)
    if not textured:
        tex[:] = (250, 200, 60)
    fr = np.full((t, h, w, 3), 30, np.uint8)
    for i in range(t):
        x0 = 1 + STEP * i
        fr[i, 10:10 + SQ, x0:x0 + SQ] = tex[:, :max(0, min(SQ, w - x0))]
    return fr


def distinct_colours(path: Path) -> int:
    im = Image.open(path).convert("RGB")
    return len(np.unique(np.asarray(im).reshape(-1, 3), axis=0))


# --- --pixels correlation ----------------------------------------------------------------------

def test_pixel_correlation_square_motion():
    fr = square_frames(4, 32, 32)
    flow, best = pixel_correlation(fr, patch=5, kernel_size=9, dilation=2)
    assert flow.shape == (4, 2, 32, 32) and best.shape == (4, 32, 32)
    assert np.all(flow[0] == 0)
    for t in range(1, 4):
        x0 = 1 + STEP * t
        reg = flow[t, :, 12:16, x0 + 2:x0 + 6]   # inside the square, away from its edges
        assert np.all(reg[0] == STEP) and np.all(reg[1] == 0), (t, reg)
    # the flat background does not move
    assert np.all(flow[1:, :, 26:, :] == 0)


def test_pixel_correlation_texture_shift():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (40, 48, 3)).astype(np.uint8)
    dy, dx = 2, -4
    fr = np.stack([np.roll(base, (dy * t, dx * t), axis=(0, 1)) for t in range(4)])
    flow, _ = pixel_correlation(fr, patch=3, kernel_size=5, dilation=2)
    inner = flow[1:, :, 8:-8, 8:-8]          # np.roll wraps at the borders
    assert np.all(inner[:, 0] == dx) and np.all(inner[:, 1] == dy)


# --- CP module proposals and the set A -----------------------------------------------------

def _clip_tensor(fr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(fr).float().div(255).permute(3, 0, 1, 2).unsqueeze(0)


def test_cp_proposals_land_on_square():
    torch.manual_seed(0)
    fr = square_frames(4, 32, 32, textured=False)
    module = CPModule(3, k=3, mlp_ratios=(2.0, 2.0)).eval()
    c = module_correspondences(module, _clip_tensor(fr), [(1, 13, 13), (2, 12, 20)])
    assert c.neighbours.shape == (2, 3, 3) and c.wins.shape == (2, 3)
    for q, nbs in zip(c.queries, c.neighbours):
        for t, y, x in nbs:
            assert t != q[0]
            x0 = 1 + STEP * t
            assert 10 <= y < 10 + SQ and x0 <= x < x0 + SQ, (q, (t, y, x))
    # automatic points: the most changed positions, one per frame first
    auto = module_correspondences(module, _clip_tensor(fr), None, num_points=3)
    assert len({int(t) for t in auto.queries[:, 0]}) == 3


def _randomise_bn(module: torch.nn.Module, gen: torch.Generator) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.3)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=gen))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=gen) * 0.5)


def test_set_a_matches_brute_force_eq2():
    gen = torch.Generator().manual_seed(3)
    module = CPModule(4, k=4, mlp_ratios=(1.5, 1.0)).eval()
    module.keep_knn = True
    _randomise_bn(module, gen)
    x = torch.randn(1, 4, 3, 4, 4, generator=gen)
    with torch.no_grad():
        y = module(x)
        idx = module.last_knn
        out = mlp_outputs(module, x, idx)                    # (1, N, k, C)
        # The max over k of these values is what the module adds back (Eq. 2 then proj + BN).
        g = module.proj(out.amax(dim=2))
        back = module.bn_out(g.view(1, 3, 4, 4, 4).permute(0, 4, 1, 2, 3))
        torch.testing.assert_close(y - x, back, atol=1e-5, rtol=1e-4)
        # Independent pair embedding: the literal 2C+3 first layer, BN, ReLU, rest of the MLP.
        pos = grid_positions(3, 4, 4)
        e = module.first_layer_direct(x.reshape(1, 4, -1), pos, idx)
        e = torch.relu(module.bn1(e.reshape(-1, e.shape[-1])))
        ref = module.mlp(e).view(out.shape)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    counts = winners(out)[0]
    n, k, c = ref.shape[1:]
    for i in range(n):
        for j in range(k):
            brute = 0
            for ch in range(c):
                vals = [float(ref[0, i, jj, ch]) for jj in range(k)]
                m = max(vals)
                if m > 0 and abs(vals[j] - m) <= 1e-6 * max(1.0, abs(m)):
                    brute += 1
            assert int(counts[i, j]) == brute, (i, j)
    assert int((counts > 0).sum()) > 0


def test_parse_points():
    assert parse_points("1,2,3; 0,5,6") == [(1, 2, 3), (0, 5, 6)]
    from pipelines.errors import UserError
    with pytest.raises(UserError):
        parse_points("1,2")


# --- model correlation stages --------------------------------------------------------------

class _TinyCorr(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from models.ops.correlation import LearnableCorrelation
        self.corr = LearnableCorrelation(3, kernel_size=5, dilation=2, groups=1, share_time=True)

    def forward(self, x):
        return self.corr(torch.nn.functional.avg_pool3d(x, (1, 2, 2)))


def test_model_stages_and_figure(tmp_path):
    fr = square_frames(4, 32, 32)
    stages = model_stages(_TinyCorr().eval(), _clip_tensor(fr))
    assert len(stages) == 1
    st = stages[0]
    assert st.flow.shape == (4, 2, 16, 16) and st.max_radius == 8.0
    # displacements are in input pixels: multiples of dilation 2 x stride 2
    assert np.all(np.mod(st.flow, 4) == 0)
    paths = draw_stages(Clip(fr, list(range(4)), "sq"), stages, tmp_path, "correlation",
                        animate=True)
    assert [p.name for p in paths] == ["correlation.png", "correlation.gif"]
    assert distinct_colours(paths[0]) > 20


# --- CLI -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def square_video(tmp_path_factory) -> Path:
    from pipelines.data.video_io import write_video

    path = tmp_path_factory.mktemp("viz") / "square.mp4"
    write_video(path, square_frames(6, 32, 32), lossless=True)
    return path


def _run(args):
    from vcorr_cli.main import cli

    return CliRunner().invoke(cli, args, catch_exceptions=False)


def test_cli_help_has_examples():
    for args in (["visualize", "--help"], ["visualize", "correlation", "--help"],
                 ["visualize", "correspondences", "--help"], ["visualize", "filters", "--help"]):
        r = _run(args)
        assert r.exit_code == 0 and "Examples" in r.output, args


def _check_png(path: Path, min_w: int = 200, min_h: int = 150) -> None:
    assert path.is_file()
    w, h = Image.open(path).size
    assert w >= min_w and h >= min_h
    assert distinct_colours(path) > 20


def test_cli_correlation_pixels(square_video, tmp_path):
    r = _run(["visualize", "correlation", "--pixels", str(square_video), "--frames", "4",
              "--out", str(tmp_path), "--animate"])
    assert r.exit_code == 0, r.output
    files = [Path(ln) for ln in r.output.split()]
    assert [f.name for f in files] == ["correlation_pixels.png", "correlation_pixels.gif"]
    _check_png(files[0])
    w, h = Image.open(files[0]).size
    assert (w, h) == (1100, 480)   # (4 frames + legend) x 2.2 in, 2 rows, 100 dpi
    gif = Image.open(files[1])
    assert gif.n_frames == 4 and gif.size == (64, 32)


def test_cli_correspondences_model(square_video, tmp_path):
    r = _run(["visualize", "correspondences", "--model", "toy_cpnet", str(square_video),
              "--points", "1,13,13", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    files = [Path(ln) for ln in r.output.split()]
    assert [f.name for f in files] == ["correspondences.png"]
    _check_png(files[0])


def test_cli_filters(tmp_path):
    from pipelines.train.checkpoint import save_checkpoint

    w = torch.rand(6, 4, 5, 5)
    w[:, :, 0, 4] += 2.0     # largest weight at the top right of every map
    ckpt = tmp_path / "c.pt"
    save_checkpoint(ckpt, {"model": {"res4.0.corr.weight": w, "head.fc.weight": torch.zeros(2, 3)},
                           "config": {}, "classes": ["a", "b"]})
    r = _run(["visualize", "filters", str(ckpt), "--out", str(tmp_path / "f"),
              "--channels", "4", "--times", "2"])
    assert r.exit_code == 0, r.output
    files = [Path(ln) for ln in r.output.split()]
    assert [f.name for f in files] == ["filters_res4_0_corr.png"]
    _check_png(files[0], 150, 100)


@pytest.mark.parametrize("args", [
    ["visualize", "correlation", "--pixels", "no/such/video.mp4", "--out", "o"],
    ["visualize", "correspondences", "--model", "no_such_model", "v.mp4", "--out", "o"],
    ["visualize", "filters", "no/such.pt", "--out", "o"],
    ["visualize", "correlation", "--model", "toy_c2d", "--pixels", "v.mp4", "--out", "o"],
])
def test_cli_bad_input_exit_2(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from vcorr_cli.main import cli

    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output


def test_cli_model_without_correlation(square_video, tmp_path):
    r = CliRunner().invoke(__import__("vcorr_cli.main", fromlist=["cli"]).cli,
                           ["visualize", "correlation", "--model", "toy_c2d", str(square_video),
                            "--out", str(tmp_path)])
    assert r.exit_code == 2 and "no correlation modules" in r.output


def test_cli_prepared_video_by_id(toy_prepared, tmp_path):
    from pipelines.data.inspect import read_index

    row = read_index(toy_prepared)[0]
    r = _run(["visualize", "correspondences", "--model", "toy_cpnet", "--data", str(toy_prepared),
              "--id", row["id"], "--out", str(tmp_path), "--animate"])
    assert r.exit_code == 0, r.output
    files = [Path(ln) for ln in r.output.split()]
    assert [f.name for f in files] == ["correspondences.png", "correspondences.gif"]
    _check_png(files[0])
    r = _run(["visualize", "correlation", "--pixels", "--data", str(toy_prepared), "--id", "nope",
              "--out", str(tmp_path)])
    assert r.exit_code == 2 and "no video with id" in r.output


def test_cli_checkpoint_clip_settings(square_video, tmp_path):
    """--checkpoint: model weights and the evaluation clip (frames, interval) from its config."""
    import models
    from pipelines.train.checkpoint import save_checkpoint
    from pipelines.train.config import load_config
    from pipelines.visualize.clip import load_model, read_clip

    cfg = load_config(None, ['model.name="toy_cpnet"', "data.frames=3", "data.interval=2"])
    model = models.create_model("toy_cpnet", num_classes=2)
    ckpt = tmp_path / "toy.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "config": cfg, "classes": ["a", "b"]})
    loaded = load_model(ckpt)
    assert (loaded.frames, loaded.interval, loaded.sampler) == (3, 2, "dense")
    clip = read_clip(square_video, loaded.frames, loaded.interval, loaded.sampler)
    assert clip.indices == [0, 2, 4] and clip.frames.shape == (3, 32, 32, 3)
    r = _run(["visualize", "correspondences", "--checkpoint", str(ckpt), str(square_video),
              "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    _check_png(Path(r.output.split()[0]))
