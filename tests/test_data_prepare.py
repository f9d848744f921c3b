"""``prepare``: round trips (frames kept, pixels, metadata), bad inputs, resume and parts."""
from __future__ import annotations

import json
import re
import shutil
from fractions import Fraction
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

import vcorr.pipelines.data.prepare as prep_mod
from vcorr.pipelines.data.prepare import PrepareOptions, _resize_shape, plan_shards
from vcorr.pipelines.data.annotations import parse_annotations
from vcorr.pipelines.data.shards import read_shard_tables
from vcorr.pipelines.data.toy import render_toy, toy_trajectories
from vcorr.pipelines.data.decode import VideoInfo, stored_fps
from vcorr.pipelines.errors import UserError


def expected_every(n: int, every: int) -> list[int]:
    return list(range(0, n, every))


def expected_fps(n: int, src: int, fps: int) -> list[int]:
    """Frames nearest to times k/fps inside the video (exact arithmetic, no ties in tests)."""
    keep, k = [], 0
    while Fraction(k, fps) < Fraction(n, src):
        t = Fraction(k, fps) * src  # time in source frames
        i = min(int(t + Fraction(1, 2)), n - 1)  # the nearest frame there is
        assert t - int(t) != Fraction(1, 2), "pick test rates without ties"
        if i not in keep:
            keep.append(i)
        k += 1
    return keep


def nearest_source(stored: np.ndarray, source: np.ndarray) -> list[int]:
    """For each stored frame, the index of the most similar source frame."""
    d = ((stored[:, None].astype(np.float32) - source[None].astype(np.float32)) ** 2)
    return d.reshape(len(stored), len(source), -1).mean(-1).argmin(1).tolist()


def _one_video_list(tmp_path, dataset, vid):
    v = dataset["videos"][vid]
    rel = v["path"].relative_to(dataset["root"])
    ann = tmp_path / f"{vid}.csv"
    ann.write_text(f"path,label,split,id\n{rel},{v['label']},{v['split']},{vid}\n")
    return ann


# --------------------------------------------------------------------------- selection
def select_frames(n: int, src: float, every: int = 1, fps: float | None = None) -> list[int]:
    """Frames kept from a constant-rate video of ``n`` frames at ``src`` frames/s, whose
    timestamps are exact ticks of a 90 kHz clock (as MPEG-TS and many MP4s store them)."""
    times = np.round(np.arange(n) / src * 90000) / 90000
    info = VideoInfo("v.mp4", times, n / src, 48, 64, nominal_rate=src)
    return info.select(every, fps)


def rint_reference(n: int, src: float, fps: float) -> list[int]:
    """What vcorr kept before selection went by presentation time: numpy's rint of each time
    k/fps (float64, ``np.arange``) in source frames, duplicates dropped, and nothing for a
    time whose rounded frame lies past the end."""
    if fps >= src:
        return list(range(n))
    idx = np.rint(np.arange(0.0, n / src, 1.0 / fps) * src).astype(np.int64)
    return sorted(set(int(i) for i in idx if i < n))


@pytest.mark.parametrize("n,src,fps", [(18, 30, 9), (20, 25, 7), (24, 24, 8), (100, 30, 7),
                                       (10, 12, 5)])
def test_select_frames_fps_matches_nearest_times(n, src, fps):
    assert select_frames(n, float(src), fps=float(fps)) == expected_fps(n, src, fps)


@pytest.mark.parametrize("n,every", [(24, 5), (24, 1), (7, 12), (12, 12), (13, 12)])
def test_select_frames_every(n, every):
    assert select_frames(n, 24.0, every=every) == expected_every(n, every)


def test_select_frames_fps_at_or_above_source_keeps_all():
    assert select_frames(10, 12.0, fps=12.0) == list(range(10))
    assert select_frames(10, 12.0, fps=30.0) == list(range(10))
    assert stored_fps(12.0, fps=30.0) == 12.0 and stored_fps(30.0, fps=9.0) == 9.0
    assert stored_fps(24.0, every=12) == 2.0


@pytest.mark.parametrize("src", [12, 15, 24000 / 1001, 24, 25, 30000 / 1001, 30, 50, 60])
@pytest.mark.parametrize("fps", [1, 2, 4, 5, 6, 8, 10, 12, 15, 16, 24])
def test_constant_rate_keeps_the_frames_it_always_kept(src, fps):
    """Time-based selection on a constant-rate video equals the old index arithmetic,
    ties included (2.5 source frames per kept frame is common: 25 -> 10, 30 -> 12), except
    that a time near the end whose rounded frame was past the end now gets the last frame."""
    n = 301
    new, old = select_frames(n, src, fps=fps), rint_reference(n, src, fps)
    assert new[:len(old)] == old
    assert new[len(old):] in ([], [n - 1])
    if new[len(old):]:  # the added last frame is the nearest to a time inside the video
        t = (len(new) - 1) / fps
        assert (n - 1) / src <= t < n / src  # shown while the last frame is


