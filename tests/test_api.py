"""The Python API of ``vcorr predict`` (issue 26): :class:`vcorr.Predictor` loads a checkpoint
once and predicts a video path, a uint8 (T, H, W, 3) array or a list of PIL images.

References: ``vcorr predict``'s own ``predictions.json`` on the same video files (the path
source must equal it, classes and probabilities); the same video's frames decoded here through
the decoding layer (at the training rate, or all of them with their fps) must equal the path;
PIL images must equal the array; and one clip x one crop on whole 32x32 frames equals the
model run by hand on the clip the test sampler places. The checkpoint is test_predict.py's toy
CPNet (trained on frames stored at 8 fps).
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_predict import run, toy_ckpt, toy_videos  # noqa: F401 - toy_ckpt: the fixture

from vcorr.pipelines.data.decode import VideoReader
from vcorr.pipelines.data.samplers import make_sampler
from vcorr.pipelines.data.toy import CLASSES, TOY_FPS
from vcorr.pipelines.data.video_io import write_video
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.predict.plan import sampled_frames


@pytest.fixture(scope="module")
def ckpt(request: pytest.FixtureRequest) -> Path:
    """test_predict.py's toy CPNet checkpoint (its fixture, trained once in this module)."""
    return request.getfixturevalue("toy_ckpt")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """test_predict's eight square videos (8 and 24 fps), and one 40x48 video at 24 fps,
    larger than the 32 px crop, so that the three crops see different pixels."""
    d = tmp_path_factory.mktemp("api_videos")
    toy_videos(d)
    frames = np.zeros((10, 40, 48, 3), np.uint8)
    for k in range(10):
        frames[k, 20:22, 4 + 3 * k:6 + 3 * k] = (255, 200, 100)
    write_video(d / "wide.mp4", frames, fps=24.0, lossless=True)
    return d


def predict_json(tmp_path: Path, ckpt: Path, videos: Path, *args: str) -> dict[str, list]:
    out = tmp_path / "out"
    r = run("predict", ckpt, videos, "--out", out, "--no-progress", "--workers", "1", *args)
    assert r.exit_code == 0, r.output + repr(r.exception)
    s = json.loads((out / "predictions.json").read_text())
    assert s["failed"] == 0
    return {v["path"]: [(t["class"], t["prob"]) for t in v["top"]] for v in s["videos"]}


def assert_same_top(a: list[tuple[str, float]], b: list[tuple[str, float]],
                    atol: float = 1e-5) -> None:
    assert [c for c, _ in a] == [c for c, _ in b], (a, b)
    assert np.allclose([p for _, p in a], [p for _, p in b], atol=atol, rtol=0), (a, b)


def test_a_video_path_gives_vcorr_predicts_top_k(tmp_path: Path, ckpt: Path,
                                                 videos: Path) -> None:
    from vcorr import Predictor

    cli = predict_json(tmp_path, ckpt, videos, "--clips", "2", "--crops", "3",
                       "--top-k", "3")
    assert len(cli) == 9
    p = Predictor(ckpt, clips=2, crops=3, device="cpu")
    assert p.classes == list(CLASSES) and p.sampling.fps == TOY_FPS and p.notes == []
    for path, top in cli.items():
        pred = p.predict(path, top_k=3)
        assert_same_top(pred.top, top)
        assert pred.scores.shape == (4,) and abs(float(pred.scores.sum()) - 1) < 1e-5
        assert pred.label == top[0][0] and pred.info["frames"] > 0
    # several at once (views shared between videos, decoded in workers): the same
    many = p.predict_many([Path(x) for x in cli], top_k=3, workers=1)
    for m, top in zip(many, cli.values()):
        assert_same_top(m.top, top)
    # the default top_k is vcorr predict's (5, capped at the 4 classes)
    assert len(p.predict(next(iter(cli))).top) == 4


def decode_at_training_rate(path: Path, p) -> np.ndarray:
    """The frames of ``path`` that prepare would store at the checkpoint's rate, decoded
    through the decoding layer. Shape: uint8 (S, H, W, 3)."""
    reader = VideoReader(path)
    numbers, _ = sampled_frames(reader.info, p.sampling)
    return reader.read(numbers)


