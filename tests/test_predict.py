"""Using a trained model on raw videos (issue 15): ``vcorr predict`` (labels, windows by time on
a variable-frame-rate video, rendering, broken files), ``vcorr extract`` (features against the
model's stages run by hand, resuming after a real ``kill -9``), the inputs a command line may
name, and ``vcorr bench predict``.

The checkpoint is a toy CPNet trained here in memory on the moving-square toy (120 steps, a
few seconds; first-layer stride 2 keeps its k-NN cheap), which fits the toy. Its config points
at a data folder whose ``prepare.json`` says the frames were stored at 8 fps, so raw videos at
other rates are sampled at 8 fps.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vcorr.pipelines.data.decode import VideoInfo, VideoReader, probe
from vcorr.pipelines.data.samplers import DenseSampler
from vcorr.pipelines.data.toy import (
    CLASSES,
    TOY_FPS,
    ToyOptions,
    render_toy,
    toy_trajectories,
)
from vcorr.pipelines.data.video_io import write_video
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.predict import collect_inputs
from vcorr.pipelines.predict.extract import FeatureTap
from vcorr.pipelines.predict.plan import WHOLE, Sampling, plan_groups, sampled_frames
from vcorr.cli.main import cli

REPO = Path(__file__).resolve().parents[1]
TOY_CPNET = REPO / "examples" / "configs" / "toy_cpnet.toml"


def run(*args: str | Path):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="vcorr")


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --- a trained toy CPNet -----------------------------------------------------------------------

def _train_toy_cpnet(steps: int = 120):
    from vcorr.pipelines.train import load_config
    from vcorr.pipelines.train.trainer import build_model

    cfg = load_config(TOY_CPNET, ["model.args={stride=2}"])
    torch.manual_seed(0)
    model = build_model(cfg, len(CLASSES), 3)
    opt = ToyOptions(videos=480, seed=0)
    labels, pos = toy_trajectories(opt)
    x = torch.from_numpy(render_toy(opt, labels, pos).reshape(480, 3, 32, 32, 3))
    x = x.permute(0, 4, 1, 2, 3).float() / 255  # the config does not normalise
    y = torch.from_numpy(labels)
    optim = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optim, steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        i = torch.randint(0, len(x), (16,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x[i]), y[i])
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
    return cfg, model.eval()


@pytest.fixture(scope="module")
def toy_ckpt(tmp_path_factory) -> Path:
    from vcorr.pipelines.data.prepare import PrepareOptions
    from vcorr.pipelines.train.checkpoint import save_checkpoint

    d = tmp_path_factory.mktemp("predict_ckpt")
    data = d / "toy_h5"  # what `vcorr prepare --fps 8 --short-side 0` records of its options
    data.mkdir()
    opts = PrepareOptions(format="list", annotations=[], root="", out=str(data), fps=TOY_FPS,
                          short_side=0)
    (data / "prepare.json").write_text(json.dumps({"data_options": opts.data_options()}))
    cfg, model = _train_toy_cpnet()
    cfg["data"]["root"] = str(data)
    path = d / "toy_cpnet.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": cfg, "classes": list(CLASSES),
                           "model_name": "toy_cpnet"})
    return path


def square_video(path: Path, label: int, start: tuple[int, int], step: int, frames: int,
                 fps: float) -> Path:
    """A lossless toy video: the 2x2 square moves ``step`` px per frame in direction
    ``label`` (CLASSES order) from ``start`` (y, x)."""
    d = [(-1, 0), (1, 0), (0, -1), (0, 1)][label]
    out = np.zeros((frames, 32, 32, 3), np.uint8)
    for k in range(frames):
        y, x = start[0] + d[0] * step * k, start[1] + d[1] * step * k
        out[k, y:y + 2, x:x + 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, out, fps=fps, lossless=True)
    return path


def toy_videos(folder: Path) -> dict[str, str]:
    """Eight videos of known classes: four at the toy's 8 fps (8 px per frame), four at 24 fps
    (3 px per frame, 9 px per 1/8 s) in a subfolder; id -> class."""
    truth = {}
    starts = {0: (25, 10), 1: (3, 20), 2: (12, 25), 3: (20, 3)}
    for label in range(4):
        square_video(folder / f"slow_{label}.mp4", label, starts[label], 8, 3, 8.0)
        square_video(folder / "fast" / f"fast_{label}.mp4", label, starts[label], 3, 7, 24.0)
        truth[f"slow_{label}"] = truth[f"fast__fast_{label}"] = CLASSES[label]
    return truth


def test_predict_gives_the_right_labels_at_the_training_rate(tmp_path: Path,
                                                             toy_ckpt: Path) -> None:
    truth = toy_videos(tmp_path / "videos")
    out = tmp_path / "out"
    r = run("predict", toy_ckpt, tmp_path / "videos", "--clips", "1", "--crops", "1",
            "--workers", "1", "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output + repr(r.exception)
    rows = read_rows(out / "predictions.csv")
    assert {row["id"]: row["top1"] for row in rows} == truth
    assert all(len(row["top4"].split("|")) == 4 and not row["error"] for row in rows)
    s = json.loads((out / "predictions.json").read_text())
    assert s["sampling"]["fps"] == TOY_FPS and s["sampling"]["source"].endswith("prepare.json")
    assert s["predicted"] == 8 and s["failed"] == 0 and s["notes"] == []
    probs = [sum(t["prob"] for t in v["top"]) for v in s["videos"]]
    assert np.allclose(probs, 1.0, atol=1e-5)
    # Issue 25, item 6: the table's column after the top-1 lists the runners-up (the other
    # k-1), and is named for what it shows, not "top-4"
    header = next(line for line in r.stdout.splitlines() if "video" in line and "prob" in line)
    assert "runners-up" in header and "top-4" not in header, r.stdout
    # The output folder rule: a second run into it is refused, --overwrite moves it aside.
    r = run("predict", toy_ckpt, tmp_path / "videos" / "slow_0.mp4", "--out", out)
    assert r.exit_code == 2 and "--overwrite" in r.output


def test_a_missing_or_csv_input_is_refused_before_anything_is_written(
        tmp_path: Path, toy_ckpt: Path) -> None:
    """Issue 25, item 6: an INPUT that does not exist, or a .csv (not a list file), is one
    error line naming it, exit 2, and no output folder or feature file (a missing path that a
    list file names stays one failed row: test_broken_files_are_reported...)."""
    from test_cli import assert_user_error

    good = square_video(tmp_path / "good.mp4", 3, (20, 3), 8, 3, 8.0)
    missing = tmp_path / "missing.mp4"
    table = tmp_path / "a.csv"
    table.write_text("path,label\ngood.mp4,right\n")
    out = tmp_path / "out"
    for bad, why in ((missing, "no such file or folder"),
                     (table, "not a video; list files are .txt or .lst")):
        line = assert_user_error(run("predict", toy_ckpt, good, bad, "--out", out), bad, why)
        assert line.count(str(bad)) == 1, line
        assert not out.exists()
        assert_user_error(run("extract", toy_ckpt, bad, "--out", tmp_path / "f.h5"), bad, why)
        assert not (tmp_path / "f.h5").exists()


def test_progress_of_a_slow_window_run_says_seconds_per_video(
        tmp_path: Path, toy_ckpt: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 25, item 6: a --window run of a long video took 40 s a video and its progress
    line said "0.0 video/s"; below one per second it says the seconds per video."""
    import types

    from vcorr.pipelines import progress

    clock = iter(range(0, 10_000, 40))  # every reading of the clock 40 s after the last
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    video = square_video(tmp_path / "long.mp4", 3, (20, 3), 8, 3, 8.0)
    r = run("predict", toy_ckpt, video, "--window", "0.25", "--clips", "1", "--crops", "1",
            "--workers", "0", "--out", tmp_path / "out")
    assert r.exit_code == 0, r.output + repr(r.exception)
    lines = [line for line in r.stderr.splitlines() if line.startswith("predict: ")]
    assert lines == ["predict: 1/1 videos (40.0 s/video)"], r.stderr
    assert progress.rate_text(3, 1.5, "video") == "2.0 video/s"


