"""``vcorr visualize``: pixel correlation on known motion, CP proposals and the set A of Eq. 2,
figures and the CLI. Tiny clips (32-64 px, 4-6 frames) keep it fast."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from vcorr.models.cp import CPModule, grid_positions
from vcorr.pipelines.visualize.clip import Clip
from vcorr.pipelines.visualize.correlation import draw_stages, model_stages, pixel_correlation
from vcorr.pipelines.visualize.correspondences import (module_correspondences, mlp_outputs,
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
    from vcorr.pipelines.errors import UserError
    with pytest.raises(UserError):
        parse_points("1,2")


# --- model correlation stages --------------------------------------------------------------

class _TinyCorr(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from vcorr.models.ops.correlation import LearnableCorrelation
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
    from vcorr.pipelines.data.video_io import write_video

    path = tmp_path_factory.mktemp("viz") / "square.mp4"
    write_video(path, square_frames(6, 32, 32), lossless=True)
    return path


def _run(args):
    from vcorr.cli.main import cli

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
    # 4 frames of 3 in + 1.3 in legend + 0.9 in margin; 2 rows of 3 + 0.45 in + 0.5; 100 dpi
    assert (w, h) == (1420, 740)
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
    from vcorr.pipelines.train.checkpoint import save_checkpoint

    w = torch.rand(6, 4, 5, 5)
    w[:, :, 0, 4] += 2.0     # largest weight at the top right of every map
    ckpt = tmp_path / "c.pt"
    save_checkpoint(ckpt, {"model": {"res4.0.corr.weight": w, "head.fc.weight": torch.zeros(2, 3)},
                           "config": {}, "classes": ["a", "b"]})
    r = _run(["visualize", "filters", str(ckpt), "--out", str(tmp_path / "f"),
              "--channels", "4", "--time-steps", "2"])
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
    from vcorr.cli.main import cli

    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error:"), r.output


def test_cli_model_without_correlation(square_video, tmp_path):
    r = CliRunner().invoke(__import__("vcorr.cli.main", fromlist=["cli"]).cli,
                           ["visualize", "correlation", "--model", "toy_c2d", str(square_video),
                            "--out", str(tmp_path)])
    assert r.exit_code == 2 and "no correlation modules" in r.output


def test_cli_prepared_video_by_id(toy_prepared, tmp_path):
    from vcorr.pipelines.data.inspect import read_index

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
    from vcorr import models
    from vcorr.pipelines.train.checkpoint import save_checkpoint
    from vcorr.pipelines.train.config import load_config
    from vcorr.pipelines.visualize.clip import load_model, read_clip

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


# --- readable figures (issue 15) ---------------------------------------------------------------

def _grid_spy(monkeypatch, module) -> list[tuple[int, int]]:
    """(rows, columns) of every panel grid ``module`` draws."""
    from vcorr.pipelines.visualize import figures

    grids: list[tuple[int, int]] = []

    def spy(rows, cols, *args, **kw):
        grids.append((rows, cols))
        return figures.frames_grid(rows, cols, *args, **kw)
    monkeypatch.setattr(module, "frames_grid", spy)
    return grids


def test_120_frames_make_one_row_of_8_under_2500_px(tmp_path, monkeypatch):
    """A 120-frame portrait clip (a phone video's worth): 8 evenly spaced frames per row, the
    figure at most 2500 px wide, every frame in the GIF."""
    from vcorr.pipelines.visualize import correlation as corr_mod
    from vcorr.pipelines.visualize.clip import Clip
    from vcorr.pipelines.visualize.correlation import Stage

    n, h, w = 120, 72, 40
    fr = np.random.default_rng(0).integers(0, 256, (n, h, w, 3)).astype(np.uint8)
    clip = Clip(fr, list(range(n)), "phone", times=[i / 30 for i in range(n)])
    stages = [Stage("s", np.zeros((n, 2, h, w), np.float32), np.ones((n, h, w), np.float32),
                    4.0, list(range(n))),
              Stage("half", np.zeros((n // 2, 2, h // 2, w // 2), np.float32),
                    np.ones((n // 2, h // 2, w // 2), np.float32), 8.0, list(range(0, n, 2)))]
    grids = _grid_spy(monkeypatch, corr_mod)
    png, gif = corr_mod.draw_stages(clip, stages, tmp_path, "correlation", animate=True)
    assert grids == [(3, 8)]  # frames + 2 stages, 8 frames (+ the legend column)
    width, height = Image.open(png).size
    assert width <= 2500 and height < 2 * width
    assert Image.open(gif).n_frames == n


def test_times_pick_frames_by_presentation_time(tmp_path, monkeypatch):
    """On a variable-frame-rate video (10 frames at 10 fps, then 30 at 30 fps) --times 0.5,1.5
    shows frames 5 and 25 (by index at the 20 fps average it would be 10 and 30)."""
    import subprocess

    from vcorr.pipelines.data.video_io import ffmpeg_exe, write_video
    from vcorr.pipelines.errors import UserError
    from vcorr.pipelines.visualize import clip as clip_mod
    from vcorr.pipelines.visualize import correlation as corr_mod

    cfr = tmp_path / "cfr.mp4"
    frames = np.stack([np.full((48, 64, 3), 5 * i, np.uint8) for i in range(40)])
    write_video(cfr, frames, fps=30, lossless=True)
    vfr = tmp_path / "vfr.mkv"
    subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(cfr), "-vf",
                    "setpts='if(lt(N,10),N/10,1+(N-10)/30)/TB'", "-fps_mode", "vfr",
                    "-c:v", "libx264rgb", "-qp", "0", str(vfr)], check=True)
    clip = clip_mod.read_clip(vfr, 40)
    assert clip.times[:2] == pytest.approx([0.0, 0.1]) and clip.times[-1] == pytest.approx(
        1 + 29 / 30, abs=2e-3)
    assert clip_mod.shown_frames(clip, [0.5, 1.5]) == [5, 25]
    assert clip.frames[25].mean() == pytest.approx(5 * 25, abs=1)  # the frame itself
    with pytest.raises(UserError, match="outside the clip"):
        clip_mod.shown_frames(clip, [2.5])
    with pytest.raises(UserError, match="both fall on frame 12"):
        clip_mod.shown_frames(clip, [1.06, 1.07])

    shown: list[list[int]] = []
    real = corr_mod.shown_frames
    monkeypatch.setattr(corr_mod, "shown_frames", lambda c, t=None: shown.append(real(c, t))
                        or shown[-1])
    r = _run(["visualize", "correlation", "--pixels", str(vfr), "--frames", "40",
              "--times", "0.5,1.5", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert shown[-1] == [5, 25]


def _moving_and_static(t: int = 4, seed: int = 0) -> tuple[np.ndarray, tuple, tuple]:
    """Frames (t, 48, 64, 3): a textured block moving 4 px right per frame in the top rows; a
    flat grey area with a little sensor noise (new each frame) in the bottom rows."""
    rng = np.random.default_rng(seed)
    tex = rng.integers(0, 256, (16, 80, 3)).astype(np.float64)
    fr = np.empty((t, 48, 64, 3))
    for i in range(t):
        fr[i, :16] = tex[:, 12 - 4 * i:76 - 4 * i]  # content moves right by 4 px
        fr[i, 16:] = 120 + rng.normal(0, 2.0, (32, 64, 3))
    moving = (slice(4, 12), slice(12, 52))   # inside the block, away from its edges
    static = (slice(24, 44), slice(4, 60))
    return fr.clip(0, 255).astype(np.uint8), moving, static


def test_confidence_threshold_greys_out_a_static_textureless_region():
    from vcorr.pipelines.visualize.clip import Clip
    from vcorr.pipelines.visualize.correlation import MIN_CONFIDENCE, Stage, _overlays
    from vcorr.pipelines.visualize.figures import blend, flow_colors, grey

    fr, moving, static = _moving_and_static()
    flow, conf = pixel_correlation(fr, patch=5, kernel_size=9, dilation=2)
    clip = Clip(fr, list(range(len(fr))), "synthetic")
    st = Stage("pixels", flow, conf, 8.0, list(range(len(fr))))
    shown, _ = _overlays(clip, st, MIN_CONFIDENCE)
    everything, _ = _overlays(clip, st, 0.0)
    colors, _ = flow_colors(flow, 8.0)
    for t in range(1, len(fr)):
        # the moving block: the known motion, coloured
        assert np.all(flow[t, 0][moving] == 4) and np.all(flow[t, 1][moving] == 0)
        assert np.all(conf[t][moving] >= MIN_CONFIDENCE)
        want = blend(fr[t], colors[t], 0.8)
        assert np.array_equal(shown[t][moving], want[moving])
        # the flat noisy region: grey, nothing coloured...
        assert np.array_equal(shown[t][static], grey(fr[t])[static])
        # ...where without the threshold noise would be coloured in (not all of it zero motion)
        assert not np.array_equal(everything[t][static], grey(fr[t])[static])
    # frame 0 has no previous frame: grey everywhere
    assert np.array_equal(shown[0], grey(fr[0]))


def test_near_ties_with_zero_motion_count_as_zero():
    """A displacement must beat the zero displacement by more than ZERO_TIE to count as
    motion; on a static noisy ramp (every displacement nearly as good) nearly nothing moves."""
    from vcorr.models.ops.correlation import correlation
    from vcorr.pipelines.visualize import correlation as corr_mod

    v = torch.zeros(9, 1, 1, 3)  # K=3, one frame, three positions
    v[4] = 1.0                   # the zero displacement
    v[5, 0, 0, 0] = 1.04         # dx=+1 beats it by 0.04: no motion
    v[5, 0, 0, 1] = 1.06         # by 0.06: motion dx = +1 x dilation 2
    v[2, 0, 0, 2] = 1.0          # an exact tie: no motion
    flow, _ = corr_mod.dominant_displacement(v, 3, 2, tau=1, zero_tie=0.05)
    assert flow[0, :, 0].T.tolist() == [[0, 0], [2, 0], [0, 0]]
    flow, _ = corr_mod.dominant_displacement(v, 3, 2, tau=1)  # without: the best wins
    assert flow[0, :, 0].T.tolist() == [[2, 0], [2, 0], [0, 0]]

    rng = np.random.default_rng(3)
    ramp = np.linspace(60, 200, 64)[None, :, None] + np.linspace(0, 40, 48)[:, None, None]
    fr = np.stack([ramp + rng.normal(0, 1.0, (48, 64, 3)) for _ in range(4)])
    fr = fr.clip(0, 255).astype(np.uint8)
    flow, _ = pixel_correlation(fr, patch=5, kernel_size=9, dilation=2)
    vol = correlation(corr_mod.pixel_features(fr, 5), None, kernel_size=9, offsets=(-1,),
                      dilations=2, clip_ends="self", scale=1.0)[0]
    raw, _ = corr_mod.dominant_displacement(vol, 9, 2, -1)
    assert (np.abs(flow[1:]).sum(axis=1) > 0).mean() < 0.1
    assert (raw[1:].abs().sum(dim=1) > 0).float().mean() > 0.9


def test_cli_min_confidence_and_bad_times(square_video, tmp_path):
    r = _run(["visualize", "correlation", "--pixels", str(square_video), "--frames", "4",
              "--min-confidence", "0.8", "--times", "0.125,0.25", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    from vcorr.cli.main import cli

    for times, msg in (("9", "outside the clip"), ("a,b", "not a comma-separated list"),
                       (",".join(str(i / 8) for i in range(9)), "at most 8")):
        r = CliRunner().invoke(cli, ["visualize", "correlation", "--pixels", str(square_video),
                                     "--frames", "6", "--times", times,
                                     "--out", str(tmp_path / "x")])
        assert r.exit_code == 2 and msg in r.output, (times, r.output)
        assert not (tmp_path / "x").exists()  # refused before any work


def test_filters_mark_constant_maps_without_an_arrow(tmp_path, monkeypatch):
    """A constant map (CorrNet's initial weights) has no largest weight: no arrow to the
    first of the ties."""
    from matplotlib.axes import Axes

    from vcorr.pipelines.visualize import filters

    arrows: list = []
    real = Axes.annotate

    def annotate(self, *args, **kw):
        arrows.append(kw.get("xy"))
        return real(self, *args, **kw)
    monkeypatch.setattr(Axes, "annotate", annotate)
    w = torch.ones(2, 1, 5, 5)
    w[1, 0, 0, 4] = 2.0
    filters.draw_filters("x.corr.weight", w, tmp_path / "f.png", [])
    assert arrows == [(4, 0)]  # only the map with a single largest weight


def test_visualized_clip_fills_a_short_video_as_the_checkpoint_says() -> None:
    """A 5-frame video under a 10-frame dense clip: ``loop`` jumps back to frame 0, ``repeat``
    (CorrNet Sec. 5, the SSv1 CorrNet configs) shows each frame twice; visualize follows the
    checkpoint's data.short_video like eval and predict do."""
    from vcorr.pipelines.visualize.clip import sample_indices

    assert sample_indices(5, 10) == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4]
    assert sample_indices(5, 10, short_video="repeat") == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