@pytest.mark.parametrize("name", ["fast/fast_1.mp4", "slow_2.mp4", "wide.mp4"])
def test_frames_in_memory_equal_the_video_path(ckpt: Path, videos: Path,
                                               name: str) -> None:
    from vcorr import Predictor

    p = Predictor(ckpt, clips=3, crops=3, device="cpu")
    path = videos / name
    want = p.predict(path, top_k=4)
    stored = decode_at_training_rate(path, p)
    # already at the training rate (fps=None): every frame is a stored frame
    got = p.predict(stored, top_k=4)
    assert_same_top(got.top, want.top, atol=1e-6)
    assert np.allclose(got.scores, want.scores, atol=1e-6)
    assert got.info["stored_frames"] == len(stored)
    # all the video's frames with their rate: the training rate's frames are chosen alike
    reader = VideoReader(path)
    everything = reader.read(range(reader.info.num_frames))
    by_rate = p.predict(everything, top_k=4, fps=reader.info.fps)
    assert_same_top(by_rate.top, want.top, atol=1e-6)
    assert by_rate.info["stored_frames"] == len(stored)
    # PIL images and a tensor are the same frames
    images = [Image.fromarray(f) for f in stored]
    assert_same_top(p.predict(images, top_k=4).top, got.top, atol=1e-7)
    assert_same_top(p.predict(torch.from_numpy(stored), top_k=4).top, got.top, atol=1e-7)
    if name.startswith("fast"):
        # the rate matters: the 24 fps frames taken as stored frames are other clips
        assert len(everything) > len(stored)
        assert not np.allclose(p.predict(everything, top_k=4).scores, want.scores, atol=1e-3)


def test_one_clip_one_crop_is_the_model_on_the_placed_clip(ckpt: Path,
                                                          videos: Path) -> None:
    """A reference outside the prediction code: the test sampler's clip of the frames, run
    through the model by hand (32x32 frames, crop 32: the one crop is the whole frame; the
    config does not normalise)."""
    from vcorr import Predictor

    p = Predictor(ckpt, clips=1, crops=1, device="cpu")
    frames = decode_at_training_rate(videos / "fast" / "fast_3.mp4", p)
    spec = p.inference.spec
    (clip,) = make_sampler(spec.sampler, spec.frames, spec.interval, spec.short_video).test(
        len(frames), 1)
    x = torch.from_numpy(frames[list(clip)]).permute(3, 0, 1, 2)[None].float() / 255
    with torch.no_grad():
        want = p.inference.model(x).softmax(-1)[0].numpy()
    got = p.predict(frames)
    assert np.allclose(got.scores, want, atol=1e-6)
    assert got.label == "right" == CLASSES[int(want.argmax())]


def test_bad_input_is_one_clear_error(tmp_path: Path, ckpt: Path, videos: Path) -> None:
    from vcorr import Predictor

    p = Predictor(ckpt, clips=1, crops=1, device="cpu")
    ok = np.zeros((3, 32, 32, 3), np.uint8)
    cases = [
        (ok.astype(np.float32), ("expected a uint8 array (T, H, W, 3) of RGB frames, got "
                                 "float32 (3, 32, 32, 3)")),
        (ok[..., 0], "got uint8 (3, 32, 32)"),
        (np.zeros((3, 32, 32, 4), np.uint8), "got uint8 (3, 32, 32, 4)"),
        (ok[:0], "no frames to predict, shape (0, 32, 32, 3)"),
        ([], "an empty list, no frame to predict"),
        ([Image.new("RGB", (32, 32)), ok[0]], "the list holds a ndarray"),
        ([Image.new("RGB", (32, 32)), Image.new("RGB", (48, 32))],
         "image 0 is 32x32, image 1 is 48x32"),
        (42, ("expected a uint8 array (T, H, W, 3) of RGB frames, a list of PIL images or a "
              "video path, got int")),
        (np.zeros((3, 16, 16, 3), np.uint8), "frames: "),  # smaller than the 32 px crop
        (tmp_path / "missing.mp4", str(tmp_path / "missing.mp4")),
    ]
    for source, said in cases:
        with pytest.raises(UserError) as e:
            p.predict(source)
        assert said in str(e.value) and "\n" not in str(e.value), (source, str(e.value))
    for kw, said in (({"fps": 0.0}, "fps must be positive"), ({"top_k": 0}, "top_k")):
        with pytest.raises(UserError, match=said):
            p.predict(ok, **kw)
    with pytest.raises(UserError, match="fps is for frames"):
        p.predict(videos / "slow_0.mp4", fps=8.0)
    with pytest.raises(UserError, match="crops must be one of 1, 3, 6, 10"):
        Predictor(ckpt, crops=5)
    with pytest.raises(UserError, match="mirrored views"):  # the direction model: no flips
        Predictor(ckpt, crops=10)


def test_import_vcorr_stays_light() -> None:
    """``from vcorr import Predictor`` is imported on first use: ``import vcorr`` alone
    does not import torch."""
    code = ("import sys, vcorr; light = 'torch' not in sys.modules; "
            "from vcorr import Predictor, Prediction; "
            "print(light, Predictor.__module__, 'torch' in sys.modules)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=300, check=True)
    assert p.stdout.split() == ["True", "vcorr.pipelines.predict.api", "True"]