def test_predict_refuses_mirrored_views_of_a_direction_model(tmp_path: Path,
                                                             toy_ckpt: Path) -> None:
    """Issue 23, item 1: the toy model (directions, trained with flip off, no swap map) would
    have its mirrored views vote for the opposite direction: ``--crops 10`` is refused."""
    video = square_video(tmp_path / "left.mp4", 2, (12, 25), 8, 3, 8.0)
    out = tmp_path / "out"
    r = run("predict", toy_ckpt, video, "--crops", "10", "--out", out)
    assert r.exit_code == 2 and "mirrored views" in r.output and not out.exists(), r.output
    # with the user's map of the mirrored classes the views are used
    (tmp_path / "mirror.csv").write_text("left,right\n")
    r = run("predict", toy_ckpt, video, "--crops", "10", "--out", out, "--swap-map",
            tmp_path / "mirror.csv")
    assert r.exit_code == 0 and (out / "predictions.json").is_file(), r.output


def test_predict_and_extract_take_test_time_model_args(tmp_path: Path, toy_ckpt: Path) -> None:
    """``--model-arg`` on predict and extract as on eval: one that changes the trained
    weights (the width) is refused in one line before anything is written."""
    video = square_video(tmp_path / "left.mp4", 2, (12, 25), 8, 3, 8.0)
    r = run("predict", toy_ckpt, video, "--out", tmp_path / "p", "--model-arg", "width=64")
    assert r.exit_code == 2 and "changes the model's weights" in r.output, r.output
    assert not (tmp_path / "p").exists()
    r = run("extract", toy_ckpt, video, "--out", tmp_path / "f.h5", "--model-arg", "width=64")
    assert r.exit_code == 2 and "changes the model's weights" in r.output, r.output
    assert not (tmp_path / "f.h5").exists()
    r = run("extract", toy_ckpt, video, "--out", tmp_path / "f.h5", "--clips", "1", "--crops",
            "1", "--model-arg", "k=1")
    assert r.exit_code == 0, r.output


