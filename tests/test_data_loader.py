"""The clip loader: samplers against naive references, transforms, and ``VideoClipDataset`` on
prepared data (shapes and layout, which frames a clip holds, pixels, labels, determinism,
flips with label swapping)."""
from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import JESTER_CLASSES
from torchvision import tv_tensors

from vcorr.pipelines.data import DenseSampler, SegmentSampler, VideoClipDataset
from vcorr.pipelines.data.swaps import (DEFAULT_MAP, SWAP_PAIRS, official_classes,
                                       read_swap_file, swap_index_map)
from vcorr.pipelines.data import make_sampler, train_transform
# Imported under another name so that pytest does not collect it as a test.
from vcorr.pipelines.data import test_transform as eval_transform
from vcorr.pipelines.data.toy import toy_trajectories
from vcorr.pipelines.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ToModelLayout
from vcorr.pipelines.errors import UserError


# --------------------------------------------------------------------------- helpers
def naive_dense_clip(n: int, start: int, frames: int, interval: int) -> list[int]:
    """Frame ``k`` of a dense clip: ``start + k * interval``, looped over an ``n``-frame video."""
    out = []
    for k in range(frames):
        i = start + k * interval
        while i >= n:
            i -= n
        out.append(i)
    return out


def naive_test_starts(n: int, frames: int, interval: int, num_clips: int) -> list[int]:
    """Evenly spaced starts from the first to the last start that fits (one clip: centred)."""
    last = max(n - ((frames - 1) * interval + 1), 0)
    if num_clips == 1:
        return [last // 2]
    return [int(np.round(last * i / (num_clips - 1))) for i in range(num_clips)]


def clip_frame_indices(clip: torch.Tensor, stored: np.ndarray) -> list[int]:
    """Which stored frame each frame of a uint8 (C, T, H, W) clip is (exact pixel match)."""
    frames = clip.permute(1, 2, 3, 0).numpy()
    out = []
    for f in frames:
        hits = [k for k, s in enumerate(stored) if np.array_equal(f, s)]
        assert len(hits) == 1, f"clip frame matches stored frames {hits}, expected exactly one"
        out.append(hits[0])
    return out


def square_topleft(frame: np.ndarray) -> tuple[int, int]:
    """(y, x) of the top-left pixel of the bright square in an (H, W) intensity frame."""
    ys, xs = np.nonzero(frame > 0.5)
    assert len(ys) > 0, "no square found"
    return int(ys.min()), int(xs.min())


def denormalise(clip: torch.Tensor) -> torch.Tensor:
    """Undo ImageNet normalisation of a (C, T, H, W) clip."""
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1, 1)
    return clip * std + mean


def split_rows(out: Path, split: str) -> list[dict]:
    with open(out / "index.csv", newline="") as f:
        return [r for r in csv.DictReader(f) if r["split"] == split]