def test_variable_rate_selection_takes_the_nearest_presentation_times():
    """The issue's example: 10 frames at 10 fps, then 30 at 30 fps; --fps 5 keeps the frames
    nearest to 0, 0.2, ..., 1.8 s (not every 4th frame, as an average rate of 20 would)."""
    times = np.array([i / 10 for i in range(10)] + [1 + i / 30 for i in range(30)])
    info = VideoInfo("vfr.mp4", times, 2.0, 48, 64, variable_rate=True)
    assert info.fps == 20
    assert info.select(fps=5) == [0, 2, 4, 6, 8, 10, 16, 22, 28, 34]
    assert info.select(every=4) == list(range(0, 40, 4))  # --every stays index-based
    # one frame for every time k/F, so the stored frames are 1/F apart: above the local rate
    # a frame is kept once for each time it is nearest to (2-3 times in the 10 fps part)
    def nearest(t: float) -> int:  # naive: every frame's distance; a tie takes the even one
        d = np.abs(times - t)
        best = np.flatnonzero(d <= d.min() + 1e-9)
        return int(best[0] if len(best) == 1 else best[best % 2 == 0][0])

    for fps in (5, 7, 12, 30, 45):
        naive = [nearest(k / fps) for k in range(int(np.ceil(2.0 * fps - 1e-9)))]
        assert info.select(fps=fps) == naive, fps
    assert info.select(fps=30)[:6] == [0, 0, 1, 1, 1, 2]


@pytest.mark.parametrize("h,w,s,out", [(48, 64, 32, (32, 43)), (64, 48, 32, (43, 32)),
                                       (240, 320, 128, (128, 171)), (48, 64, 0, (48, 64))])
def test_resize_shape_keeps_aspect(h, w, s, out):
    assert _resize_shape(h, w, s) == out


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("vid,opts,expect_idx,expect_fps", [
    ("vid_a0", {"every": 5}, expected_every(24, 5), 24 / 5),      # 24 frames at 24 fps
    ("vid_a0", {"every": 12}, [0, 12], 2.0),
    ("vid_c0", {"fps": 9.0}, expected_fps(18, 30, 9), 9.0),       # 18 frames at 30 fps
    ("vid_b0", {"fps": 7.0}, expected_fps(20, 25, 7), 7.0),       # 20 frames at 25 fps
    ("vid_a1", {"fps": 24.0}, list(range(16)), 12.0),             # above the source rate
    ("vid_a1", {}, list(range(16)), 12.0),
])
def test_round_trip_frames_and_pixels(tmp_path, list_dataset, dh, vid, opts, expect_idx,
                                      expect_fps):
    """Exactly the expected frames are kept, pixels survive JPEG q90 above 35 dB, and the
    stored and source frame rates are recorded."""
    out = tmp_path / "out"
    r = dh.run_prepare(out, "list", _one_video_list(tmp_path, list_dataset, vid),
                       list_dataset["root"], list_dataset["labels"], short_side=0,
                       quality=90, **opts)
    assert r.videos == 1 and r.failures == 0
    row = dh.read_csv(out / "index.csv")[0]
    src, src_fps = dh.decode_source(list_dataset["videos"][vid]["path"])
    assert src_fps == pytest.approx(list_dataset["videos"][vid]["fps"])
    assert int(row["num_frames"]) == len(expect_idx)
    assert float(row["fps"]) == pytest.approx(expect_fps)
    assert float(row["source_fps"]) == pytest.approx(src_fps)
    assert (int(row["height"]), int(row["width"])) == (48, 64)
    stored = dh.stored_frames(out, row)
    assert stored.shape == (len(expect_idx), 48, 64, 3)
    assert nearest_source(stored, src) == expect_idx  # the right frames, in order
    for k, i in enumerate(expect_idx):
        assert dh.psnr(stored[k], src[i]) > 35, (k, i, dh.psnr(stored[k], src[i]))


@pytest.mark.parametrize("short_side,shape", [(32, (32, 43)), (24, (24, 32))])
def test_round_trip_resized(tmp_path, list_dataset, dh, short_side, shape):
    out = tmp_path / "out"
    dh.run_prepare(out, "list", _one_video_list(tmp_path, list_dataset, "vid_b0"),
                   list_dataset["root"], short_side=short_side, every=2)
    row = dh.read_csv(out / "index.csv")[0]
    assert (int(row["height"]), int(row["width"])) == shape
    src, _ = dh.decode_source(list_dataset["videos"]["vid_b0"]["path"])
    ref = TF.resize(torch.from_numpy(src[::2]).permute(0, 3, 1, 2), list(shape),
                    antialias=True).permute(0, 2, 3, 1).numpy()
    stored = dh.stored_frames(out, row)
    assert stored.shape == (10, *shape, 3)
    for a, b in zip(stored, ref):
        assert dh.psnr(a, b) > 35


