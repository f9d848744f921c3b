"""Shared fixtures of the test suite.

Data-pipeline fixtures (``test_data_*.py``): tiny videos generated once per session with the
real ffmpeg writer, small datasets laid out in each supported dataset's real annotation format,
and a cache of prepared outputs so that several tests can share one ``vcorr prepare`` run.
Everything is small (64x48 or 32x32 pixels, 4-24 frames) to keep the suite fast.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

_FFMPEG_BEFORE: str | None = None


def pytest_configure(config):
    # torchvision.io warns on every JPEG call that TorchCodec will replace it; not our concern.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:The image decoding and encoding capabilities of TorchVision:DeprecationWarning")
    # Every ffmpeg the tests run (video_io.ffmpeg_exe: $VCORR_FFMPEG, else PATH, else
    # imageio-ffmpeg's) is imageio-ffmpeg's binary, the one `pip install` brings everywhere,
    # never an ffmpeg that happens to be on PATH; the CLI subprocesses inherit the choice.
    import imageio_ffmpeg

    global _FFMPEG_BEFORE
    _FFMPEG_BEFORE = os.environ.get("VCORR_FFMPEG")
    os.environ["VCORR_FFMPEG"] = imageio_ffmpeg.get_ffmpeg_exe()


def pytest_unconfigure(config):
    if _FFMPEG_BEFORE is None:
        os.environ.pop("VCORR_FFMPEG", None)
    else:
        os.environ["VCORR_FFMPEG"] = _FFMPEG_BEFORE


# --------------------------------------------------------------------------- frame content
H, W = 48, 64  # every synthetic video is 64x48 unless a test says otherwise


def synth_frames(t: int, h: int = H, w: int = W, seed: int = 0) -> np.ndarray:
    """(t, h, w, 3) uint8 smooth test content that changes clearly from frame to frame.

    Colour gradients whose phase advances every frame plus a soft bright blob moving a few
    pixels per frame: smooth enough for JPEG at quality 90 to stay well above 35 dB, distinct
    enough that every frame can be told from its neighbours (to check which frames were kept).
    """
    rng = np.random.default_rng(seed)
    phase = rng.random(3) * 2 * np.pi
    y = np.arange(h, dtype=np.float64)[:, None]
    x = np.arange(w, dtype=np.float64)[None, :]
    out = np.empty((t, h, w, 3), np.uint8)
    for k in range(t):
        r = 128 + 70 * np.sin(2 * np.pi * x / w + phase[0] + 0.45 * k)
        g = 128 + 70 * np.cos(2 * np.pi * y / h + phase[1] - 0.35 * k) + 0 * x
        cy, cx = (h / 2 + (h / 3) * np.sin(0.5 * k + phase[2])), (4 + 2.5 * k) % w
        blob = 110 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 6.0 ** 2))
        b = 60 + 0.5 * x + blob
        out[k] = np.clip(np.stack([r + 0.3 * blob, g, b], axis=-1), 0, 255).astype(np.uint8)
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def write_frame_folder(folder: Path, frames: np.ndarray, quality: int = 95) -> None:
    """A frame folder as Jester/SSv1 ship them: ``folder/00001.jpg, 00002.jpg, ...``."""
    import torch
    from torchvision.io import encode_jpeg

    folder.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames, start=1):
        data = encode_jpeg(torch.from_numpy(f).permute(2, 0, 1).contiguous(), quality=quality)
        (folder / f"{i:05d}.jpg").write_bytes(bytes(data.numpy()))


def decode_source(path: str | Path) -> tuple[np.ndarray, float]:
    """All frames of a video (through the decoding layer, as the pipeline reads it) and its
    frame rate."""
    from vcorr.pipelines.data.decode import VideoReader

    v = VideoReader(path)
    return v.read(range(v.info.num_frames)), v.info.fps


def read_csv(path: str | Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def stored_frames(out: str | Path, row: dict) -> np.ndarray:
    """All stored frames of one index row, decoded: (N, H, W, 3) uint8."""
    from vcorr.pipelines.data.dataset import decode_frames
    from vcorr.pipelines.data.shards import ShardReader

    reader = ShardReader(Path(out) / "shards")
    try:
        data = reader.read_encoded(row["shard"], row["id"], list(range(int(row["num_frames"]))))
        return decode_frames(data).permute(0, 2, 3, 1).numpy()
    finally:
        reader.close()


def run_prepare(out, fmt: str, annotations, root, labels=None, **kw):
    """``vcorr.pipelines.data.prepare.prepare`` with the test defaults (no progress bar)."""
    from vcorr.pipelines.data.prepare import PrepareOptions, prepare

    if isinstance(annotations, (str, Path)):
        annotations = [annotations]
    kw.setdefault("progress", False)
    opt = PrepareOptions(format=fmt, annotations=[str(a) for a in annotations], root=str(root),
                         out=str(out), labels=str(labels) if labels else None, **kw)
    return prepare(opt)


class DataHelpers:
    """Helper functions handed to tests through the ``dh`` fixture."""

    synth_frames = staticmethod(synth_frames)
    psnr = staticmethod(psnr)
    write_frame_folder = staticmethod(write_frame_folder)
    decode_source = staticmethod(decode_source)
    read_csv = staticmethod(read_csv)
    stored_frames = staticmethod(stored_frames)
    run_prepare = staticmethod(run_prepare)


@pytest.fixture(scope="session")
def dh() -> type[DataHelpers]:
    return DataHelpers


def _write_video(path: Path, frames: np.ndarray, fps: float, **kw) -> Path:
    from vcorr.pipelines.data.video_io import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, fps=fps, **kw)
    return path


# --------------------------------------------------------------------------- datasets
@pytest.fixture(scope="session")
def list_dataset(tmp_path_factory) -> dict:
    """A 'list' dataset of H.264 mp4 videos: 3 classes, train and val, varied lengths/rates.

    Returns paths and, per id, the source file, frame count and fps written.
    """
    root = tmp_path_factory.mktemp("list_ds")
    specs = [  # id, class, split, frames, fps
        ("vid_a0", "apple", "train", 24, 24.0),
        ("vid_a1", "apple", "train", 16, 12.0),
        ("vid_b0", "banana", "train", 20, 25.0),
        ("vid_b1", "banana", "val", 12, 12.0),
        ("vid_c0", "cherry", "train", 18, 30.0),
        ("vid_c1", "cherry", "val", 10, 8.0),
        ("vid_short", "cherry", "train", 5, 8.0),
    ]
    info = {}
    lines = ["path,label,split,id"]
    for k, (vid, cls, split, t, fps) in enumerate(specs):
        rel = f"videos/{cls}/{vid}.mp4"
        _write_video(root / rel, synth_frames(t, seed=k), fps)
        info[vid] = {"path": root / rel, "label": cls, "split": split, "frames": t, "fps": fps}
        lines.append(f"{rel},{cls},{split},{vid}")
    (root / "annotations.csv").write_text("\n".join(lines) + "\n")
    # Official order on purpose not alphabetical: label_index must follow this file.
    (root / "classes.txt").write_text("cherry\napple\nbanana\n")
    return {"root": root, "annotations": root / "annotations.csv",
            "labels": root / "classes.txt", "videos": info,
            "classes": ["cherry", "apple", "banana"]}


@pytest.fixture(scope="session")
def toy_dataset(tmp_path_factory) -> dict:
    """``vcorr toy`` output: 16 videos of 3 frames, 4 of them val."""
    from vcorr.pipelines.data.toy import ToyOptions, make_toy

    out = tmp_path_factory.mktemp("toy")
    opt = ToyOptions(videos=16, val_fraction=0.25, seed=3)
    make_toy(out, opt)
    return {"root": out, "options": opt, "annotations": out / "annotations.csv",
            "labels": out / "classes.txt"}


@pytest.fixture(scope="session")
def prepared(tmp_path_factory):
    """``prepared(name, fmt, annotations, root, labels, **options)``: prepare once per session
    for each distinct ``name`` and return the output folder (treat it as read-only)."""
    cache: dict[str, Path] = {}

    def get(name: str, fmt: str, annotations, root, labels=None, **kw) -> Path:
        if name not in cache:
            out = tmp_path_factory.mktemp("prep") / name
            run_prepare(out, fmt, annotations, root, labels, **kw)
            cache[name] = out
        return cache[name]

    return get


@pytest.fixture(scope="session")
def toy_prepared(prepared, toy_dataset) -> Path:
    """The toy dataset prepared as the README does (JPEG, original size)."""
    return prepared("toy_jpeg", "list", toy_dataset["annotations"], toy_dataset["root"],
                    toy_dataset["labels"], short_side=0, videos_per_shard=5)


@pytest.fixture(scope="session")
def list_prepared(prepared, list_dataset) -> Path:
    """The list dataset at its original 64x48, JPEG q90, 3 videos per shard."""
    d = list_dataset
    return prepared("list_jpeg", "list", d["annotations"], d["root"], d["labels"],
                    short_side=0, videos_per_shard=3)


@pytest.fixture(scope="session")
def kinetics_dataset(tmp_path_factory) -> dict:
    """Kinetics official CSVs (train, validate with labels; test without), videos named
    ``<youtube_id>_<start:06d>_<end:06d>.mp4`` in per-class folders (train) and flat (val, test).
    """
    root = tmp_path_factory.mktemp("kinetics")
    videos = root / "videos"
    ann = root / "ann"
    ann.mkdir()
    train = [("air drumming", "--07WQ2iBlw", 1, 11), ("abseiling", "0347ZoDXyP0", 102, 112),
             ("zumba", "a_b-c_d", 0, 10), ("abseiling", "zzA1", 7, 17)]
    val = [("zumba", "val_vid1", 30, 40), ("air drumming", "val_vid2", 5, 15)]
    test = [("tst_1", 3, 13)]
    for k, (label, yid, s, e) in enumerate(train):
        _write_video(videos / "train" / label / f"{yid}_{s:06d}_{e:06d}.mp4",
                     synth_frames(8, seed=100 + k), 8.0)
    for k, (label, yid, s, e) in enumerate(val):
        _write_video(videos / f"{yid}_{s:06d}_{e:06d}.mp4", synth_frames(8, seed=200 + k), 8.0)
    for k, (yid, s, e) in enumerate(test):
        _write_video(videos / f"{yid}_{s:06d}_{e:06d}.mp4", synth_frames(8, seed=300 + k), 8.0)
    with open(ann / "train.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        for label, yid, s, e in train:
            w.writerow([label, yid, s, e, "train"])
    with open(ann / "validate.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
        for label, yid, s, e in val:
            w.writerow([label, yid, s, e, "val"])
    with open(ann / "test.csv", "w", newline="") as f:  # the official test CSV has no labels
        w = csv.writer(f)
        w.writerow(["youtube_id", "time_start", "time_end", "split"])
        for yid, s, e in test:
            w.writerow([yid, s, e, "test"])
    return {"root": videos, "annotations": [ann / "train.csv", ann / "validate.csv",
                                            ann / "test.csv"],
            "train": train, "val": val, "test": test}


SSV2_LABELS = {  # the official file maps class name -> index (as a string), keys unordered
    "Pushing something from right to left": "2",
    "Holding something": "0",
    "Pushing something from left to right": "1",
    "Putting something on a surface": "3",
}


@pytest.fixture(scope="session")
def ssv2_dataset(tmp_path_factory) -> dict:
    """Something-Something v2: train/validation/test JSON, labels JSON, ``<id>.webm`` (VP9)."""
    root = tmp_path_factory.mktemp("ssv2")
    vids = root / "20bn-something-something-v2"
    train = [{"id": "78687", "label": "holding potato next to vicks vaporub bottle",
              "template": "Holding [something]", "placeholders": ["potato"]},
             {"id": "42326", "label": "pushing pen from left to right",
              "template": "Pushing [something] from left to right", "placeholders": ["pen"]},
             {"id": "100904", "label": "putting cup on a table",
              "template": "Putting [something] on a surface", "placeholders": ["cup"]}]
    val = [{"id": "74225", "label": "pushing a box from right to left",
            "template": "Pushing [something] from right to left", "placeholders": ["a box"]}]
    test = [{"id": "1420"}]
    for k, item in enumerate(train + val + test):
        _write_video(vids / f"{item['id']}.webm", synth_frames(8, seed=400 + k), 12.0)
    files = {}
    for name, items in (("train", train), ("validation", val), ("test", test)):
        files[name] = root / f"something-something-v2-{name}.json"
        files[name].write_text(json.dumps(items))
    labels = root / "something-something-v2-labels.json"
    labels.write_text(json.dumps(SSV2_LABELS, indent=1))
    return {"root": vids, "annotations": [files["train"], files["validation"], files["test"]],
            "labels": labels, "train": train, "val": val, "test": test}


def _semicolon_dataset(root: Path, prefix: str, classes: list[str], splits: dict) -> dict:
    frames_root = root / "frames"
    (root / f"{prefix}-labels.csv").write_text("".join(c + "\n" for c in classes))
    files = []
    k = 0
    for split, rows in splits.items():
        path = root / f"{prefix}-{split}.csv"
        lines = []
        for vid, label, t in rows:
            write_frame_folder(frames_root / vid, synth_frames(t, seed=500 + k))
            k += 1
            lines.append(f"{vid};{label}" if label is not None else vid)
        path.write_text("\n".join(lines) + "\n")
        files.append(path)
    return {"root": frames_root, "annotations": files, "labels": root / f"{prefix}-labels.csv"}


# The official jester-v1-labels.csv order (not alphabetical).
JESTER_CLASSES = [
    "Swiping Left", "Swiping Right", "Swiping Down", "Swiping Up", "Pushing Hand Away",
    "Pulling Hand In", "Sliding Two Fingers Left", "Sliding Two Fingers Right",
    "Sliding Two Fingers Down", "Sliding Two Fingers Up", "Pushing Two Fingers Away",
    "Pulling Two Fingers In", "Rolling Hand Forward", "Rolling Hand Backward",
    "Turning Hand Clockwise", "Turning Hand Counterclockwise", "Zooming In With Full Hand",
    "Zooming Out With Full Hand", "Zooming In With Two Fingers", "Zooming Out With Two Fingers",
    "Thumb Up", "Thumb Down", "Shaking Hand", "Stop Sign", "Drumming Fingers", "No gesture",
    "Doing other things"]


@pytest.fixture(scope="session")
def jester_dataset(tmp_path_factory) -> dict:
    """20BN-Jester v1: ``id;label`` CSVs (test: ids only), labels CSV, JPEG frame folders."""
    root = tmp_path_factory.mktemp("jester")
    splits = {"train": [("34870", "Swiping Left", 8), ("56557", "Swiping Right", 8),
                        ("1001", "Thumb Up", 6)],
              "validation": [("9223", "Sliding Two Fingers Left", 7)],
              "test": [("147", None, 6)]}
    d = _semicolon_dataset(root, "jester-v1", JESTER_CLASSES, splits)
    d["splits"] = splits
    return d


SSV1_CLASSES = ["Holding something", "Turning something upside down",
                "Pushing something from left to right", "Pushing something from right to left"]


@pytest.fixture(scope="session")
def ssv1_dataset(tmp_path_factory) -> dict:
    """Something-Something v1: ``id;label`` CSVs, labels CSV, JPEG frame folders."""
    root = tmp_path_factory.mktemp("ssv1")
    splits = {"train": [("1", "Turning something upside down", 6),
                        ("22", "Holding something", 6)],
              "validation": [("333", "Pushing something from right to left", 6)]}
    d = _semicolon_dataset(root, "something-something-v1", SSV1_CLASSES, splits)
    d["splits"] = splits
    return d


UCF_CLASSES = ["ApplyEyeMakeup", "ApplyLipstick", "Archery", "HandstandPushups"]


@pytest.fixture(scope="session")
def ucf101_dataset(tmp_path_factory) -> dict:
    """UCF-101: classInd.txt, trainlist01.txt (with 1-based class numbers), testlist01.txt
    (paths only), videos ``UCF-101/<Class>/v_<Class>_gNN_cNN.avi``."""
    root = tmp_path_factory.mktemp("ucf101")
    vids = root / "UCF-101"
    splits_dir = root / "ucfTrainTestlist"
    splits_dir.mkdir()
    (splits_dir / "classInd.txt").write_text(
        "".join(f"{i} {c}\r\n" for i, c in enumerate(UCF_CLASSES, start=1)))
    train = [("ApplyEyeMakeup", "v_ApplyEyeMakeup_g08_c01"), ("Archery", "v_Archery_g08_c02"),
             ("HandstandPushups", "v_HandStandPushups_g08_c01")]
    test = [("ApplyLipstick", "v_ApplyLipstick_g01_c01"), ("Archery", "v_Archery_g01_c01")]
    for k, (cls, stem) in enumerate(train + test):
        _write_video(vids / cls / f"{stem}.avi", synth_frames(8, seed=600 + k), 25.0)
    (splits_dir / "trainlist01.txt").write_text("".join(
        f"{c}/{s}.avi {UCF_CLASSES.index(c) + 1}\r\n" for c, s in train))
    (splits_dir / "testlist01.txt").write_text("".join(f"{c}/{s}.avi\r\n" for c, s in test))
    return {"root": vids, "annotations": [splits_dir / "trainlist01.txt",
                                          splits_dir / "testlist01.txt"],
            "labels": splits_dir / "classInd.txt", "train": train, "test": test}


DIVING_VOCAB = [["Back", "15som", "05Twis", "FREE"], ["Back", "15som", "15Twis", "FREE"],
                ["Back", "15som", "25Twis", "FREE"], ["Forward", "25som", "NoTwis", "PIKE"]]


@pytest.fixture(scope="session")
def diving48_dataset(tmp_path_factory) -> dict:
    """Diving48: ``Diving48_V2_{train,test}.json`` and ``Diving48_vocab.json``; videos
    ``rgb/<vid_name>.mp4``."""
    root = tmp_path_factory.mktemp("diving48")
    vids = root / "rgb"
    train = [{"vid_name": "-mmq0PT-u8k_00155", "label": 3, "start_frame": 0, "end_frame": 8},
             {"vid_name": "2x1lIrgKxYo_00013", "label": 1, "start_frame": 0, "end_frame": 8}]
    test = [{"vid_name": "_8Vy3dlHg2w_00000", "label": 2, "start_frame": 0, "end_frame": 8}]
    for k, item in enumerate(train + test):
        _write_video(vids / f"{item['vid_name']}.mp4", synth_frames(8, seed=700 + k), 30.0)
    (root / "Diving48_V2_train.json").write_text(json.dumps(train))
    (root / "Diving48_V2_test.json").write_text(json.dumps(test))
    (root / "Diving48_vocab.json").write_text(json.dumps(DIVING_VOCAB))
    return {"root": vids, "annotations": [root / "Diving48_V2_train.json",
                                          root / "Diving48_V2_test.json"],
            "labels": root / "Diving48_vocab.json", "train": train, "test": test}


@pytest.fixture(scope="session")
def ffmpeg_testsrc(tmp_path_factory) -> Path:
    """A clip made by the ffmpeg binary itself (lavfi testsrc2), 64x48, 20 frames at 10 fps."""
    from vcorr.pipelines.data.video_io import ffmpeg_exe

    path = tmp_path_factory.mktemp("lavfi") / "testsrc.mp4"
    subprocess.run([ffmpeg_exe(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=64x48:rate=10:duration=2", "-pix_fmt", "yuv420p",
                    "-c:v", "libx264", "-crf", "10", str(path)], check=True)
    return path




@pytest.fixture(scope="session")
def toy_train_prepared(tmp_path_factory) -> Path:
    """A toy dataset prepared for training tests (``tests/test_train.py``): 32 videos of 3
    frames at 32x32 (24 train, 8 val), all four classes, JPEG, stored at the original size."""
    from vcorr.pipelines.data.toy import ToyOptions, make_toy

    src = tmp_path_factory.mktemp("toy_train_src")
    make_toy(src, ToyOptions(videos=32, val_fraction=0.25, seed=5))
    out = tmp_path_factory.mktemp("toy_train") / "toy_h5"
    run_prepare(out, "list", src / "annotations.csv", src, src / "classes.txt", short_side=0)
    return out


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread for the whole suite: the tests use tiny tensors, for which two
    OpenMP threads on a shared 2-core runner are 10-50x slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