def rewrite_index(out: Path, label_of: Callable[[int, dict], int]) -> None:
    """Replace ``label_index`` of the train rows of ``out/index.csv`` (k-th train row ->
    ``label_of(k, row)``)."""
    with open(out / "index.csv", newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames, list(reader)
    k = 0
    for r in rows:
        if r["split"] == "train":
            r["label_index"] = str(label_of(k, r))
            k += 1
    with open(out / "index.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


@pytest.fixture
def toy_copy(tmp_path, toy_prepared) -> Path:
    """A private, writable copy of the prepared toy dataset."""
    out = tmp_path / "toy_copy"
    shutil.copytree(toy_prepared, out)
    return out


@pytest.fixture(scope="module")
def toy_raw(prepared, toy_dataset) -> Path:
    """The toy set stored raw (bit-exact frames), so that clips can be compared pixel for
    pixel with the rendered trajectories."""
    d = toy_dataset
    return prepared("toy_raw_loader", "list", d["annotations"], d["root"], d["labels"],
                    short_side=0, codec="raw", videos_per_shard=5)


# --------------------------------------------------------------------------- samplers
@pytest.mark.parametrize("n,frames,interval", [(30, 8, 1), (30, 8, 3), (22, 8, 3), (9, 4, 2),
                                               (8, 8, 1)])
def test_dense_train_is_a_window_with_uniform_start(n: int, frames: int, interval: int) -> None:
    """Training clips are ``frames`` samples ``interval`` apart from a random start, and
    every start that keeps the clip inside the video is drawn (none outside)."""
    s = DenseSampler(frames, interval)
    last = n - ((frames - 1) * interval + 1)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(400):
        idx = s.train(n, rng)
        assert idx == naive_dense_clip(n, idx[0], frames, interval)
        starts.add(idx[0])
    assert starts == set(range(last + 1))


@pytest.mark.parametrize("n,frames,interval,num_clips", [
    (100, 8, 2, 10), (100, 8, 2, 1), (37, 8, 1, 3), (31, 4, 4, 2), (16, 8, 1, 4), (20, 8, 1, 30)])
def test_dense_test_clips_are_evenly_spaced(n: int, frames: int, interval: int,
                                            num_clips: int) -> None:
    clips = DenseSampler(frames, interval).test(n, num_clips)
    starts = naive_test_starts(n, frames, interval, num_clips)
    assert clips == [naive_dense_clip(n, st, frames, interval) for st in starts]
    if num_clips > 1 and n > (frames - 1) * interval + 1:
        # first clip at the start, last clip ends on the last frame, even gaps (+-1 rounding)
        assert clips[0][0] == 0 and clips[-1][-1] == n - 1
        gaps = np.diff([c[0] for c in clips])
        assert gaps.max() - gaps.min() <= 1


@pytest.mark.parametrize("n,frames,interval,expect", [
    (5, 8, 1, [0, 1, 2, 3, 4, 0, 1, 2]),
    (5, 8, 2, [0, 2, 4, 1, 3, 0, 2, 4]),
    (3, 4, 1, [0, 1, 2, 0]),
    (1, 4, 3, [0, 0, 0, 0]),
])
def test_short_videos_loop(n: int, frames: int, interval: int, expect: list[int]) -> None:
    """A video shorter than a clip is read in a loop (frame i -> i mod n), from frame 0, in
    training and testing alike."""
    s = DenseSampler(frames, interval)
    assert s.train(n, np.random.default_rng(1)) == expect
    assert s.test(n, 1) == [expect]
    assert s.test(n, 3) == [expect] * 3


@pytest.mark.parametrize("n,frames,interval,expect", [
    (4, 8, 1, [0, 0, 1, 1, 2, 2, 3, 3]),       # CorrNet Sec. 5: "repeat each frame twice"
    (5, 8, 1, [0, 0, 1, 1, 2, 3, 3, 4]),       # 5 frames over 8 positions
    (5, 8, 2, [0, 0, 1, 2, 2, 3, 4, 4]),       # positions 0, 2, ..., 14 of a 15-frame span
    (2, 4, 1, [0, 0, 1, 1]),
    (1, 4, 3, [0, 0, 0, 0]),
])
def test_short_videos_repeat(n: int, frames: int, interval: int, expect: list[int]) -> None:
    """Issue 23, item 2: with ``short_video="repeat"`` a short video is stretched over the
    clip, each frame repeated, in order and without the loop's jump back to frame 0; videos
    long enough are sampled as before."""
    s = DenseSampler(frames, interval, "repeat")
    assert s.train(n, np.random.default_rng(1)) == expect
    assert s.test(n, 1) == [expect] and s.test(n, 3) == [expect] * 3
    assert make_sampler("dense", frames, interval, "repeat") == s
    long = 40
    rng = np.random.default_rng(3)
    assert s.train(long, rng) == DenseSampler(frames, interval).train(long, np.random.default_rng(3))
    assert s.test(long, 4) == DenseSampler(frames, interval).test(long, 4)
    with pytest.raises(ValueError, match="short_video"):
        DenseSampler(frames, interval, "pad")


def test_short_video_reaches_the_training_and_validation_samplers(list_prepared: Path) -> None:
    """``data.short_video`` is checked when the config loads and given to the samplers that
    training and validation build; the CorrNet Something-Something v1 configs use "repeat"."""
    from vcorr.pipelines.train import load_config
    from vcorr.pipelines.train.trainer import build_dataset

    ssv1 = Path(__file__).resolve().parents[1] / "examples" / "configs" / "ssv1_corrnet_26.toml"
    cfg = load_config(ssv1, [f"data.root={json.dumps(str(list_prepared))}",
                             'data.train_split="train"', 'data.val_split="val"'])
    assert cfg["data"]["short_video"] == "repeat"
    for train in (True, False):
        assert build_dataset(cfg, 32, train=train).sampler == DenseSampler(32, 1, "repeat")
    with pytest.raises(UserError, match="short_video"):
        load_config(ssv1, ['data.short_video="pad"'])


@pytest.mark.parametrize("n,frames", [(16, 4), (30, 8), (10, 8), (8, 8), (3, 8)])
def test_segment_train_takes_one_frame_per_segment(n: int, frames: int) -> None:
    """TSN: frame k is a random point of segment [k n / F, (k + 1) n / F), rounded down;
    over many draws every frame the segment touches occurs."""
    s = SegmentSampler(frames)
    rng = np.random.default_rng(0)
    seen: list[set[int]] = [set() for _ in range(frames)]
    for _ in range(300):
        idx = s.train(n, rng)
        assert len(idx) == frames
        for k, i in enumerate(idx):
            assert 0 <= i < n
            # floor of a point of the segment (a frame straddling a border may serve both)
            assert np.floor(k * n / frames) <= i < (k + 1) * n / frames, (k, i)
            seen[k].add(i)
        assert idx == sorted(idx)
    for k in range(frames):
        lo, hi = int(np.floor(k * n / frames)), int(np.ceil((k + 1) * n / frames))
        assert seen[k] == set(range(lo, hi)), k


@pytest.mark.parametrize("n,frames,num_clips,expect", [
    (16, 4, 1, [[2, 6, 10, 14]]),
    (16, 4, 2, [[1, 5, 9, 13], [3, 7, 11, 15]]),
    (10, 4, 1, [[1, 3, 6, 8]]),
    (3, 6, 1, [[0, 0, 1, 1, 2, 2]]),
])
def test_segment_test_views(n: int, frames: int, num_clips: int,
                            expect: list[list[int]]) -> None:
    """Testing takes segment centres; ``num_clips`` views shift the pick evenly inside every
    segment (view v at fraction (v + 0.5) / num_clips)."""
    assert SegmentSampler(frames).test(n, num_clips) == expect


def test_make_sampler_names_and_aliases() -> None:
    assert make_sampler("dense", 8, 2) == DenseSampler(8, 2)
    assert make_sampler("interval", 4) == DenseSampler(4, 1)
    assert make_sampler("segment", 8, 5) == SegmentSampler(8)
    assert make_sampler("tsn", 3) == SegmentSampler(3)
    with pytest.raises(ValueError, match="unknown sampler"):
        make_sampler("random", 8)


# --------------------------------------------------------------------------- transforms
def test_to_model_layout_is_the_tchw_to_cthw_permute() -> None:
    video = tv_tensors.Video(torch.arange(4 * 3 * 2 * 5).reshape(4, 3, 2, 5))
    out = ToModelLayout()(video)
    assert type(out) is torch.Tensor and out.shape == (3, 4, 2, 5)
    for t in range(4):
        for c in range(3):
            assert torch.equal(out[c, t], video[t, c].as_subclass(torch.Tensor))


@pytest.mark.parametrize("kw", [{}, {"random_resized": True}, {"color_jitter": 0.4},
                                {"short_side": 128, "crop": 96}])
def test_train_transform_output_layout(kw: dict) -> None:
    """uint8 (T, C, H, W) in, float32 (C, T, crop, crop) out; one random draw per clip, so a
    video of identical frames stays identical across T (same crop, scale, colour)."""
    torch.manual_seed(0)
    frame = torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8)
    video = tv_tensors.Video(frame.expand(6, 3, 48, 64).contiguous())
    out = train_transform(**kw)(video)
    crop = kw.get("crop", 112)
    assert out.shape == (3, 6, crop, crop) and out.dtype == torch.float32
    for t in range(1, 6):
        assert torch.equal(out[:, t], out[:, 0])
    # different clips get different draws
    outs = [train_transform(**kw)(video) for _ in range(3)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


def test_train_transform_without_normalisation_is_in_unit_range() -> None:
    video = tv_tensors.Video(torch.randint(0, 256, (4, 3, 40, 50), dtype=torch.uint8))
    out = train_transform(crop=32, short_side=(40, 48), mean=None)(video)
    assert out.shape == (3, 4, 32, 32)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_test_transform_is_an_exact_centre_crop_and_normalisation() -> None:
    """No resize: the output is the centre crop of the input, scaled to [0, 1] and
    normalised with the ImageNet statistics, in (C, T, H, W)."""
    video = torch.randint(0, 256, (5, 3, 48, 64), dtype=torch.uint8)
    out = eval_transform(crop=32, short_side=None)(tv_tensors.Video(video))
    assert out.shape == (3, 5, 32, 32) and out.dtype == torch.float32
    top, left = (48 - 32) // 2, (64 - 32) // 2
    expect = video[:, :, top:top + 32, left:left + 32].permute(1, 0, 2, 3).float() / 255
    torch.testing.assert_close(denormalise(out), expect, atol=1e-5, rtol=0)
    full = eval_transform(crop=None, short_side=None, mean=None)(tv_tensors.Video(video))
    torch.testing.assert_close(full, video.permute(1, 0, 2, 3).float() / 255)


def test_test_transform_resizes_the_short_side() -> None:
    video = tv_tensors.Video(torch.randint(0, 256, (2, 3, 48, 64), dtype=torch.uint8))
    assert eval_transform(crop=None, short_side=96)(video).shape == (3, 2, 96, 128)
    assert eval_transform(crop=80, short_side=96)(video).shape == (3, 2, 80, 80)


# --------------------------------------------------------------------------- dataset
def test_dataset_shapes_and_dtypes(toy_prepared: Path) -> None:
    """(C, T, H, W) in training and with one test clip; (num_clips, C, T, H, W) otherwise;
    uint8 without a transform, float32 with one."""
    ds = VideoClipDataset(toy_prepared, "train", DenseSampler(8, 1),
                          transform=train_transform(crop=24, short_side=(32, 40)))
    clip, label = ds[0]
    assert clip.shape == (3, 8, 24, 24) and clip.dtype == torch.float32
    assert isinstance(label, int)
    raw = VideoClipDataset(toy_prepared, "val", DenseSampler(3, 1), train=False)
    clip, _ = raw[0]
    assert clip.shape == (3, 3, 32, 32) and clip.dtype == torch.uint8
    multi = VideoClipDataset(toy_prepared, "val", SegmentSampler(4), train=False, num_clips=5,
                             transform=eval_transform(crop=28, short_side=32))
    clip, _ = multi[1]
    assert clip.shape == (5, 3, 4, 28, 28) and clip.dtype == torch.float32


def test_split_sizes_and_labels_come_from_the_index(toy_copy: Path) -> None:
    """Labels are the index's ``label_index`` (here rewritten to values the class names
    would never give), in index order."""
    train_rows = split_rows(toy_copy, "train")
    rewrite_index(toy_copy, lambda k, r: 40 + k)
    ds = VideoClipDataset(toy_copy, "train", DenseSampler(4), train=False)
    assert len(ds) == len(train_rows) == 12
    assert ds.labels() == [40 + k for k in range(12)]
    assert [ds[i][1] for i in range(len(ds))] == [40 + k for k in range(12)]
    assert len(VideoClipDataset(toy_copy, "val", DenseSampler(4))) == 4


def test_toy_labels_are_the_trajectory_directions(toy_prepared: Path, toy_dataset: dict) -> None:
    labels, _ = toy_trajectories(toy_dataset["options"])
    for split in ("train", "val"):
        ds = VideoClipDataset(toy_prepared, split, DenseSampler(4), train=False)
        for i, row in enumerate(ds.videos):
            assert ds[i][1] == labels[int(row["id"].split("_")[1])]


@pytest.mark.parametrize("transform", ["none", "full_frame", "native_crop"])
def test_toy_pixels_follow_the_trajectories(toy_prepared: Path, toy_dataset: dict,
                                            transform: str) -> None:
    """With no transform, or the test transform at the native 32x32 size, the bright square
    of frame t sits where ``toy_trajectories`` put it."""
    opt = toy_dataset["options"]
    _, pos = toy_trajectories(opt)
    tf = {"none": None,
          "full_frame": eval_transform(crop=None, short_side=None, mean=None),
          "native_crop": eval_transform(crop=opt.canvas, short_side=opt.canvas)}[transform]
    ds = VideoClipDataset(toy_prepared, "train", DenseSampler(opt.frames), train=False,
                          transform=tf)
    for i, row in enumerate(ds.videos):
        clip, _ = ds[i]
        if transform == "none":
            clip = clip.float() / 255
        elif transform == "native_crop":
            clip = denormalise(clip)
        assert clip.shape == (3, opt.frames, opt.canvas, opt.canvas)
        vid = int(row["id"].split("_")[1])
        for t in range(opt.frames):
            gray = clip[:, t].mean(0).numpy()
            y, x = (int(v) for v in pos[vid, t])
            assert square_topleft(gray) == (y, x)
            mask = np.zeros_like(gray, bool)
            mask[y:y + opt.square, x:x + opt.square] = True
            assert gray[mask].min() > 0.5 and gray[~mask].max() < 0.5


@pytest.mark.parametrize("sampler,num_clips", [
    (DenseSampler(8, 2), 3), (DenseSampler(6, 1), 1), (DenseSampler(30, 1), 2),
    (SegmentSampler(4), 2), (SegmentSampler(9), 1)])
def test_test_clips_hold_the_sampled_frames(list_prepared: Path, dh, sampler, num_clips: int
                                            ) -> None:
    """Every clip frame is the stored frame the naive sampler reference names: evenly spaced
    dense clips, TSN segment centres, looping for videos shorter than the clip (vid_short
    has 5 frames, the others 10-24)."""
    ds = VideoClipDataset(list_prepared, "train", sampler, train=False, num_clips=num_clips)
    assert len(ds) == 5
    for i, row in enumerate(ds.videos):
        stored = dh.stored_frames(list_prepared, row)
        n = len(stored)
        clips, _ = ds[i]
        if num_clips == 1:
            clips = clips[None]
        assert clips.shape[:3] == (num_clips, 3, sampler.frames)
        if isinstance(sampler, DenseSampler):
            expect = [naive_dense_clip(n, st, sampler.frames, sampler.interval)
                      for st in naive_test_starts(n, sampler.frames, sampler.interval,
                                                  num_clips)]
        else:
            seg = n / sampler.frames
            expect = [[int(np.floor((k + (v + 0.5) / num_clips) * seg)) % n
                       for k in range(sampler.frames)] for v in range(num_clips)]
        got = [clip_frame_indices(c, stored) for c in clips]
        assert got == expect, row["id"]


def test_train_clips_are_dense_windows(list_prepared: Path, dh) -> None:
    ds = VideoClipDataset(list_prepared, "train", DenseSampler(4, 3), seed=5)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i, row in enumerate(ds.videos):
            stored = dh.stored_frames(list_prepared, row)
            got = clip_frame_indices(ds[i][0], stored)
            n = len(stored)
            assert got == naive_dense_clip(n, got[0], 4, 3)
            assert got[0] <= max(n - 10, 0)


def test_raw_shards_give_the_rendered_frames(toy_raw: Path, toy_dataset: dict) -> None:
    """Raw (uncompressed) shards: clips are bit-exact copies of the rendered toy frames,
    looped for a clip longer than the video."""
    from vcorr.pipelines.data.toy import render_toy

    opt = toy_dataset["options"]
    labels, pos = toy_trajectories(opt)
    rendered = render_toy(opt, labels, pos).reshape(opt.videos, opt.frames, opt.canvas,
                                                    opt.canvas, 3)
    ds = VideoClipDataset(toy_raw, "val", DenseSampler(6, 1), train=False)
    for i, row in enumerate(ds.videos):
        vid = int(row["id"].split("_")[1])
        clip, _ = ds[i]
        loop = [i % opt.frames for i in range(6)]  # 0, 1, 2, 0, 1, 2 for the 3-frame toy
        expect = torch.from_numpy(rendered[vid][loop]).permute(3, 0, 1, 2)
        assert torch.equal(clip, expect)


# --------------------------------------------------------------------------- determinism
def _train_ds(root: Path, seed: int = 0, flip: str = "on") -> VideoClipDataset:
    return VideoClipDataset(root, "train", DenseSampler(3, 1), seed=seed, flip=flip,
                            transform=train_transform(crop=24, short_side=(28, 40),
                                                      color_jitter=0.3))


def _all_items(ds: VideoClipDataset) -> list[tuple[torch.Tensor, int]]:
    return [ds[i] for i in range(len(ds))]


def _same(a: list, b: list) -> bool:
    return all(torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))


def test_same_seed_epoch_index_gives_the_same_clip(toy_prepared: Path) -> None:
    """Two instances, visited in different orders, agree item for item; another seed or
    another epoch changes the clips; going back to an epoch repeats it exactly."""
    a, b = _train_ds(toy_prepared), _train_ds(toy_prepared)
    first = _all_items(a)
    rev = [b[i] for i in reversed(range(len(b)))][::-1]
    assert _same(first, rev)
    other_seed = _all_items(_train_ds(toy_prepared, seed=1))
    a.set_epoch(1)
    epoch1 = _all_items(a)
    for other in (other_seed, epoch1):
        differ = sum(not torch.equal(x[0], y[0]) for x, y in zip(first, other))
        assert differ >= len(first) - 1  # a collision of every draw is next to impossible
    a.set_epoch(0)
    assert _same(_all_items(a), first)


def test_items_do_not_touch_the_global_torch_rng(toy_prepared: Path) -> None:
    ds = _train_ds(toy_prepared)
    torch.manual_seed(123)
    expect = torch.rand(5)
    torch.manual_seed(123)
    ds[0], ds[1]
    assert torch.equal(torch.rand(5), expect)


def test_clips_do_not_depend_on_dataloader_workers(toy_prepared: Path) -> None:
    """workers=0 and workers=2 (each worker opens its own HDF5 handles) give identical
    batches, at epoch 0 and after set_epoch(1), which the workers must see."""
    from torch.utils.data import DataLoader

    ds = _train_ds(toy_prepared)
    ds[0]  # open HDF5 handles in the parent first: workers must not reuse them

    def batches(workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(c.clone(), lab.clone()) for c, lab in
                DataLoader(ds, batch_size=4, shuffle=False, num_workers=workers)]

    for epoch in (0, 1):
        ds.set_epoch(epoch)
        single, multi = batches(0), batches(2)
        assert len(single) == len(multi) == 3
        for (c0, l0), (c2, l2) in zip(single, multi):
            assert c0.shape == (4, 3, 3, 24, 24)
            assert torch.equal(c0, c2) and torch.equal(l0, l2)
        if epoch == 0:
            epoch0 = single
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(epoch0, single))