def test_round_trip_portrait_video(tmp_path, dh):
    """A portrait video: the width is the short side."""
    from vcorr.pipelines.data.video_io import write_video

    frames = dh.synth_frames(6, h=80, w=56, seed=9)
    (tmp_path / "v").mkdir()
    write_video(tmp_path / "v" / "p.mp4", frames, fps=6.0)
    ann = tmp_path / "a.csv"
    ann.write_text("path,label\nv/p.mp4,x\n")
    out = tmp_path / "out"
    dh.run_prepare(out, "list", ann, tmp_path, short_side=24)
    row = dh.read_csv(out / "index.csv")[0]
    assert (int(row["height"]), int(row["width"])) == (34, 24)  # 80 * 24 / 56 = 34.3


def test_raw_codec_is_exact(tmp_path, list_dataset, dh):
    out = tmp_path / "out"
    dh.run_prepare(out, "list", list_dataset["annotations"], list_dataset["root"],
                   list_dataset["labels"], short_side=0, codec="raw", every=3)
    rows = dh.read_csv(out / "index.csv")
    assert len(rows) == len(list_dataset["videos"])
    for row in rows:
        src, _ = dh.decode_source(list_dataset["videos"][row["id"]]["path"])
        np.testing.assert_array_equal(dh.stored_frames(out, row), src[::3])
    with h5py.File(out / "shards" / rows[0]["shard"], "r") as h5:
        g = h5[rows[0]["id"]]
        assert "frames" in g and "jpeg" not in g and g["frames"].dtype == np.uint8


def test_jpeg_layout_is_one_byte_array_with_offsets(list_prepared, dh):
    """A video's JPEGs are one contiguous uint8 array plus offsets (a clip is one read)."""
    rows = dh.read_csv(list_prepared / "index.csv")
    row = rows[0]
    with h5py.File(list_prepared / "shards" / row["shard"], "r") as h5:
        g = h5[row["id"]]
        jpeg, offsets = g["jpeg"], g["offsets"][()]
        assert jpeg.dtype == np.uint8 and jpeg.ndim == 1 and jpeg.chunks is None
        assert offsets.shape == (int(row["num_frames"]) + 1,)
        assert offsets[0] == 0 and offsets[-1] == jpeg.shape[0] and np.all(np.diff(offsets) > 0)
        for i in range(len(offsets) - 1):  # every frame is a complete JPEG
            b = jpeg[offsets[i]:offsets[i + 1]]
            assert bytes(b[:2]) == b"\xff\xd8" and bytes(b[-2:]) == b"\xff\xd9"
        assert h5.attrs["complete"]
        manifest = json.loads(h5.attrs["manifest"])
        assert [m["id"] for m in manifest] == [r["id"] for r in rows if r["shard"] == row["shard"]]


def test_ffmpeg_lavfi_testsrc_round_trip(tmp_path, ffmpeg_testsrc, dh):
    ann = tmp_path / "a.csv"
    ann.write_text(f"path,label\n{ffmpeg_testsrc.name},pattern\n")
    out = tmp_path / "out"
    dh.run_prepare(out, "list", ann, ffmpeg_testsrc.parent, short_side=0, every=2)
    row = dh.read_csv(out / "index.csv")[0]
    assert (int(row["num_frames"]), float(row["source_fps"]), float(row["fps"])) == (10, 10.0,
                                                                                     5.0)
    src, _ = dh.decode_source(ffmpeg_testsrc)
    stored = dh.stored_frames(out, row)
    # testsrc2's saturated colour bars at 64x48 are hard for JPEG's 4:2:0 chroma (about 24 dB
    # at q90), so check that the pipeline adds nothing to one JPEG encoding at --quality
    from torchvision.io import decode_jpeg, encode_jpeg
    for a, b in zip(stored, src[::2]):
        once = decode_jpeg(encode_jpeg(torch.from_numpy(b).permute(2, 0, 1).contiguous(),
                                       quality=90))
        np.testing.assert_array_equal(a, once.permute(1, 2, 0).numpy())
        assert dh.psnr(a, b) > 20


def test_toy_survives_prepare_exactly(toy_prepared, toy_dataset, dh):
    """The README's toy path (JPEG, original size): thresholding recovers every square
    exactly where ``toy_trajectories`` put it."""
    opt = toy_dataset["options"]
    labels, pos = toy_trajectories(opt)
    rows = dh.read_csv(toy_prepared / "index.csv")
    assert len(rows) == opt.videos
    classes = (toy_prepared / "classes.txt").read_text().split()
    for row in rows:
        i = int(row["id"].split("_")[1])
        assert int(row["label_index"]) == labels[i] and row["label"] == classes[labels[i]]
        frames = dh.stored_frames(toy_prepared, row)
        assert frames.shape == (opt.frames, opt.canvas, opt.canvas, 3)
        expect = np.zeros(frames.shape[:3], bool)
        for t, (y, x) in enumerate(pos[i]):
            expect[t, y:y + opt.square, x:x + opt.square] = True
        np.testing.assert_array_equal(frames.mean(-1) > 127, expect)
        assert float(row["fps"]) == 8.0