def _write_vfr(path: Path, frames: list[np.ndarray], times: list[float]) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264rgb", rate=30)
        s.width, s.height, s.pix_fmt = 32, 32, "rgb24"
        s.time_base = s.codec_context.time_base = Fraction(1, 3000)
        s.options = {"qp": "0"}
        for t, img in zip(times, frames):
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts, f.time_base = round(t * 3000), Fraction(1, 3000)
            c.mux(s.encode(f))
        c.mux(s.encode())


def test_windows_are_placed_by_time_on_a_variable_rate_video(tmp_path: Path,
                                                             toy_ckpt: Path) -> None:
    """Four toy clips one after another, 3 frames at 8 fps each (a window of 3/8 s holds one);
    the first two also hold two extra frames per frame (repeats at uneven times, 24 frames in
    all). Windows by time hold one toy clip each and get its label; windows by frame index
    (8 frames or 0.375 s at the average rate) would mix clips. The render keeps every frame at
    its time."""
    opt = ToyOptions(videos=4, seed=21)
    labels, pos = toy_trajectories(opt)
    keys = render_toy(opt, labels, pos)
    frames, times = [], []
    for k, img in enumerate(keys):
        for extra in ((0, 1, 3) if k < 6 else (0,)):
            frames.append(img)
            times.append(k / 8 + extra / 64)
    path = tmp_path / "vfr.mp4"
    _write_vfr(path, frames, times)
    assert probe(path).variable_rate
    out = tmp_path / "out"
    r = run("predict", toy_ckpt, path, "--window", "0.375", "--clips", "1", "--crops", "1",
            "--render", "--workers", "0", "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output + repr(r.exception)
    tl = read_rows(out / "vfr.timeline.csv")
    assert [float(w["start"]) for w in tl] == [0.0, 0.375, 0.75, 1.125]
    assert [w["class1"] for w in tl] == [CLASSES[c] for c in labels]
    assert (out / "vfr.timeline.png").read_bytes()[:4] == b"\x89PNG"
    info = probe(out / "vfr.render.mp4")
    assert info.num_frames == len(times) and info.variable_rate
    np.testing.assert_allclose(info.times, times, atol=2e-4)  # source ticks are 1/3000 s
    got = VideoReader(out / "vfr.render.mp4").read([0, len(times) - 1])
    assert got.shape == (2, 32, 32, 3)
    row = json.loads((out / "predictions.json").read_text())["videos"][0]
    assert row["windows"] == 4 and row["rendered_frames"] == len(times)


def test_broken_files_are_reported_and_the_others_predicted(tmp_path: Path,
                                                            toy_ckpt: Path) -> None:
    good = square_video(tmp_path / "good.mp4", 3, (20, 3), 8, 3, 8.0)
    (tmp_path / "text.mp4").write_text("not a video\n")
    (tmp_path / "empty.mp4").write_bytes(b"")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(good.read_bytes()[:200])
    from PIL import Image

    (tmp_path / "frames").mkdir()  # a frame folder, as Jester ships its videos
    for k in range(3):
        img = np.zeros((32, 32, 3), np.uint8)
        img[20:22, 3 + 8 * k:5 + 8 * k] = 255
        Image.fromarray(img).save(tmp_path / "frames" / f"{k + 1:05d}.png")
    listing = tmp_path / "list.txt"
    listing.write_text("# good and broken files\ngood.mp4\ntext.mp4\n\nempty.mp4\n"
                       "missing.mp4\ncut.mp4\nframes\n")
    out = tmp_path / "out"
    r = run("predict", toy_ckpt, listing, "--clips", "1", "--crops", "1", "--workers", "0",
            "--out", out, "--no-progress")
    assert r.exit_code == 0, r.output + repr(r.exception)
    rows = {row["id"]: row for row in read_rows(out / "predictions.csv")}
    assert list(rows) == ["good", "text", "empty", "missing", "cut", "frames"]
    assert rows["good"]["top1"] == "right" and not rows["good"]["error"]
    assert rows["frames"]["top1"] and not rows["frames"]["error"]
    assert rows["text"]["error"].startswith("not a media file")
    assert rows["empty"]["error"].startswith("empty file")
    assert rows["missing"]["error"].startswith("missing file")
    assert rows["cut"]["error"] and not rows["cut"]["top1"]
    for name in ("text.mp4", "empty.mp4", "missing.mp4", "cut.mp4"):
        assert sum(name in line for line in r.stderr.splitlines()) == 1, r.stderr
    # nothing readable: exit code 2, one error line, the reasons still written
    r = run("predict", toy_ckpt, tmp_path / "text.mp4", tmp_path / "empty.mp4", "--workers",
            "0", "--out", tmp_path / "none", "--no-progress")
    assert r.exit_code == 2 and "error: no video could be read" in r.stderr
    assert len(read_rows(tmp_path / "none" / "predictions.csv")) == 2


def test_a_stream_that_ends_early_is_predicted_from_the_frames_it_holds(
        tmp_path: Path, toy_ckpt: Path) -> None:
    """A truncated file whose header (moov first) announces all its frames: the clips planned
    over the announced frames reach past the end, so the video is planned again over the
    frames that decode. Reference: the same prediction on a clean file of just those frames."""
    import imageio_ffmpeg

    rng = np.random.default_rng(0)
    frames = rng.integers(0, 60, (96, 32, 32, 3), dtype=np.uint8)  # noise: big frames
    for k in range(96):  # the square moves right 8 px per frame, wrapping
        x = (3 + 8 * k) % 30
        frames[k, 20:22, x:x + 2] = 255
    plain = tmp_path / "plain.mp4"
    write_video(plain, frames, fps=8.0, lossless=True)
    full = tmp_path / "full.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(plain), "-c",
                    "copy", "-movflags", "+faststart", str(full)], check=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(full.read_bytes()[:int(full.stat().st_size * 0.6)])
    info = probe(cut)  # the header announces every frame; the container holds a partial last one
    assert info.header_frames == 96 and info.num_frames < 96
    held = []
    reader = VideoReader(cut)
    reader.decode(lambda chunk: held.extend(chunk.numbers))
    assert 20 < len(held) < info.num_frames and held == list(range(len(held)))
    prefix = tmp_path / "prefix.mp4"
    write_video(prefix, frames[:len(held)], fps=8.0, lossless=True)
    out = {}
    for name, path in (("cut", cut), ("prefix", prefix)):
        out[name] = tmp_path / f"out_{name}"
        r = run("predict", toy_ckpt, path, "--clips", "4", "--crops", "1", "--window", "2",
                "--workers", "1", "--out", out[name], "--no-progress")
        assert r.exit_code == 0, r.output + repr(r.exception)
    got = json.loads((out["cut"] / "predictions.json").read_text())["videos"][0]
    ref = json.loads((out["prefix"] / "predictions.json").read_text())["videos"][0]
    assert not got.get("error") and got["top"] and "decoded" in got["warning"]
    assert [t["class"] for t in got["top"]] == [t["class"] for t in ref["top"]]
    np.testing.assert_allclose([t["prob"] for t in got["top"]],
                               [t["prob"] for t in ref["top"]], atol=1e-5)
    got_rows = read_rows(out["cut"] / "cut.timeline.csv")
    ref_rows = read_rows(out["prefix"] / "prefix.timeline.csv")
    assert len(got_rows) == len(ref_rows) >= 2


