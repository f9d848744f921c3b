"""The motion benchmark's dataset (``vcorr toy --kind motion``): classes and splits, real
videos through the decoding layer, pairs that differ only by frame order (rendered and after
the codec), no key-frame quality cue, determinism, the documented motions, prepare and CLI."""
from __future__ import annotations

import colorsys
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from vcorr.pipelines.data.motion import (CONTROL_CLASSES, CONTROL_KINDS, DISTRACTOR_KINDS,
                                         MOTION_CLASSES, REVERSAL_PAIRS, TARGET_KINDS, Look,
                                         MotionOptions, draw_object, make_motion, motion_plan,
                                         render_video, sample_scene, video_rng)
from vcorr.pipelines.data.video_io import SegmentedVideoWriter, write_video
from vcorr.pipelines.errors import UserError

# 40 small videos: 20 frames of 64x64 at 20 fps; 20 train, 4 val, 16 test.
OPT = MotionOptions(videos=40, fps=20.0, seconds=1.0, size=64, seed=5, progress=False)
FIRST = [a for a, _ in REVERSAL_PAIRS]
SECOND = [b for _, b in REVERSAL_PAIRS]


@pytest.fixture(scope="module")
def motion_set(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("motion") / "set"
    make_motion(out, OPT)
    return out


def _decode(path: Path) -> tuple[np.ndarray, float]:
    from vcorr.pipelines.data.decode import VideoReader

    v = VideoReader(path)
    return v.read(range(v.info.num_frames)), v.info.fps


def _psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """PSNR (dB) of every frame of (T, H, W, 3) ``a`` against ``b``."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    return 10 * np.log10(255.0 ** 2 / mse)


def _encode_intra(folder: Path, videos: list[np.ndarray], opt: MotionOptions = OPT) -> list:
    """Decoded frames of ``videos`` written as the dataset writes them."""
    t, s = videos[0].shape[:2]
    with SegmentedVideoWriter(folder / "v_%05d.mp4", len(videos), t, s, s, opt.fps,
                              intra_qp=opt.qp) as w:
        for v in videos:
            w.write(v)
    return [_decode(folder / f"v_{i:05d}.mp4")[0] for i in range(len(videos))]


def _frame_stats(frames: np.ndarray) -> np.ndarray:
    """(T, 3): mean, standard deviation and sharpness (mean |Laplacian|) of each frame's
    grey level."""
    g = frames.astype(np.float64).mean(-1)
    lap = 4 * g[:, 1:-1, 1:-1] - g[:, :-2, 1:-1] - g[:, 2:, 1:-1] - g[:, 1:-1, :-2] \
        - g[:, 1:-1, 2:]
    return np.stack([g.mean((1, 2)), g.std((1, 2)), np.abs(lap).mean((1, 2))], 1)


def _rows(root: Path) -> list[dict]:
    with open(root / "annotations.csv", newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- classes, splits
def test_classes_pairs_and_controls(motion_set):
    assert len(MOTION_CLASSES) == len(set(MOTION_CLASSES)) == 16
    assert MOTION_CLASSES == tuple(FIRST[i // 2] if i % 2 == 0 else SECOND[i // 2]
                                   for i in range(14)) + CONTROL_CLASSES
    assert len(REVERSAL_PAIRS) * 2 >= 12 and len(CONTROL_CLASSES) >= 2
    # a control's shape is used by no motion class target and no distractor
    assert set(CONTROL_KINDS) == set(CONTROL_CLASSES)
    assert not set(CONTROL_KINDS.values()) & (set(TARGET_KINDS) | set(DISTRACTOR_KINDS))
    meta = json.loads((motion_set / "motion.json").read_text())
    assert meta["classes"] == list(MOTION_CLASSES)
    assert [tuple(p) for p in meta["reversal_pairs"]] == REVERSAL_PAIRS
    assert meta["control_classes"] == list(CONTROL_CLASSES)
    assert meta["frames"] == 20 and meta["options"]["seed"] == 5
    assert meta["encoder"]["gop"] == 1 and meta["encoder"]["qp"] == OPT.qp
    assert (motion_set / "classes.txt").read_text().split() == list(MOTION_CLASSES)


@pytest.mark.parametrize("seed", range(20))
def test_only_control_targets_are_black_and_white(seed):
    """The controls' look (black and white, fine pattern) is what a frame model learns fast;
    no motion target may share it, or the controls would depend on more than appearance."""
    from vcorr.pipelines.data.motion import CONTROL_PATTERNS, _target
    rng = np.random.default_rng(seed)
    for kind in TARGET_KINDS + tuple(CONTROL_PATTERNS):
        track, _ = _target(rng, "slow", (0, 1), kind, 128, 20)
        sat = [colorsys.rgb_to_hsv(*(c[:3] / 255))[1] for c in track.look.colours]
        if kind in CONTROL_PATTERNS:
            assert max(sat) == 0 and track.look.pattern == CONTROL_PATTERNS[kind]
        else:
            assert sat[0] >= 0.5


@pytest.mark.parametrize("videos,val,test,splits", [
    (3200, 0.1, 0.4, {"train": 1600, "val": 320, "test": 1280}),
    (40, 0.1, 0.4, {"train": 20, "val": 4, "test": 16}),
    (37, 0.2, 0.3, {"train": 19, "val": 7, "test": 11}),
    (10, 0.0, 0.5, {"train": 5, "val": 0, "test": 5}),
])
def test_splits_sized_and_classes_balanced(videos, val, test, splits):
    plan = motion_plan(MotionOptions(videos=videos, val_fraction=val, test_fraction=test))
    assert [s.id for s in plan] == [f"motion_{i:05d}" for i in range(videos)]
    order = ["train"] * splits["train"] + ["val"] * splits["val"] + ["test"] * splits["test"]
    assert [s.split for s in plan] == order
    for split, n in splits.items():
        counts = [sum(s.split == split and s.label == c for s in plan) for c in MOTION_CLASSES]
        assert sum(counts) == n and max(counts) - min(counts) <= (1 if n % 16 else 0), counts
    if videos == 3200:  # the default: 200 videos per class, 100/20/80
        assert all(sum(s.label == c for s in plan) == 200 for c in MOTION_CLASSES)


@pytest.mark.parametrize("kw", [{"videos": 0}, {"val_fraction": 0.6}, {"test_fraction": -0.1},
                                {"fps": 10.0, "seconds": 1.0}, {"size": 63}, {"size": 16},
                                {"qp": 52}, {"workers": 0}])
def test_bad_options_are_user_errors(tmp_path, kw):
    with pytest.raises(UserError):
        make_motion(tmp_path / "m", MotionOptions(**kw))
    assert not (tmp_path / "m").exists()  # nothing written


# --------------------------------------------------------------------------- files
def test_videos_decode_with_the_frames_and_rate_written(motion_set):
    rows = _rows(motion_set)
    plan = motion_plan(OPT)
    assert [(r["id"], r["label"], r["split"], r["path"]) for r in rows] == \
        [(s.id, s.label, s.split, f"videos/{s.id}.mp4") for s in plan]
    assert sorted(p.name for p in (motion_set / "videos").iterdir()) == \
        [f"{s.id}.mp4" for s in plan]  # no temporary files left
    for r in rows:
        frames, fps = _decode(motion_set / r["path"])
        assert frames.shape == (20, 64, 64, 3) and fps == pytest.approx(20.0), r["id"]


def test_second_class_renders_as_the_exact_reversal_of_the_first():
    for a, b in REVERSAL_PAIRS:
        for index in (0, 7):
            va = render_video(a, video_rng(11, index), 48, 16)
            vb = render_video(b, video_rng(11, index), 48, 16)
            np.testing.assert_array_equal(vb, va[::-1], err_msg=f"{a}/{b}")
            assert not np.array_equal(va, va[::-1])  # the video does change over time


def test_encoded_frame_depends_on_its_pixels_only(tmp_path):
    """With the dataset's encoder a frame decodes the same wherever it stands, so the
    encoded reversal is the reversed encoding; an ordinary H.264 stream (key frame, then
    predicted frames) fails this check: the check can see a key-frame cue."""
    v = render_video("uncover", video_rng(2, 3), 64, 20)
    fwd, rev, rolled = _encode_intra(tmp_path, [v, v[::-1].copy(), np.roll(v, 7, axis=0)])
    np.testing.assert_array_equal(rev, fwd[::-1])
    np.testing.assert_array_equal(rolled, np.roll(fwd, 7, axis=0))
    write_video(tmp_path / "gop_f.mp4", v, fps=20)
    write_video(tmp_path / "gop_r.mp4", v[::-1].copy(), fps=20)
    assert not np.array_equal(_decode(tmp_path / "gop_r.mp4")[0],
                              _decode(tmp_path / "gop_f.mp4")[0][::-1])


def test_pair_files_are_exact_reversals_and_share_frame_statistics(motion_set, tmp_path):
    """A second-class file decodes to exactly the reversed frames of the first class's video
    from the same random stream, so the per-frame statistics of the two classes are the same
    multiset; and across independent videos (all pairs) they agree within sampling error."""
    rows = _rows(motion_set)
    second = [(i, r) for i, r in enumerate(rows) if r["label"] in SECOND][:4]
    firsts = [render_video(FIRST[SECOND.index(r["label"])], video_rng(OPT.seed, i), 64, 20)
              for i, r in second]
    for (i, r), dec_a in zip(second, _encode_intra(tmp_path, firsts)):
        dec_b = _decode(motion_set / r["path"])[0]
        np.testing.assert_array_equal(dec_b, dec_a[::-1], err_msg=r["id"])
        sa, sb = _frame_stats(dec_a), _frame_stats(dec_b)
        np.testing.assert_array_equal(np.sort(sa, 0), np.sort(sb, 0))
    # independent videos: video-level averages of each statistic, first vs second classes
    groups = {"first": [], "second": []}
    for r in rows:
        if r["label"] in CONTROL_CLASSES:
            continue
        stats = _frame_stats(_decode(motion_set / r["path"])[0]).mean(0)
        groups["first" if r["label"] in FIRST else "second"].append(stats)
    a, b = np.array(groups["first"]), np.array(groups["second"])
    se = np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
    assert np.all(np.abs(a.mean(0) - b.mean(0)) < 3 * se), (a.mean(0), b.mean(0), se)


def test_no_key_frame_quality_cue(motion_set, tmp_path):
    """Per-frame PSNR of the files against the rendered frames: the first and the last frame
    are coded as well as the others (on average over the set), and the codec does leave
    artefacts. An ordinary H.264 stream of the same videos codes its first frame better."""
    rows = _rows(motion_set)
    gaps, mean_psnr, gop_gaps = [], [], []
    for i, r in enumerate(rows):
        ref = render_video(r["label"], video_rng(OPT.seed, i), 64, 20)
        p = _psnr(_decode(motion_set / r["path"])[0], ref)
        gaps.append([p[0] - p[1:].mean(), p[-1] - p[:-1].mean()])
        mean_psnr.append(p.mean())
        write_video(tmp_path / f"gop{i}.mp4", ref, fps=20, crf=OPT.qp)
        g = _psnr(_decode(tmp_path / f"gop{i}.mp4")[0], ref)
        gop_gaps.append(g[0] - g[1:].mean())
    first, last = np.mean(gaps, 0)  # about -0.1 and +0.1 dB
    assert abs(first) < 0.4 and abs(last) < 0.4, (first, last)
    assert 28 < np.mean(mean_psnr) < 42
    assert np.mean(gop_gaps) > 0.4  # about 0.8 dB: the cue the dataset's encoder removes


def test_same_seed_same_bytes_other_seed_differs(motion_set, tmp_path):
    again = tmp_path / "again"
    make_motion(again, MotionOptions(**{**OPT.__dict__, "workers": 2}))

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file()}

    assert files(again) == files(motion_set)
    other = tmp_path / "other"
    make_motion(other, MotionOptions(**{**OPT.__dict__, "seed": 6, "videos": 16}))
    theirs, ours = files(other), files(motion_set)
    assert all(theirs[k] != ours[k] for k in theirs if k.startswith("videos/"))


# --------------------------------------------------------------------------- the motions
def _screen(scene, track) -> tuple[np.ndarray, np.ndarray]:
    c = (scene.size - 1) / 2
    return c + (track.centre - c - scene.shift) / scene.zoom[:, None], track.radius / scene.zoom


@pytest.mark.parametrize("seed", range(6))
def test_target_motion_matches_its_class(seed):
    """The motions the module docstring documents (128 px, 50 frames): speeds of the target
    in the world, and on screen (camera included) the direction, the target in view, and
    what the recommended clip sees (every 2nd frame, 8 frames at interval 3: original frames
    2s .. 2s + 42 for a start s of 0..3)."""
    size, t = 128, 50
    for process in FIRST:
        scene = sample_scene(np.random.default_rng([seed, 9]), process, "disc", size, t)
        world = scene.target.centre
        step = np.diff(world, axis=0)
        pos, radius = _screen(scene, scene.target)
        angle = np.rad2deg(np.diff(scene.target.angle))
        axis = 1 if process.startswith("left") else 0
        if process in ("left_slow", "up_slow"):
            assert np.allclose(step[:, 1 - axis], 0) and np.ptp(step[:, axis]) < 1e-9
            assert 1 <= -step[0, axis] <= 3
            # on screen, per sampled frame (6 frames) at 64 px: 3-9 px, +-1 of camera motion
            per_sample = -(pos[6:, axis] - pos[:-6, axis]) / 2
            assert np.all((per_sample > 2) & (per_sample < 10))
        elif process in ("left_fast", "up_fast"):
            assert np.allclose(step[:, 1 - axis], 0)
            moving = -step[:, axis] > 1e-9
            assert 3 <= moving.sum() <= 11
            assert np.max(-step[:, axis]) <= 16 and np.median(-step[moving, axis]) >= 8
            travel = world[0, axis] - world[-1, axis]
            assert 0.3 * size <= travel <= 0.5 * size
            for s in range(4):  # the whole move lies inside every recommended clip
                assert world[2 * s, axis] - world[2 * s + 42, axis] == pytest.approx(travel)
            assert np.all((pos - radius[:, None] > 0) & (pos + radius[:, None] < size - 1))
        elif process == "approach":
            assert np.all(np.diff(scene.target.radius) > 0)
            assert 2 <= scene.target.radius[-1] / scene.target.radius[0] <= 3.5
        elif process == "rotate_cw":
            assert np.all((angle >= 3) & (angle <= 6))
        elif process == "cover":
            panel, r = scene.panel, scene.target.radius[-1]
            target = world[-1, panel.axis]
            # at the end the panel lies over the whole target; at the start it misses it
            assert panel.sign * (panel.edge[-1] - target) > r
            assert panel.sign * (panel.edge[0] - target) < -r
        if process != "rotate_cw":
            assert np.all(np.abs(angle) <= 0.4)
        if process not in ("left_slow", "up_slow", "left_fast", "up_fast"):
            assert np.abs(step).max() < 0.6  # a slight drift at most
        # the camera: pan, zoom and shake move the view by at most ~1 px per frame
        assert np.abs(np.diff(scene.shift, axis=0)).max() < 1.0
        assert 0.9 < scene.zoom.min() and scene.zoom.max() < 1.11


def test_nuisance_motions_are_symmetric_in_time():
    """What a reversed video would change besides the target's motion has a distribution
    symmetric about zero: camera pan and zoom, brightness drift, distractor velocities, and
    when the fast move and the cover happen (mean within 4 standard errors of the middle)."""
    n, t = 240, 16
    change: dict[str, list[float]] = {k: [] for k in
                                      ("pan", "zoom", "gain", "distractor", "burst", "stop")}
    for i in range(n):
        process = FIRST[i % len(FIRST)]
        scene = sample_scene(np.random.default_rng([i, 4]), process, "disc", 32, t)
        change["pan"] += list(scene.shift[-1] - scene.shift[0])
        change["zoom"].append(np.log(scene.zoom[-1] / scene.zoom[0]))
        change["gain"].append(np.log(scene.gain[-1] / scene.gain[0]))
        for d in scene.behind + scene.in_front:
            change["distractor"] += list(d.centre[-1] - d.centre[0])
        if process == "left_fast":
            moving = np.flatnonzero(np.diff(scene.target.centre[:, 1]) < 0)
            change["burst"].append((moving.mean() + 0.5) - (t - 1) / 2)
        if process == "cover":
            stop = np.flatnonzero(np.diff(scene.panel.edge) == 0)[0]
            change["stop"].append(stop - (t - 1) / 2)
    for name, values in change.items():
        v = np.array(values)
        assert abs(v.mean()) < 4 * v.std() / np.sqrt(len(v)), (name, v.mean(), v.std())


def test_draw_object_position_and_clockwise_rotation():
    """A shape drawn at a centre covers what the naive full-frame formula says (antialiased
    coverage of every pixel), centred there; drawn at 90 degrees it is the 0-degree image
    turned clockwise on screen (np.rot90 with k=-1)."""
    white = Look(np.full((2, 4), 255, np.float32), "flat", 1.0, 0.0, 0.0, 0.0)
    striped = Look(np.array([[255, 0, 0, 0], [0, 0, 255, 0]], np.float32), "stripes", 1.5,
                   0.3, 0.7, 0.3)
    one = np.ones(1)

    def draw(kind, look, centre, angle, size=41):
        frames = np.zeros((1, size, size, 4), np.float32)
        draw_object(frames, kind, look, np.array([centre], float), 12 * one, angle * one)
        return frames[0]

    coverage = draw("disc", white, (17.3, 22.6), 0.0)[..., 0] / 255
    ys, xs = np.mgrid[0:41, 0:41]
    expect = np.clip(0.5 - (np.hypot(ys - 17.3, xs - 22.6) - 0.85 * 12), 0, 1)
    np.testing.assert_allclose(coverage, expect, atol=1e-4)
    assert abs((coverage * ys).sum() / coverage.sum() - 17.3) < 0.02
    assert abs((coverage * xs).sum() / coverage.sum() - 22.6) < 0.02
    np.testing.assert_allclose(coverage.sum(), np.pi * (0.85 * 12) ** 2, rtol=0.01)
    for kind in ("triangle", "star", "crescent"):
        upright = draw(kind, striped, (20, 20), 0.0)
        turned = draw(kind, striped, (20, 20), np.pi / 2)
        np.testing.assert_allclose(turned, np.rot90(upright, k=-1), atol=0.5)
        assert np.abs(turned - np.rot90(upright, k=1)).max() > 50  # not counter-clockwise


# --------------------------------------------------------------------------- prepare, CLI
def test_prepare_list_reads_the_set(motion_set, tmp_path, dh):
    out = tmp_path / "prep"
    r = dh.run_prepare(out, "list", motion_set / "annotations.csv", motion_set,
                       motion_set / "classes.txt", short_side=32, every=2)
    assert r.videos == 40 and r.failures == 0 and r.warnings == 0
    assert r.per_split == {"train": 20, "val": 4, "test": 16}
    index = dh.read_csv(out / "index.csv")
    assert (out / "classes.txt").read_text().split() == list(MOTION_CLASSES)
    by_id = {row["id"]: row for row in index}
    for row in _rows(motion_set):
        got = by_id[row["id"]]
        assert got["label"] == row["label"] and got["split"] == row["split"]
        assert int(got["label_index"]) == MOTION_CLASSES.index(row["label"])
        assert (int(got["num_frames"]), int(got["height"])) == (10, 32)
        assert float(got["fps"]) == pytest.approx(10.0)


def test_cli_kind_motion_and_options_of_the_other_kind(tmp_path):
    from vcorr.cli.main import cli

    def run(*args):
        return CliRunner().invoke(cli, [str(a) for a in args], prog_name="vcorr")

    out = tmp_path / "m"
    r = run("toy", out, "--kind", "motion", "--videos", "16", "--size", "48", "--fps", "16",
            "--seconds", "1", "--no-progress", "--seed", "3")
    assert r.exit_code == 0, r.output
    assert "16 videos" in r.stdout and len(list((out / "videos").glob("*.mp4"))) == 16
    assert json.loads((out / "motion.json").read_text())["options"]["size"] == 48
    for args, flags in [(("--kind", "motion", "--frames", "4"), "--frames"),
                        (("--kind", "motion", "--no-wrap"), "--wrap"),
                        (("--fps", "10", "--qp", "20"), "--fps, --qp")]:
        r = run("toy", tmp_path / "bad", *args)
        assert r.exit_code == 2, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and flags in lines[0]
        assert not (tmp_path / "bad").exists()