def test_toy_raw_is_bit_exact(tmp_path, toy_dataset, dh):
    d, opt = toy_dataset, toy_dataset["options"]
    out = tmp_path / "raw"
    dh.run_prepare(out, "list", d["annotations"], d["root"], d["labels"], short_side=0,
                   codec="raw")
    labels, pos = toy_trajectories(opt)
    rendered = render_toy(opt, labels, pos).reshape(opt.videos, opt.frames, opt.canvas,
                                                    opt.canvas, 3)
    for row in dh.read_csv(out / "index.csv"):
        i = int(row["id"].split("_")[1])
        np.testing.assert_array_equal(dh.stored_frames(out, row), rendered[i])


def test_prepare_json_metadata(list_prepared, list_dataset):
    meta = json.loads((list_prepared / "prepare.json").read_text())
    assert meta["data_options"]["short_side"] == 0 and meta["data_options"]["quality"] == 90
    assert meta["options"]["videos_per_shard"] == 3 and meta["options"]["part"] == "0/1"
    assert meta["counts"]["videos"] == len(list_dataset["videos"])
    assert meta["counts"]["per_split"] == {"train": 5, "val": 2}
    assert meta["counts"]["failures"] == 0 and meta["counts"]["shards"] == 3
    assert meta["num_classes"] == 3 and meta["dataset"] == "list"
    for k in ("torch", "torchvision", "decord", "h5py", "numpy", "python", "vcorr"):
        assert meta["versions"][k]
    assert meta["seconds"] >= 0 and meta["finished"]


@pytest.mark.parametrize("kw,match", [({"every": 0}, "--every"), ({"fps": -1.0}, "--fps"),
                                      ({"every": 2, "fps": 5.0}, "either"),
                                      ({"codec": "png"}, "--codec"), ({"quality": 0}, "quality"),
                                      ({"part": (2, 2)}, "--part"),
                                      ({"videos_per_shard": 0}, "videos-per-shard")])
def test_bad_options(tmp_path, list_dataset, dh, kw, match):
    with pytest.raises(UserError, match=match):
        dh.run_prepare(tmp_path / "o", "list", list_dataset["annotations"],
                       list_dataset["root"], **kw)
    assert not (tmp_path / "o").exists()