# --- extract -----------------------------------------------------------------------------------

def reference_features(model, path: Path, clips: int, stages: list[str], frames: int = 3,
                       per_clip: bool = False, keep_spatial: bool = False) -> np.ndarray:
    """The clips of a constant-rate video stored at its own rate, run through the stem and
    ``stages`` by hand, averaged over (T, H, W) and clips: no crop (the frames are the crop)."""
    reader = VideoReader(path)
    idx = DenseSampler(frames, 1).test(reader.info.num_frames, clips)
    x = torch.stack([torch.from_numpy(reader.read(c)).permute(3, 0, 1, 2) for c in idx])
    x = x.float() / 255
    with torch.no_grad():
        y = model.stem(x)
        for name in stages:
            y = getattr(model, name)(y)
    if not keep_spatial:
        y = y.mean(dim=(2, 3, 4))
    return (y if per_clip else y.mean(0)).numpy()


def test_extract_equals_the_stages_run_by_hand_and_resumes_after_kill(
        tmp_path: Path, toy_ckpt: Path) -> None:
    import h5py

    from vcorr.pipelines.train.trainer import model_from_checkpoint

    videos = tmp_path / "videos"
    for label in range(4):
        square_video(videos / f"v{label}.mp4", label, [(25, 10), (3, 20), (12, 25), (20, 3)][label],
                     4, 5, 8.0)
    out = tmp_path / "feats.h5"
    args = [sys.executable, "-m", "vcorr.cli", "extract", str(toy_ckpt), str(videos),
            "--out", str(out), "--clips", "2", "--crops", "1", "--workers", "0", "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO),
               VCORR_FAULT="extract@2:SIGKILL")
    proc = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    with h5py.File(out, "r") as f:  # one vector complete; the second, written but not linked,
        assert sorted(f) == ["v0"]     # has no name a reader could take for a video id
    r = run("extract", toy_ckpt, videos, "--out", out, "--clips", "2", "--crops", "1",
            "--workers", "0", "--no-progress")
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "3 written, 1 already there, 0 failed; 4 videos" in r.stdout
    model = model_from_checkpoint(toy_ckpt)[0].eval()
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["v0", "v1", "v2", "v3"]
        for label in range(4):
            ds = f[f"v{label}"]
            assert ds.dtype == np.float32 and ds.shape == (16,)
            assert ds.attrs["layer"] == "pool" and ds.attrs["views"] == 2
            assert list(ds.attrs["shape"]) == [16]
            want = reference_features(model, videos / f"v{label}.mp4", 2, ["conv2"])
            np.testing.assert_allclose(ds[()], want, rtol=1e-5, atol=1e-6)
    # the same id from another file is refused, as are other settings into the same file
    other = square_video(tmp_path / "other" / "v0.mp4", 0, (25, 10), 4, 5, 8.0)
    r = run("extract", toy_ckpt, other, "--out", out, "--clips", "2", "--crops", "1")
    assert r.exit_code == 2 and "holds 'v0' from" in r.output
    r = run("extract", toy_ckpt, videos, "--out", out, "--clips", "3", "--workers", "0")
    assert r.exit_code == 2 and "other settings" in r.output and "clips 2 -> 3" in r.output
    assert "--overwrite" in r.output
    # Issue 25, item 6: --overwrite starts the file anew with the new settings; the old one
    # is moved aside whole, never deleted
    before = out.read_bytes()
    r = run("extract", toy_ckpt, videos, "--out", out, "--clips", "3", "--crops", "1",
            "--workers", "0", "--no-progress", "--overwrite")
    assert r.exit_code == 0, r.output + repr(r.exception)
    aside = tmp_path / "feats.old-1.h5"
    assert f"moved the earlier features aside to {aside}" in r.stdout
    assert "4 written, 0 already there" in r.stdout
    assert aside.read_bytes() == before
    with h5py.File(out, "r") as f:
        assert sorted(f) == ["v0", "v1", "v2", "v3"] and f["v0"].attrs["clips"] == 3