# --------------------------------------------------------------------------- flips
def _flip_states(root: Path, flip: str, epochs: int = 6, **kw
                 ) -> list[tuple[int, int, bool, int, int]]:
    """(epoch, index, flipped, label, unflipped label) of every training item, telling a
    flip from the pixels: the clip equals the flip="off" clip (same seed, same frames) or
    its mirror image."""
    ref = VideoClipDataset(root, "train", DenseSampler(4), flip="off", **kw)
    ds = VideoClipDataset(root, "train", DenseSampler(4), flip=flip, **kw)
    out = []
    for epoch in range(epochs):
        ref.set_epoch(epoch)
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            (plain, lab0), (clip, lab) = ref[i], ds[i]
            mirrored = torch.flip(plain, dims=[-1])
            assert not torch.equal(plain, mirrored), "mirror-symmetric clip: a flip is invisible"
            if torch.equal(clip, plain):
                flipped = False
            else:
                assert torch.equal(clip, mirrored), "neither the clip nor its mirror image"
                flipped = True
            out.append((epoch, i, flipped, lab, lab0))
    return out


def test_flip_on_mirrors_pixels_and_keeps_labels(toy_prepared: Path, toy_dataset: dict) -> None:
    """flip="on" mirrors about half the clips (the square moves to x' = W - S - x) and
    never changes a label."""
    states = _flip_states(toy_prepared, "on", epochs=4)
    flips = sum(s[2] for s in states)
    assert 0.25 * len(states) < flips < 0.75 * len(states)
    assert all(lab == lab0 for *_, lab, lab0 in states)
    opt = toy_dataset["options"]
    _, pos = toy_trajectories(opt)
    ds = VideoClipDataset(toy_prepared, "train", DenseSampler(4), flip="on")
    epoch, i = next((e, i) for e, i, f, *_ in states if f)
    ds.set_epoch(epoch)
    clip, _ = ds[i]
    vid = int(ds.videos[i]["id"].split("_")[1])
    for t in range(opt.frames):
        y, x = square_topleft(clip[:, t].float().mean(0).numpy() / 255)
        assert (y, x) == (pos[vid, t, 0], opt.canvas - opt.square - pos[vid, t, 1])