# --------------------------------------------------------------------------- bad inputs
@pytest.fixture(scope="module")
def bad_dataset(tmp_path_factory, list_dataset, dh):
    """A 'list' dataset where most entries are broken in a different way."""
    from vcorr.pipelines.data.video_io import ffmpeg_exe, write_video
    import subprocess

    root = tmp_path_factory.mktemp("bad")
    v = root / "v"
    v.mkdir()
    for name in ("good1", "good2", "good3"):
        shutil.copy(list_dataset["videos"]["vid_a1"]["path"], v / f"{name}.mp4")
    (v / "empty.mp4").write_bytes(b"")
    data = (v / "good1.mp4").read_bytes()
    (v / "truncated.mp4").write_bytes(data[:len(data) // 2])
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(v / "good1.mp4"),
                    "-c", "copy", "-movflags", "+faststart", str(v / "fs.mp4")], check=True)
    fs = (v / "fs.mp4").read_bytes()
    (v / "truncated_faststart.mp4").write_bytes(fs[:len(fs) // 2])
    (v / "garbage.mp4").write_bytes(np.random.default_rng(0).bytes(20000))
    write_video(v / "short.mp4", dh.synth_frames(3, seed=1), fps=8.0)
    (v / "empty_folder").mkdir()
    dh.write_frame_folder(v / "corrupt_folder", dh.synth_frames(5, seed=2))
    (v / "corrupt_folder" / "00002.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (root / "classes.txt").write_text("apple\nbanana\n")
    rows = [
        "path,label,split,id",
        "v/good1.mp4,apple,train,good1",
        "v/missing.mp4,apple,train,missing",
        "v/empty.mp4,apple,train,empty",
        "v/truncated.mp4,banana,train,truncated",
        "v/truncated_faststart.mp4,banana,train,truncated_faststart",
        "v/garbage.mp4,banana,train,garbage",
        "v/short.mp4,apple,train,short",
        "v/good2.mp4,durian,train,unknown_label",
        "v/good2.mp4,banana,val,good2",
        "v/good3.mp4,apple,val,good2",  # duplicate id
        "v/good3.mp4,apple,val,good3,extra-field",  # unparsable
        "v/empty_folder,apple,val,empty_folder",
        "v/corrupt_folder,apple,val,corrupt_folder",
        "v/good3.mp4,apple,val,good3",
    ]
    (root / "ann.csv").write_text("\n".join(rows) + "\n")
    return root


EXPECTED_FAILURES = {
    "missing": "missing file: ",
    "empty": "empty file: ",
    "truncated": "not a media file: ",  # an MP4 cut before its index (moov atom at the end)
    "truncated_faststart": "too short: 3 frames after downsampling, need 4 (the container "
                           "holds 3 of the 16 frames",
    "garbage": "not a media file: ",
    "short": "too short: ",
    "unknown_label": "unknown label: 'durian'",
    "good2": "duplicate id: first at ",
    "empty_folder": "no decodable frame: ",
}


def test_bad_inputs_land_in_failures_and_the_run_goes_on(tmp_path, bad_dataset, dh):
    out = tmp_path / "out"
    r = dh.run_prepare(out, "list", bad_dataset / "ann.csv", bad_dataset,
                       bad_dataset / "classes.txt", short_side=0, min_frames=4,
                       videos_per_shard=4)
    rows = dh.read_csv(out / "index.csv")
    # the frame folder with one corrupt JPEG keeps the 4 frames that decode, with a warning
    assert sorted(x["id"] for x in rows) == ["corrupt_folder", "good1", "good2", "good3"]
    assert r.videos == 4 and r.per_split == {"train": 1, "val": 3}
    assert [x["num_frames"] for x in rows if x["id"] == "corrupt_folder"] == ["4"]
    warns = dh.read_csv(out / "warnings.csv")
    assert [(w["id"], w["warning"]) for w in warns] == [("corrupt_folder",
                                                         "decoded 4 of 5 frames")]
    assert r.warnings == 1
    fails = dh.read_csv(out / "failures.csv")
    assert r.failures == len(fails) == len(EXPECTED_FAILURES) + 1
    by_id = {}
    for f in fails:
        assert f["reason"], f
        # reasons are reproducible: no clock time from decord's log prefix
        assert not re.search(r"\[\d\d:\d\d:\d\d\]", f["reason"]), f
        by_id.setdefault(f["id"], []).append(f)
    for id_, why in EXPECTED_FAILURES.items():
        assert len(by_id[id_]) == 1, (id_, by_id.get(id_))
        assert by_id[id_][0]["reason"].startswith(why), (id_, by_id[id_][0])
    # the duplicate is the second 'good2' row; the first one was prepared
    assert [x for x in rows if x["id"] == "good2"][0]["split"] == "val"
    unparsable = by_id[""]
    assert len(unparsable) == 1 and unparsable[0]["reason"].startswith("unparsable row: ")
    assert unparsable[0]["path"].endswith("ann.csv:12")
    assert by_id["missing"][0]["path"].endswith("missing.mp4")
    # the decoder's messages are in the log, with the video id, not on the terminal
    log = (out / "prepare.log").read_text()
    assert "[corrupt_folder] 00002.jpg: " in log and "[truncated_faststart] " in log
    # counts in the summary files
    meta = json.loads((out / "prepare.json").read_text())
    assert meta["counts"]["failures"] == len(fails) and meta["counts"]["videos"] == 4
    assert meta["counts"]["warnings"] == 1
    from vcorr.pipelines.data.inspect import summarize
    s = summarize(out, verify=True)
    assert s["failures"] == len(fails) and s["verify_errors"] == []
    assert s["warnings"] == 1
    assert s["failure_reasons"]["too short"] == 2
    assert s["failure_reasons"]["not a media file"] == 2
    # a rerun skips every shard and reports the same failures and warnings (in the shards)
    r2 = dh.run_prepare(out, "list", bad_dataset / "ann.csv", bad_dataset,
                        bad_dataset / "classes.txt", short_side=0, min_frames=4,
                        videos_per_shard=4)
    assert r2.shards_written == 0 and r2.failures == r.failures and r2.warnings == 1
    assert dh.read_csv(out / "failures.csv") == fails
    assert dh.read_csv(out / "warnings.csv") == warns


def test_bad_inputs_with_workers(tmp_path, bad_dataset, dh):
    """Failures in worker processes are reported the same way."""
    a, b = tmp_path / "a", tmp_path / "b"
    kw = dict(short_side=0, min_frames=4, videos_per_shard=4)
    dh.run_prepare(a, "list", bad_dataset / "ann.csv", bad_dataset,
                   bad_dataset / "classes.txt", **kw)
    dh.run_prepare(b, "list", bad_dataset / "ann.csv", bad_dataset,
                   bad_dataset / "classes.txt", workers=2, **kw)
    assert (a / "index.csv").read_bytes() == (b / "index.csv").read_bytes()
    assert (a / "failures.csv").read_bytes() == (b / "failures.csv").read_bytes()


# --------------------------------------------------------------------------- resume
def _toy_prepare(dh, toy_dataset, out, **kw):
    d = toy_dataset
    return dh.run_prepare(out, "list", d["annotations"], d["root"], d["labels"], short_side=0,
                          videos_per_shard=5, **kw)


def _assert_no_duplicates(dh, out):
    ids = [r["id"] for r in dh.read_csv(out / "index.csv")]
    assert len(ids) == len(set(ids))


def test_plan_is_deterministic_and_per_split(toy_dataset):
    d = toy_dataset
    opt = PrepareOptions("list", [str(d["annotations"])], str(d["root"]), "unused",
                         labels=str(d["labels"]), short_side=0, videos_per_shard=5)
    ann = parse_annotations("list", opt.annotations, opt.labels, opt.root)
    a, b = plan_shards(ann, opt), plan_shards(ann, opt)
    assert [s.name for s in a] == ["train-00000.h5", "train-00001.h5", "train-00002.h5",
                                   "val-00000.h5"]
    assert [len(s.samples) for s in a] == [5, 5, 2, 4]
    assert [s.plan_hash for s in a] == [s.plan_hash for s in b]
    assert len({s.plan_hash for s in a}) == 4
    opt.quality = 80  # a data option changes every plan hash
    assert not {s.plan_hash for s in plan_shards(ann, opt)} & {s.plan_hash for s in a}


def test_killed_run_resumes_to_the_same_index(tmp_path, toy_dataset, toy_prepared, dh,
                                              monkeypatch):
    out = tmp_path / "out"
    calls = {"n": 0}
    real = prep_mod.process_video

    def dying(*args):
        calls["n"] += 1
        if calls["n"] == 8:  # inside the second shard
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(prep_mod, "process_video", dying)
    with pytest.raises(KeyboardInterrupt):
        _toy_prepare(dh, toy_dataset, out)
    monkeypatch.undo()
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["train-00000.h5"]
    r = _toy_prepare(dh, toy_dataset, out)
    assert (r.shards_skipped, r.shards_written) == (1, 3)
    assert (out / "index.csv").read_bytes() == (toy_prepared / "index.csv").read_bytes()
    _assert_no_duplicates(dh, out)
    assert (out / "failures.csv").read_text() == "id,path,reason\n"


def test_hard_kill_leftovers_are_redone(tmp_path, toy_dataset, toy_prepared, dh):
    """Simulate a SIGKILL: a half-written ``.h5.tmp``, a stale index, and a corrupt file at a
    final shard name (e.g. a disk that filled up); the rerun redoes exactly those shards."""
    out = tmp_path / "out"
    shutil.copytree(toy_prepared, out)
    shards = out / "shards"
    (shards / "train-00001.h5").rename(shards / "train-00001.h5.tmp")
    with open(shards / "train-00001.h5.tmp", "r+b") as f:
        f.truncate(3000)
    (shards / "val-00000.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    (out / "index.csv").write_text((out / "index.csv").read_text().splitlines()[0] + "\n")
    r = _toy_prepare(dh, toy_dataset, out)
    assert (r.shards_skipped, r.shards_written) == (2, 2)
    assert (out / "index.csv").read_bytes() == (toy_prepared / "index.csv").read_bytes()
    assert not list(shards.glob("*.tmp"))
    _assert_no_duplicates(dh, out)


def test_incomplete_shard_at_final_name_is_redone(tmp_path, toy_dataset, toy_prepared, dh):
    out = tmp_path / "out"
    shutil.copytree(toy_prepared, out)
    with h5py.File(out / "shards" / "train-00002.h5", "r+") as h5:
        h5.attrs["complete"] = False
    with pytest.raises(ValueError):
        read_shard_tables(out / "shards" / "train-00002.h5")
    r = _toy_prepare(dh, toy_dataset, out)
    assert (r.shards_skipped, r.shards_written) == (3, 1)
    assert (out / "index.csv").read_bytes() == (toy_prepared / "index.csv").read_bytes()


def test_complete_rerun_skips_everything(tmp_path, toy_dataset, toy_prepared, dh):
    out = tmp_path / "out"
    shutil.copytree(toy_prepared, out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    (out / "index.csv").unlink()
    r = _toy_prepare(dh, toy_dataset, out)
    assert (r.shards_skipped, r.shards_written, r.videos) == (4, 0, 16)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()} == before
    assert (out / "index.csv").read_bytes() == (toy_prepared / "index.csv").read_bytes()


def test_rerun_with_other_data_options_is_refused(tmp_path, toy_dataset, toy_prepared, dh):
    out = tmp_path / "out"
    shutil.copytree(toy_prepared, out)
    index = (out / "index.csv").read_bytes()
    with pytest.raises(UserError, match="already prepared with other options.*every"):
        _toy_prepare(dh, toy_dataset, out, every=2)
    assert (out / "index.csv").read_bytes() == index
    # options that do not change the stored data are fine
    r = _toy_prepare(dh, toy_dataset, out, workers=2)
    assert r.shards_skipped == 4


def test_changed_annotations_redo_only_affected_shards(tmp_path, toy_dataset, toy_prepared,
                                                       dh):
    """Appending a train video redoes only the last train shard; the index follows."""
    d = toy_dataset
    ann = tmp_path / "ann.csv"
    text = d["annotations"].read_text()
    ann.write_text(text + "videos/toy_00000.mp4,up,train,extra\n")
    out = tmp_path / "out"
    shutil.copytree(toy_prepared, out)
    r = dh.run_prepare(out, "list", ann, d["root"], d["labels"], short_side=0,
                       videos_per_shard=5)
    assert (r.shards_skipped, r.shards_written, r.videos) == (3, 1, 17)
    rows = dh.read_csv(out / "index.csv")
    assert [x["id"] for x in rows if x["shard"] == "train-00002.h5"] == ["toy_00010",
                                                                         "toy_00011", "extra"]
    _assert_no_duplicates(dh, out)


def test_a_video_downloaded_later_is_prepared_by_a_rerun(tmp_path, toy_dataset, dh):
    """Datasets arrive in parts: a video missing at the first run and there at the second is
    prepared by the rerun (its shard only), not left as 'missing file'."""
    d = toy_dataset
    root = tmp_path / "root"
    shutil.copytree(d["root"], root)
    late = root / "videos" / "toy_00003.mp4"
    held = tmp_path / "held.mp4"
    late.rename(held)
    out = tmp_path / "out"
    r1 = dh.run_prepare(out, "list", d["annotations"], root, d["labels"], short_side=0,
                        videos_per_shard=5)
    assert [f["reason"].split(":")[0] for f in dh.read_csv(out / "failures.csv")] == [
        "missing file"]
    held.rename(late)
    r2 = dh.run_prepare(out, "list", d["annotations"], root, d["labels"], short_side=0,
                        videos_per_shard=5)
    assert r2.shards_written == 1 and r2.shards_skipped == r1.shards_written - 1
    assert r2.failures == 0 and r2.videos == r1.videos + 1
    assert "toy_00003" in [x["id"] for x in dh.read_csv(out / "index.csv")]


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_parts_together_give_the_full_index(tmp_path, toy_dataset, toy_prepared, dh, order):
    out = tmp_path / "out"
    first = _toy_prepare(dh, toy_dataset, out, part=(order[0], 2))
    # shard j belongs to part j % 2: train-00000, train-00002 | train-00001, val-00000
    mine = {0: {"train-00000.h5", "train-00002.h5"}, 1: {"train-00001.h5", "val-00000.h5"}}
    assert set(first.shards_pending) == mine[order[1]]
    assert first.shards_written == 2
    assert {p.name for p in (out / "shards").iterdir()} == mine[order[0]]
    second = _toy_prepare(dh, toy_dataset, out, part=(order[1], 2))
    assert second.shards_pending == [] and second.shards_written == 2
    assert second.videos == 16
    assert (out / "index.csv").read_bytes() == (toy_prepared / "index.csv").read_bytes()
    again = _toy_prepare(dh, toy_dataset, out, part=(order[0], 2))
    assert (again.shards_written, again.shards_skipped) == (0, 2)
    _assert_no_duplicates(dh, out)


def test_workers_give_the_same_shards(tmp_path, toy_dataset, toy_prepared, dh):
    out = tmp_path / "out"
    _toy_prepare(dh, toy_dataset, out, workers=2)
    assert (out / "index.csv").read_bytes() == (toy_prepared / "index.csv").read_bytes()
    for name in ("train-00000.h5", "val-00000.h5"):
        a, b = out / "shards" / name, toy_prepared / "shards" / name
        with h5py.File(a, "r") as ha, h5py.File(b, "r") as hb:
            assert sorted(ha) == sorted(hb)
            for k in ha:
                np.testing.assert_array_equal(ha[k]["jpeg"][()], hb[k]["jpeg"][()])


def test_nothing_prepared_exits_2_without_empty_shards(tmp_path, list_dataset, dh):
    """Issue 17: a --root that exists but holds none of the videos used to print "prepared 0
    videos" and exit 0, with empty shards written. Now: exit 2, the most common failure
    reasons with their counts, failures.csv complete, no shard; a rerun with the right --root
    tries those videos again and prepares them all."""
    from click.testing import CliRunner

    from vcorr.cli.main import cli

    d = list_dataset
    empty_root = tmp_path / "elsewhere"
    empty_root.mkdir()
    out = tmp_path / "out"
    args = ["prepare", "--format", "list", "--annotations", str(d["annotations"]),
            "--labels", str(d["labels"]), "--out", str(out), "--short-side", "0",
            "--videos-per-shard", "3", "--no-progress"]
    r = CliRunner().invoke(cli, args + ["--root", str(empty_root)], prog_name="vcorr")
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: no video was prepared")
    assert "7 tried" in lines[0] and "7 x missing file" in lines[0]
    assert str(out / "failures.csv") in lines[0] and f"--root {empty_root}" in lines[0]
    assert "Traceback" not in r.output
    assert not list((out / "shards").glob("*.h5")) and not list((out / "shards").glob("*.tmp"))
    assert len(dh.read_csv(out / "failures.csv")) == 7
    assert dh.read_csv(out / "index.csv") == []

    r = CliRunner().invoke(cli, args + ["--root", str(d["root"])], prog_name="vcorr")
    assert r.exit_code == 0, r.output
    assert r.output.startswith("prepared 7 videos (train 5, val 2)")
    assert dh.read_csv(out / "failures.csv") == []
    assert len(list((out / "shards").glob("*.h5"))) == 3
    assert not list((out / "shards").glob("*.failures.json"))


def test_a_shard_whose_videos_all_failed_is_not_written(tmp_path, list_dataset, dh):
    """Some videos fine, every video of one shard missing: exit 0, that shard is not written,
    its failures are in failures.csv (also after a rerun that only retries that shard)."""
    d = list_dataset
    ann = tmp_path / "ann.csv"
    lines = d["annotations"].read_text().splitlines()
    # the val shard (vid_b1, vid_c1) points at files that do not exist
    ann.write_text("\n".join(ln.replace("vid_b1.mp4", "gone1.mp4").replace("vid_c1.mp4",
                                                                            "gone2.mp4")
                             for ln in lines) + "\n")
    out = tmp_path / "out"
    kw = dict(short_side=0, videos_per_shard=3)
    r = dh.run_prepare(out, "list", ann, d["root"], d["labels"], **kw)
    assert r.videos == 5 and r.per_split == {"train": 5} and r.failures == 2
    assert r.failure_reasons == {"missing file": 2}
    assert sorted(p.name for p in (out / "shards").iterdir()) == [
        "train-00000.h5", "train-00001.h5", "val-00000.failures.json"]
    fails = dh.read_csv(out / "failures.csv")
    assert sorted(f["id"] for f in fails) == ["vid_b1", "vid_c1"]
    r2 = dh.run_prepare(out, "list", ann, d["root"], d["labels"], **kw)
    assert (r2.shards_skipped, r2.shards_written, r2.videos) == (2, 0, 5)
    assert dh.read_csv(out / "failures.csv") == fails


def test_a_class_name_typo_is_named_by_prepare_inspect_and_train(tmp_path, toy_dataset) -> None:
    """Issue 25, item 3: "lfet" on one val row (no --labels: classes come from the rows) made
    a fifth class without a word. Now prepare and inspect warn, naming the class, its counts
    and the class it is one edit from; training refuses a class with no training video in one
    line unless data.allow_empty_classes is set."""
    import csv as csv_mod

    from click.testing import CliRunner

    from vcorr.cli.main import cli

    d = toy_dataset
    rows = list(csv_mod.DictReader(open(d["annotations"], newline="")))
    val = next(r for r in rows if r["split"] == "val" and r["label"] == "left")
    val["label"] = "lfet"
    ann = tmp_path / "annotations.csv"
    with open(ann, "w", newline="") as f:
        w = csv_mod.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["prepare", "--format", "list", "--annotations", str(ann),
                                 "--root", str(d["root"]), "--out", str(out), "--short-side", "0",
                                 "--no-progress"], prog_name="vcorr")
    assert r.exit_code == 0, r.output
    assert (out / "classes.txt").read_text().split() == ["down", "left", "lfet", "right", "up"]
    assert "1 class with no train video: 'lfet' (1 val)" in r.output
    assert "close spellings (a typo?): 'lfet' (1 val) ~ 'left'" in r.output
    r = CliRunner().invoke(cli, ["inspect", str(out)], prog_name="vcorr")
    assert r.exit_code == 0 and "'lfet' (1 val) ~ 'left'" in r.output, r.output
    config = Path(__file__).resolve().parents[1] / "examples" / "configs" / "toy_c2d.toml"
    train = ["train", str(config), "--data", str(out),
             "--out", str(tmp_path / "run"), "--no-progress", "--device", "cpu", "--set",
             "data.workers=0", "--set", "optim.batch_size=4", "--set", "optim.epochs=1",
             "--set", "train.max_steps_per_epoch=1", "--set", "train.val_every=0"]
    r = CliRunner().invoke(cli, train, prog_name="vcorr")
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1, r.output
    assert "1 of 5 classes have no video in split 'train' ('lfet')" in r.output
    assert "~ 'left'" in r.output and "data.allow_empty_classes=true" in r.output
    assert not (tmp_path / "run").exists()
    r = CliRunner().invoke(cli, train + ["--set", "data.allow_empty_classes=true"],
                           prog_name="vcorr")
    assert r.exit_code == 0, r.output