def test_extract_help_names_only_its_own_options() -> None:
    """Issue 25, item 6: extract has no --window (its --clips help said "and per --window");
    it has --overwrite."""
    r = run("extract", "--help")
    assert r.exit_code == 0
    assert "--window" not in r.stdout and "--overwrite" in r.stdout
    assert "--window" in run("predict", "--help").stdout


def test_extract_a_resnet_stage_per_clip_with_its_map(tmp_path: Path) -> None:
    """c2d_r18 (random weights): --layer res3 --per-clip --keep-spatial stores, per clip, the
    res3 map that stem -> res2 -> res3 gives; res4 and res5 never run."""
    import h5py

    from vcorr import models
    from vcorr.pipelines.train import load_config
    from vcorr.pipelines.train.checkpoint import save_checkpoint

    cfg = load_config(None, ["model.name=\"c2d_r18\"", "data.crop=32", "data.test_short_side=32",
                             "data.frames=4", "data.normalize=false", "data.root=\"\""])
    torch.manual_seed(1)
    net = models.create_model("c2d_r18", num_classes=3).eval()
    ckpt = tmp_path / "c2d.pt"
    save_checkpoint(ckpt, {"model": net.state_dict(), "config": cfg,
                           "classes": ["a", "b", "c"], "model_name": "c2d_r18"})
    video = square_video(tmp_path / "v.mp4", 1, (3, 20), 2, 10, 10.0)
    out = tmp_path / "f.h5"
    r = run("extract", ckpt, video, "--out", out, "--layer", "res3", "--per-clip",
            "--keep-spatial", "--clips", "2", "--crops", "1", "--workers", "0", "--every", "1")
    assert r.exit_code == 0, r.output + repr(r.exception)
    want = reference_features(net, video, 2, ["res2", "res3"], frames=4, per_clip=True,
                              keep_spatial=True)
    with h5py.File(out, "r") as f:
        got = f["v"][()]
        assert f.attrs["layer"] == "res3" and f["v"].attrs["clips"] == 2
    assert got.shape == want.shape == (2, 128, 4, 4, 4)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    r = run("extract", ckpt, video, "--out", tmp_path / "g.h5", "--layer", "res9")
    assert r.exit_code == 2 and "res2, res3, res4, res5" in r.output
    ran = []
    net.res4.register_forward_hook(lambda *a: ran.append("res4"))
    tap = FeatureTap(net, "res3")
    assert tap(torch.rand(1, 3, 4, 32, 32)).shape == (1, 128) and ran == []
    assert FeatureTap(net, "pool")(torch.rand(1, 3, 4, 32, 32)).shape == (1, 512)
    assert ran == ["res4"]