def test_flip_toy_with_a_left_right_swap_map(toy_prepared: Path) -> None:
    """The toy's own mirror pair: a flipped 'left' clip is a 'right' clip and vice versa;
    up and down keep their labels."""
    classes = (toy_prepared / "classes.txt").read_text().split()
    left, right = classes.index("left"), classes.index("right")
    swap = {left: right, right: left}
    states = _flip_states(toy_prepared, "swap", swap_map=swap)
    for _, _, flipped, lab, lab0 in states:
        assert lab == (swap.get(lab0, lab0) if flipped else lab0)
    assert any(f and lab0 in swap for _, _, f, _, lab0 in states)


def test_flip_toy_with_a_swap_map_file(toy_prepared: Path, tmp_path: Path) -> None:
    """``data.swap_map`` as a user's CSV of class names: the same flips and labels as the
    hand-written index map above; a typo or a class in two pairs is one clear error."""
    classes = (toy_prepared / "classes.txt").read_text().split()
    path = tmp_path / "mirror.csv"
    path.write_text("# classes a horizontal flip swaps\nleft,right\n\n")
    states = _flip_states(toy_prepared, "swap", swap_spec=str(path))
    for _, _, flipped, lab, lab0 in states:
        want = {"left": "right", "right": "left"}.get(classes[lab0], classes[lab0])
        assert classes[lab] == (want if flipped else classes[lab0])
    assert any(f and classes[lab0] in ("left", "right") for _, _, f, _, lab0 in states)
    path.write_text("left,rigth\n")
    with pytest.raises(UserError, match=r"mirror.csv.*'rigth' is not one of the 4 classes"):
        VideoClipDataset(toy_prepared, "train", DenseSampler(4), flip="swap",
                         swap_spec=str(path))
    path.write_text("left,right\nright,up\n")
    with pytest.raises(UserError, match="'right' is in two pairs"):
        VideoClipDataset(toy_prepared, "train", DenseSampler(4), flip="swap",
                         swap_spec=str(path))
    with pytest.raises(UserError, match="no built-in one; set data.swap_map"):
        VideoClipDataset(toy_prepared, "train", DenseSampler(4), flip="swap")


