"""The moving-square toy dataset: trajectories, rendering into real videos, determinism."""
from __future__ import annotations

import csv

import numpy as np
import torch
import pytest

from vcorr.pipelines.data.toy import CLASSES, ToyOptions, make_toy, render_toy, toy_trajectories
from vcorr.pipelines.errors import UserError

DIRECTION = {"up": (-1, 0), "down": (1, 0), "left": (0, -1), "right": (0, 1)}


def _decode_all(root, rows):
    from vcorr.pipelines.data.decode import VideoReader

    out = []
    for r in rows:
        v = VideoReader(root / r["path"])
        out.append(v.read(range(v.info.num_frames)))
    return out


def _rows(root):
    with open(root / "annotations.csv", newline="") as f:
        return list(csv.DictReader(f))


def square_positions(frames: np.ndarray, square: int = 2) -> list[tuple[int, int]]:
    """Top-left (y, x) of the white square in each frame (no wrap across borders)."""
    out = []
    for f in frames:
        ys, xs = np.nonzero(f[..., 0] > 127)
        assert len(ys) == square * square, f"expected a {square}x{square} square, got {len(ys)} px"
        out.append((int(ys.min()), int(xs.min())))
    return out


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_trajectories_respect_steps_canvas_and_direction(seed):
    opt = ToyOptions(videos=400, seed=seed)
    labels, pos = toy_trajectories(opt)
    assert labels.shape == (400,) and pos.shape == (400, opt.frames, 2)
    assert set(np.unique(labels)) == {0, 1, 2, 3}  # all four directions occur
    # the whole square stays on the canvas, opt.margin pixels off every border
    assert pos.min() == opt.margin and pos.max() == opt.canvas - opt.square - opt.margin
    d = np.diff(pos, axis=1)  # (N, T-1, 2)
    for lab, dd in zip(labels, d):
        dy, dx = DIRECTION[CLASSES[lab]]
        along = dd[:, 0] * dy + dd[:, 1] * dx  # movement along the label's direction
        across = dd[:, 0] * dx + dd[:, 1] * dy
        assert np.all(along >= opt.min_step) and np.all(along <= opt.max_step)
        assert np.all(across == 0)
    steps = np.abs(d).sum(-1)
    assert set(np.unique(steps)) == {7, 8, 9}  # every allowed step size is used


def test_start_positions_cover_the_allowed_range():
    """Starts are uniform over the positions that keep the path on the canvas (not always at
    the same border)."""
    opt = ToyOptions(videos=2000, seed=0)
    labels, pos = toy_trajectories(opt)
    right = pos[labels == CLASSES.index("right")]
    # moving right: y anywhere in margin..canvas-square-margin, x from the margin up
    m = opt.margin
    assert right[:, 0, 0].min() == m and right[:, 0, 0].max() == opt.canvas - opt.square - m
    assert right[:, 0, 1].min() == m and right[:, 0, 1].max() > m


def test_wrap_allows_long_paths_and_stays_in_canvas():
    opt = ToyOptions(videos=50, frames=12, wrap=True, seed=2)
    labels, pos = toy_trajectories(opt)
    assert pos.shape == (50, 12, 2)
    assert pos.min() >= 0 and pos.max() < opt.canvas
    frames = render_toy(opt, labels, pos)
    # the square is always 4 white pixels, even where it straddles a border
    assert np.all((frames[..., 0] == 255).reshape(len(frames), -1).sum(1) == 4)
    # step modulo the canvas is still within [min_step, max_step] along the direction
    for lab, p in zip(labels, pos):
        dy, dx = DIRECTION[CLASSES[lab]]
        along = (np.diff(p, axis=0) @ np.array([dy, dx])) % opt.canvas
        assert np.all((along >= 7) & (along <= 9))


def test_path_too_long_without_wrap_is_a_clear_error():
    with pytest.raises(UserError, match="--wrap"):
        toy_trajectories(ToyOptions(videos=4, frames=5))  # 4*9 = 36 px > 24 px of room
    with pytest.raises(UserError, match="margin"):
        toy_trajectories(ToyOptions(videos=4, frames=4))  # 27 px > 32 - 2 - 2*3
    toy_trajectories(ToyOptions(videos=4, frames=5, wrap=True))  # fine with wrap
    toy_trajectories(ToyOptions(videos=4, frames=5, max_step=7, margin=0))  # 28 px fits


def _pooled_toy_features(opt: ToyOptions) -> torch.Tensor:
    """Spatio-temporal mean of a fresh two-layer toy C2D's features for every toy video."""
    from vcorr.models import create_model

    labels, pos = toy_trajectories(opt)
    frames = torch.from_numpy(render_toy(opt, labels, pos)).float() / 255
    clips = frames.reshape(opt.videos, opt.frames, opt.canvas, opt.canvas, 3).permute(0, 4, 1, 2, 3)
    torch.manual_seed(0)
    net = create_model("toy_c2d").eval()
    with torch.no_grad():
        return net.forward_features(clips).mean((2, 3, 4))