def test_extract_from_prepared_data_equals_its_test_clips(tmp_path: Path, toy_ckpt: Path,
                                                          toy_train_prepared: Path) -> None:
    import h5py

    from vcorr.pipelines.data.dataset import VideoClipDataset
    from vcorr.pipelines.train.trainer import model_from_checkpoint

    out = tmp_path / "val.h5"
    r = run("extract", toy_ckpt, "--data", toy_train_prepared, "--split", "val", "--out", out,
            "--clips", "2", "--crops", "1", "--workers", "0", "--no-progress")
    assert r.exit_code == 0, r.output + repr(r.exception)
    ds = VideoClipDataset(toy_train_prepared, "val", DenseSampler(3, 1), train=False,
                          num_clips=2)
    model = model_from_checkpoint(toy_ckpt)[0].eval()
    with h5py.File(out, "r") as f:
        assert sorted(f) == sorted(v["id"] for v in ds.videos)
        for i in (0, len(ds) - 1):
            clips, _ = ds[i]
            with torch.no_grad():
                want = model.conv2(model.stem(clips.float() / 255)).mean(dim=(2, 3, 4)).mean(0)
            np.testing.assert_allclose(f[ds.videos[i]["id"]][()], want.numpy(), rtol=1e-5,
                                       atol=1e-6)
    r = run("extract", toy_ckpt, "--data", toy_train_prepared, "--split", "val", "--out", out,
            "--clips", "2", "--crops", "1", "--workers", "0", "--no-progress")
    assert r.exit_code == 0 and f"0 written, {len(ds)} already there" in r.stdout