def test_swap_file_rows() -> None:
    """Quoted names may hold commas; a row of one or three names is refused with its line."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.csv"
        p.write_text('"Putting a, b",Other\n# note\n A , B \n')
        assert read_swap_file(p) == [("Putting a, b", "Other"), ("A", "B")]
        p.write_text("A,B\nC\n")
        with pytest.raises(UserError, match="line 2: a label-swap row is two class names"):
            read_swap_file(p)


# Mirror images written out by hand, per dataset: the reference the built-in maps must equal.
MIRRORS = {
    "ssv2": {"Pulling something from left to right": "Pulling something from right to left",
             "Pushing something from left to right": "Pushing something from right to left",
             "Turning the camera left while filming something":
                 "Turning the camera right while filming something"},
    "jester": {"Swiping Left": "Swiping Right",
               "Sliding Two Fingers Left": "Sliding Two Fingers Right",
               "Turning Hand Clockwise": "Turning Hand Counterclockwise"},
}
MIRRORS["ssv1"] = MIRRORS["ssv2"]
# The CPNet authors' maps (reference-details.md): SSv2 label ids 86<->87, 93<->94, 166<->167;
# Jester 11<->12, 16<->17 in alphabetical class order.
AUTHORS = {"ssv2": [(86, 87), (93, 94), (166, 167)], "jester": [(11, 12), (16, 17)]}


@pytest.mark.parametrize("dataset", sorted(DEFAULT_MAP))
def test_swap_mode_swaps_exactly_the_built_in_pairs(toy_copy: Path, dataset: str) -> None:
    """With prepare.json naming the dataset and its official classes, flip="swap" uses its
    built-in map: a flipped clip of every mirrored class gets the hand-written mirror class,
    any other class keeps its label, an unflipped clip keeps its label."""
    classes = official_classes("jester" if dataset == "jester" else "ssv2")
    mirror = {**MIRRORS[dataset], **{b: a for a, b in MIRRORS[dataset].items()}}
    keys = sorted(classes.index(c) for c in mirror)
    others = [k for k in range(len(classes)) if classes[k] not in mirror][:12 - len(keys)]
    values = keys + others
    rewrite_index(toy_copy, lambda k, r: values[k])
    (toy_copy / "classes.txt").write_text("".join(c + "\n" for c in classes))
    meta = json.loads((toy_copy / "prepare.json").read_text())
    meta["dataset"] = dataset
    (toy_copy / "prepare.json").write_text(json.dumps(meta))
    states = _flip_states(toy_copy, "swap", epochs=8)
    flipped_labels = set()
    for _, i, flipped, lab, lab0 in states:
        assert lab0 == values[i]
        name = classes[lab0]
        assert classes[lab] == (mirror.get(name, name) if flipped else name)
        if flipped:
            flipped_labels.add(lab0)
    assert set(keys) <= flipped_labels  # every pair of the map was exercised


def test_official_class_lists() -> None:
    """SSv2: 174 labels, in the labels.json order (alphabetical); Jester: 27, in the order of
    jester-v1-labels.csv (the fixture's copy)."""
    ssv2 = official_classes("ssv2")
    assert len(ssv2) == len(set(ssv2)) == 174 and ssv2 == sorted(ssv2)
    assert official_classes("jester") == JESTER_CLASSES


DIRECTION_WORDS = (("left", "right"), ("clockwise", "counterclockwise"))
# Classes with such a word that a mirror keeps, each read by hand.
NOT_DIRECTIONS = {
    "Plugging something into something but pulling it right out as you remove your hand",  # at once
}


def _mirror_name(name: str) -> str:
    """The class name with its horizontal direction words exchanged ("" if it has none)."""
    words = name.split()
    low = [w.lower() for w in words]
    for a, b in DIRECTION_WORDS:
        if a in low or b in low:
            swapped = [b if w == a else a if w == b else w for w in low]
            return " ".join(w if w.lower() == s else (s.capitalize() if w[0].isupper() else s)
                            for w, s in zip(words, swapped))
    return ""


@pytest.mark.parametrize("name", sorted(SWAP_PAIRS))
def test_built_in_maps_audited_against_the_official_lists(name: str) -> None:
    """Every class of the official list whose name has a horizontal direction (left/right,
    clockwise/counterclockwise) is paired with the class of the exchanged name, and no other
    class is paired; except ``jester-authors``, the authors' map, which lacks the rotation
    pair. The authors' index maps are the same pairs."""
    dataset = name.split("-")[0]
    classes = official_classes("jester" if dataset == "jester" else "ssv2")
    pairs = SWAP_PAIRS[name]
    named = [n for p in pairs for n in p]
    assert len(named) == len(set(named)) and all(n in classes for n in named)
    audit = {c: _mirror_name(c) for c in classes if _mirror_name(c) and c not in NOT_DIRECTIONS}
    assert all(m in classes for m in audit.values()), audit
    got = {frozenset(p) for p in pairs}
    want = {frozenset((a, b)) for a, b in audit.items()}
    if name == "jester-authors":
        assert want - got == {frozenset(("Turning Hand Clockwise", "Turning Hand Counterclockwise"))}
        assert got < want
    else:
        assert got == want == {frozenset(p) for p in MIRRORS[name].items()}
    if name in ("ssv2", "jester-authors"):
        order = classes if name == "ssv2" else sorted(classes)
        idx = swap_index_map(pairs, order)
        assert {frozenset(p) for p in AUTHORS[dataset]} == {frozenset(p) for p in idx.items()}


def test_jester_swap_end_to_end(prepared, jester_dataset: dict) -> None:
    """A prepared Jester set with the default map: a flipped 'Swiping Left' video is labelled
    'Swiping Right' (and back); 'Thumb Up' never changes."""
    d = jester_dataset
    out = prepared("jester", "jester", d["annotations"], d["root"], d["labels"], short_side=0)
    classes = (out / "classes.txt").read_text().splitlines()
    states = _flip_states(out, "swap", epochs=8)
    ds = VideoClipDataset(out, "train", DenseSampler(4))
    mirror = {"Swiping Left": "Swiping Right", "Swiping Right": "Swiping Left",
              "Turning Hand Clockwise": "Turning Hand Counterclockwise",
              "Turning Hand Counterclockwise": "Turning Hand Clockwise"}
    seen = set()
    for _, i, flipped, lab, lab0 in states:
        name = ds.videos[i]["label"]
        assert classes[lab0] == name
        expect = mirror.get(name, name) if flipped else name
        assert classes[lab] == expect
        if flipped:
            seen.add(name)
    assert {"Swiping Left", "Swiping Right", "Thumb Up"} <= seen


def test_no_flip_in_testing(toy_prepared: Path) -> None:
    swap = {0: 1, 1: 0, 2: 3, 3: 2}
    ds = VideoClipDataset(toy_prepared, "train", DenseSampler(4), train=False, flip="swap",
                          swap_map=swap)
    ref = VideoClipDataset(toy_prepared, "train", DenseSampler(4), train=False)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            (c, lab), (c0, lab0) = ds[i], ref[i]
            assert torch.equal(c, c0) and lab == lab0


# --------------------------------------------------------------------------- bad arguments
def test_bad_dataset_arguments(toy_prepared: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="needs a label-swap map and dataset .list. has no built-in one"):
        VideoClipDataset(toy_prepared, "train", DenseSampler(4), flip="swap")
    with pytest.raises(ValueError, match="flip must be"):
        VideoClipDataset(toy_prepared, "train", DenseSampler(4), flip="yes")
    with pytest.raises(UserError, match="no videos in split 'test'"):
        VideoClipDataset(toy_prepared, "test", DenseSampler(4))
    with pytest.raises(UserError, match="index.csv: not found"):
        VideoClipDataset(tmp_path, "train", DenseSampler(4))


def test_min_frames_drops_short_videos(list_prepared: Path) -> None:
    all_train = VideoClipDataset(list_prepared, "train", DenseSampler(4))
    assert "vid_short" in [v["id"] for v in all_train.videos]
    long_only = VideoClipDataset(list_prepared, "train", DenseSampler(4), min_frames=6)
    assert [v["id"] for v in long_only.videos] == [v["id"] for v in all_train.videos
                                                    if v["id"] != "vid_short"]


# --------------------------------------------------------------------------- many shards
@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> Path:
    """1000 shards of 2 videos of 2 tiny frames (issue 17's 2000-video toy at 2 per shard)."""
    from vcorr.pipelines.bench.shards import make_many_shards

    return make_many_shards(tmp_path_factory.mktemp("many") / "data", shards=1000,
                            videos_per_shard=2, frames=2, size=8)


def test_reader_bounds_open_shards_and_cached_offsets(many_shards: Path) -> None:
    """Walking 1000 shards keeps at most ``max_open`` of them (and their descriptors) open and
    at most ``max_offsets_bytes`` of offsets cached; the least recently used go first."""
    from vcorr.pipelines.bench.shards import open_files
    from vcorr.pipelines.data.shards import MAX_OPEN_SHARDS, ShardReader

    ds = VideoClipDataset(many_shards, "train", DenseSampler(2), None, train=False)
    assert len(ds) == 2000
    fds_before = open_files()
    most_open = most_fds = 0
    for i in range(len(ds)):
        ds[i]
        most_open = max(most_open, ds.reader.open_files)
        most_fds = max(most_fds, open_files())
    assert most_open == MAX_OPEN_SHARDS  # reached, never passed
    assert most_fds - fds_before <= MAX_OPEN_SHARDS
    assert ds.reader.cached_offsets[1] <= ds.reader.max_offsets_bytes
    ds.reader.close()
    assert open_files() == fds_before

    reader = ShardReader(many_shards / "shards", max_open=3, max_offsets_bytes=5 * 24)
    for s in range(5):  # offsets of 2 frames: 3 int64, 24 bytes a video
        for v in range(2):
            reader.read_encoded(f"train-{s:05d}.h5", f"s{s:05d}_v{v}", [0, 1])
    assert reader.open_files == 3 and list(reader._files) == [
        "train-00002.h5", "train-00003.h5", "train-00004.h5"]
    assert reader.cached_offsets == (5, 5 * 24)
    reader.read_encoded("train-00002.h5", "s00002_v0", [1])  # used again: now the newest
    reader.read_encoded("train-00005.h5", "s00005_v0", [0])
    assert list(reader._files) == ["train-00004.h5", "train-00002.h5", "train-00005.h5"]
    reader.close()


def test_training_loader_walks_1000_shards_under_a_low_open_files_limit(
        many_shards: Path) -> None:
    """The issue's crash: a DataLoader worker that kept every shard open hit "Too many open
    files" on a 1000-shard dataset with ``ulimit -n 512``. Here the limit leaves 200
    descriptors above what the test process holds."""
    import resource

    from vcorr.pipelines.bench.shards import open_files

    ds = VideoClipDataset(many_shards, "train", DenseSampler(2), None, train=True, seed=1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (open_files() + 200, hard))
    try:
        loader = torch.utils.data.DataLoader(ds, batch_size=50, num_workers=1)
        seen = sum(len(y) for _, y in loader)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert seen == 2000