def test_margin_leaves_no_border_shortcut():
    """With the default margin every video gives a translation-invariant two-layer net the same
    pooled features (so C2D/TRN/NL can only guess); without it the borders give positions away."""
    feats = _pooled_toy_features(ToyOptions(videos=64, seed=3))
    assert torch.allclose(feats, feats[:1].expand_as(feats), atol=1e-5)
    leaky = _pooled_toy_features(ToyOptions(videos=64, frames=4, margin=0, seed=3))
    assert (leaky - leaky[:1]).abs().max() > 1e-3


@pytest.mark.parametrize("opt", [ToyOptions(videos=0), ToyOptions(square=0),
                                 ToyOptions(min_step=5, max_step=4),
                                 ToyOptions(val_fraction=1.0), ToyOptions(margin=-1)])
def test_bad_options_raise_user_error(opt, tmp_path):
    with pytest.raises(UserError):
        make_toy(tmp_path / "t", opt)


def test_make_toy_writes_videos_that_decode_to_the_trajectories(toy_dataset):
    root, opt = toy_dataset["root"], toy_dataset["options"]
    rows = _rows(root)
    labels, pos = toy_trajectories(opt)
    assert [r["id"] for r in rows] == [f"toy_{i:05d}" for i in range(16)]
    assert [r["label"] for r in rows] == [CLASSES[i] for i in labels]
    assert (root / "classes.txt").read_text().split("\n")[:4] == list(CLASSES)
    for i, frames in enumerate(_decode_all(root, rows)):
        assert frames.shape == (opt.frames, opt.canvas, opt.canvas, 3)
        # lossless: exactly black and white, the square where the trajectory puts it
        expect = np.zeros_like(frames)
        for t, (y, x) in enumerate(pos[i]):
            expect[t, y:y + 2, x:x + 2] = 255
        np.testing.assert_array_equal(frames, expect, err_msg=f"video {i}")
        # and it moves in the direction of its label
        ys_xs = np.array(square_positions(frames))
        dy, dx = DIRECTION[rows[i]["label"]]
        assert np.all(np.sign(np.diff(ys_xs, axis=0)) == [dy, dx])


def test_val_fraction_split(toy_dataset):
    rows = _rows(toy_dataset["root"])
    splits = [r["split"] for r in rows]
    assert splits == ["train"] * 12 + ["val"] * 4  # 16 * 0.25 = 4 val, the last ones


@pytest.mark.parametrize("videos,frac,n_val", [(10, 0.0, 0), (10, 0.2, 2), (7, 0.5, 4)])
def test_val_fraction_counts(tmp_path, videos, frac, n_val):
    s = make_toy(tmp_path, ToyOptions(videos=videos, val_fraction=frac))
    rows = _rows(tmp_path)
    assert s["val"] == n_val and s["train"] == videos - n_val
    assert sum(r["split"] == "val" for r in rows) == n_val
    assert len(list((tmp_path / "videos").glob("*.mp4"))) == videos


def test_deterministic_for_a_seed(tmp_path, toy_dataset):
    opt = toy_dataset["options"]
    make_toy(tmp_path / "again", opt)
    a, b = toy_dataset["root"], tmp_path / "again"
    assert (a / "annotations.csv").read_bytes() == (b / "annotations.csv").read_bytes()
    assert (a / "classes.txt").read_bytes() == (b / "classes.txt").read_bytes()
    fa, fb = _decode_all(a, _rows(a)), _decode_all(b, _rows(b))
    for x, y in zip(fa, fb):
        np.testing.assert_array_equal(x, y)
    # another seed gives another dataset
    make_toy(tmp_path / "other", ToyOptions(**{**opt.__dict__, "seed": opt.seed + 1}))
    fc = _decode_all(tmp_path / "other", _rows(tmp_path / "other"))
    assert any(not np.array_equal(x, y) for x, y in zip(fa, fc))


def test_custom_canvas_square_and_frames(tmp_path):
    opt = ToyOptions(videos=6, frames=3, canvas=40, square=4, min_step=2, max_step=3, seed=5)
    make_toy(tmp_path, opt)
    rows = _rows(tmp_path)
    labels, pos = toy_trajectories(opt)
    for i, frames in enumerate(_decode_all(tmp_path, rows)):
        assert frames.shape == (3, 40, 40, 3)
        assert square_positions(frames, square=4) == [tuple(p) for p in pos[i]]


# decord 0.6 fails on these widths; VideoSource falls back to PyAV for them.
@pytest.mark.parametrize("canvas", [24, 48])
def test_small_canvas_sizes_decode(tmp_path, canvas):
    opt = ToyOptions(videos=2, frames=3, canvas=canvas, min_step=1, max_step=2, seed=1)
    make_toy(tmp_path, opt)
    labels, pos = toy_trajectories(opt)
    frames = _decode_all(tmp_path, _rows(tmp_path))
    assert square_positions(frames[0]) == [tuple(p) for p in pos[0]]