# --- planning and inputs -----------------------------------------------------------------------

def _info(times: list[float], duration: float, nominal: float | None) -> VideoInfo:
    return VideoInfo("x", np.asarray(times, float), duration, 32, 32,
                     variable_rate=nominal is None, nominal_rate=nominal)


def test_clips_are_placed_by_time_at_the_training_rate() -> None:
    # 24 fps for 2 s, model data at 8 fps: every third frame, as prepare --fps 8 stores them
    info = _info([k / 24 for k in range(48)], 2.0, 24.0)
    numbers, times = sampled_frames(info, Sampling(fps=8.0))
    assert numbers.tolist() == list(range(0, 48, 3))
    np.testing.assert_allclose(times, np.arange(16) / 8)
    groups = plan_groups(numbers, times, 2.0, sampler="dense", frames=4, interval=1, clips=1,
                         window=0.5)
    assert groups[0].key == WHOLE and groups[0].clips == [[18, 21, 24, 27]]  # centred clip
    assert [(g.start, g.end) for g in groups[1:]] == [(0, 0.5), (0.5, 1), (1, 1.5), (1.5, 2)]
    assert [g.clips for g in groups[1:]] == [[[0, 3, 6, 9]], [[12, 15, 18, 21]],
                                             [[24, 27, 30, 33]], [[36, 39, 42, 45]]]
    # variable rate: frames at 0, 0.3, 0.6 s, then 1 s at 24 fps; at 8 fps a frame stands
    # for each time k/8 it is nearest to (no ties here), windows of 1 s hold 8 samples each
    info = _info([0, 0.3, 0.6] + [1 + k / 24 for k in range(24)], 2.0, None)
    numbers, times = sampled_frames(info, Sampling(fps=8.0))
    assert numbers.tolist() == [0, 0, 1, 1, 2, 2, 2, 3] + [3 + 3 * j for j in range(8)]
    np.testing.assert_allclose(times, np.arange(16) / 8)
    groups = plan_groups(numbers, times, 2.0, sampler="dense", frames=8, interval=1, clips=1,
                         window=1.0)
    assert groups[1].clips == [[0, 0, 1, 1, 2, 2, 2, 3]]
    assert groups[2].clips == [[3 + 3 * j for j in range(8)]]
    # stride shorter than the window: overlapping windows; the last starts inside the video
    groups = plan_groups(numbers, times, 2.0, sampler="dense", frames=2, interval=1, clips=1,
                         window=1.0, stride=0.75)
    assert [(g.start, g.end) for g in groups[1:]] == [(0, 1), (0.75, 1.75), (1.5, 2.0)]


def test_inputs_from_folders_and_list_files(tmp_path: Path) -> None:
    v = tmp_path / "v"
    for rel in ("a.mp4", "sub/b.MKV", "sub/deeper/a.mp4", "notes.md"):
        (v / rel).parent.mkdir(parents=True, exist_ok=True)
        (v / rel).write_bytes(b"x")
    (v / "frames" / "clip1").mkdir(parents=True)
    (v / "frames" / "clip1" / "00001.jpg").write_bytes(b"x")
    got = collect_inputs([v])
    assert [x.id for x in got] == ["a", "frames__clip1", "sub__b", "sub__deeper__a"]
    assert got[1].path == str(v / "frames" / "clip1")
    lst = tmp_path / "list.txt"
    lst.write_text(f"# comment\nv/a.mp4\n\n{v / 'sub' / 'deeper' / 'a.mp4'}\nv/a.mp4\nnone.mp4\n"
                   "v/frames/clip1\n")
    got = collect_inputs([lst])
    assert [x.id for x in got] == ["a", "a~2", "none", "clip1"]  # listed twice: kept once
    assert got[2].path == str(tmp_path / "none.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no video files"):
        collect_inputs([tmp_path / "empty"])
    (tmp_path / "blank.txt").write_text("# nothing\n")
    with pytest.raises(UserError, match="lists no paths"):
        collect_inputs([tmp_path / "blank.txt"])


def test_bench_predict_runs(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    r = run("bench", "predict", tmp_path / "videos", "--videos", "2", "--seconds", "1",
            "--size", "64x48", "--crop", "32", "--short-side", "40", "--workers", "0",
            "--json", out)
    assert r.exit_code == 0, r.output + repr(r.exception)
    b = json.loads(out.read_text())
    assert b["videos"] == 2 and b["failed"] == 0 and b["videos_per_s"] > 0
    assert 0 <= b["outside_model_share"] <= 1 and isinstance(b["target_met"], bool)
    assert b["model_s"] + b["outside_model_s"] == pytest.approx(b["wall_s"])


def test_a_checkpoint_works_from_any_folder(tmp_path: Path, monkeypatch, toy_dataset) -> None:
    """Issue 25, item 2: a run trained on a relative ``data/toy`` stores the folder absolute
    and what inference needs of it (the stored rate); predict from another folder, even with
    the data moved away, samples at the training rate (not every frame) and eval from another
    folder finds the data without --data."""
    import shutil

    from conftest import run_prepare
    from vcorr.pipelines.train import load_config, train

    d = toy_dataset
    monkeypatch.chdir(tmp_path)
    run_prepare(Path("data/toy"), "list", d["annotations"], d["root"], d["labels"],
                short_side=0, fps=4)
    cfg = load_config(REPO / "examples" / "configs" / "toy_c2d.toml",
                      ['data.root="data/toy"', "data.workers=0", "optim.batch_size=4",
                       "optim.epochs=1", "train.max_steps_per_epoch=1", "train.val_every=0",
                       "model.args={width=8}"])
    train(cfg, Path("runs/r"), progress=False, device="cpu")
    ckpt_path = tmp_path / "runs" / "r" / "last.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["config"]["data"]["root"] == str((tmp_path / "data" / "toy").resolve())
    assert ckpt["data_meta"]["given"] == "data/toy"
    assert ckpt["data_meta"]["data_options"]["fps"] == 4
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    r = run("eval", ckpt_path, "--clips", "1", "--crops", "1", "--workers", "0", "--device",
            "cpu", "--out", "ev", "--no-progress")
    assert r.exit_code == 0, r.output
    shutil.move(tmp_path / "data", tmp_path / "moved")
    video = square_video(tmp_path / "left.mp4", 2, (12, 25), 8, 3, 8.0)
    r = run("predict", ckpt_path, video, "--clips", "1", "--crops", "1", "--out", "p")
    assert r.exit_code == 0, r.output
    s = json.loads((elsewhere / "p" / "predictions.json").read_text())
    assert s["sampling"]["fps"] == 4 and not s["sampling"]["assumed"], s["sampling"]
    assert s["sampling"]["source"].startswith("the checkpoint") and s["notes"] == []
