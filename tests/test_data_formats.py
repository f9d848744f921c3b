"""Every supported annotation format, on small datasets in the dataset's real layout: ids,
labels, label indices in the official class order, splits, and sources found on disk."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import DIVING_VOCAB, JESTER_CLASSES, SSV1_CLASSES, SSV2_LABELS, UCF_CLASSES

from vcorr.pipelines.data.annotations import (normalise_split, parse_annotations, safe_key,
                                              split_from_filename)
from vcorr.pipelines.errors import UserError


def _index(dh, out):
    rows = dh.read_csv(out / "index.csv")
    return {r["id"]: r for r in rows}, rows


def _classes(out):
    return (out / "classes.txt").read_text(encoding="utf-8").splitlines()


def _check_rows(by_id, expected, classes):
    """expected: {id: (label, split)}; label_index must be the label's position in classes."""
    assert set(by_id) == set(expected)
    for id_, (label, split) in expected.items():
        r = by_id[id_]
        assert (r["label"], r["split"]) == (label, split), id_
        assert int(r["label_index"]) == (classes.index(label) if label else -1), id_
        assert int(r["num_frames"]) > 0


# --------------------------------------------------------------------------- list
def test_list_format(list_prepared, list_dataset, dh):
    by_id, rows = _index(dh, list_prepared)
    expected = {k: (v["label"], v["split"]) for k, v in list_dataset["videos"].items()}
    assert _classes(list_prepared) == list_dataset["classes"]  # the --labels order
    _check_rows(by_id, expected, list_dataset["classes"])
    assert int(by_id["vid_a0"]["label_index"]) == 1 and int(by_id["vid_c0"]["label_index"]) == 0
    # shards per split, videos_per_shard=3, annotation order within a split
    train = [r for r in rows if r["split"] == "train"]
    assert [r["id"] for r in train] == ["vid_a0", "vid_a1", "vid_b0", "vid_c0", "vid_short"]
    assert [r["shard"] for r in train] == ["train-00000.h5"] * 3 + ["train-00001.h5"] * 2
    assert {r["shard"] for r in rows if r["split"] == "val"} == {"val-00000.h5"}
    assert sorted(p.name for p in (list_prepared / "shards").iterdir()) == [
        "train-00000.h5", "train-00001.h5", "val-00000.h5"]


def test_list_format_defaults_without_labels_split_or_id(tmp_path, list_dataset, dh):
    """Header ``path,label`` only: id = file stem, split = train, classes sorted by name."""
    root = list_dataset["root"]
    ann = tmp_path / "ann.csv"
    ann.write_text("path,label\nvideos/banana/vid_b0.mp4,banana\n"
                   "videos/apple/vid_a1.mp4,apple\n")
    a = parse_annotations("list", [ann], None, root)
    assert [(s.id, s.label, s.split) for s in a.samples] == [("vid_b0", "banana", "train"),
                                                             ("vid_a1", "apple", "train")]
    assert a.classes == ["apple", "banana"]
    assert all(s.source.endswith(".mp4") and (root / s.source).is_file() for s in a.samples)


# --------------------------------------------------------------------------- kinetics
def test_kinetics_format(prepared, kinetics_dataset, dh):
    d = kinetics_dataset
    out = prepared("kinetics", "kinetics", d["annotations"], d["root"], short_side=0)
    by_id, _ = _index(dh, out)
    classes = _classes(out)
    assert classes == ["abseiling", "air drumming", "zumba"]  # sorted names, Kinetics convention
    expected = {f"{y}_{s:06d}_{e:06d}": (lab, "train") for lab, y, s, e in d["train"]}
    expected.update({f"{y}_{s:06d}_{e:06d}": (lab, "val") for lab, y, s, e in d["val"]})
    expected.update({f"{y}_{s:06d}_{e:06d}": ("", "test") for y, s, e in d["test"]})
    _check_rows(by_id, expected, classes)
    assert (dh.read_csv(out / "failures.csv")) == []


def test_kinetics_split_from_file_name_and_float_times(tmp_path, kinetics_dataset):
    """Some Kinetics releases have no split column (split from the file name) and write
    times as floats; both name the same ``<yid>_<start:06d>_<end:06d>`` file."""
    ann = tmp_path / "kinetics_val.csv"
    ann.write_text("label,youtube_id,time_start,time_end\nzumba,val_vid1,30.0,40.0\n")
    a = parse_annotations("kinetics", [ann], None, kinetics_dataset["root"])
    assert [(s.id, s.label, s.split) for s in a.samples] == [
        ("val_vid1_000030_000040", "zumba", "val")]
    assert a.samples[0].source.endswith("val_vid1_000030_000040.mp4")


def test_kinetics_missing_video_and_bad_time(tmp_path, kinetics_dataset, dh):
    ann = tmp_path / "train.csv"
    ann.write_text("label,youtube_id,time_start,time_end,split\n"
                   "zumba,a_b-c_d,0,10,train\n"
                   "zumba,not_downloaded,0,10,train\n"
                   "zumba,xyz,soon,10,train\n")
    out = tmp_path / "out"
    r = dh.run_prepare(out, "kinetics", ann, kinetics_dataset["root"])
    assert r.videos == 1 and r.failures == 2
    fails = dh.read_csv(out / "failures.csv")
    reasons = {f["id"] or f["path"]: f["reason"] for f in fails}
    assert "missing" in reasons["not_downloaded_000000_000010"]
    assert any("unparsable" in v for v in reasons.values())


# --------------------------------------------------------------------------- ssv2
def test_ssv2_format(prepared, ssv2_dataset, dh):
    d = ssv2_dataset
    out = prepared("ssv2", "ssv2", d["annotations"], d["root"], d["labels"], short_side=0)
    by_id, _ = _index(dh, out)
    classes = _classes(out)
    # official order = the indices in the labels JSON, not the key order of the file
    assert classes == [k for k, _ in sorted(SSV2_LABELS.items(), key=lambda kv: int(kv[1]))]
    expected = {it["id"]: (it["template"].replace("[", "").replace("]", ""), "train")
                for it in d["train"]}
    expected.update({it["id"]: (it["template"].replace("[", "").replace("]", ""), "val")
                     for it in d["val"]})
    expected.update({it["id"]: ("", "test") for it in d["test"]})
    _check_rows(by_id, expected, classes)
    assert int(by_id["42326"]["label_index"]) == 1 and int(by_id["74225"]["label_index"]) == 2
    meta = json.loads((out / "prepare.json").read_text())
    assert meta["dataset"] == "ssv2" and meta["num_classes"] == 4


def test_ssv2_webm_is_vp9_and_decodes(ssv2_dataset, dh):
    import subprocess

    from vcorr.pipelines.data.video_io import ffmpeg_exe

    path = ssv2_dataset["root"] / "78687.webm"
    probe = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)],
                           capture_output=True, text=True)
    assert "vp9" in probe.stderr
    frames, fps = dh.decode_source(path)
    assert frames.shape == (8, 48, 64, 3) and fps == pytest.approx(12.0)


# --------------------------------------------------------------------------- ssv1 / jester
def test_jester_format(prepared, jester_dataset, dh):
    d = jester_dataset
    out = prepared("jester", "jester", d["annotations"], d["root"], d["labels"], short_side=0)
    by_id, _ = _index(dh, out)
    classes = _classes(out)
    assert classes == JESTER_CLASSES  # the labels file's order
    expected = {}
    for split, rows in d["splits"].items():
        for vid, label, _ in rows:
            expected[vid] = (label or "", normalise_split(split))
    _check_rows(by_id, expected, classes)
    assert by_id["9223"]["split"] == "val"
    for vid, _, t in d["splits"]["train"]:
        r = by_id[vid]
        assert int(r["num_frames"]) == t
        assert float(r["source_fps"]) == 12.0  # frame folders: --folder-fps
        assert (int(r["height"]), int(r["width"])) == (48, 64)


def test_ssv1_format(prepared, ssv1_dataset, dh):
    d = ssv1_dataset
    out = prepared("ssv1", "ssv1", d["annotations"], d["root"], d["labels"], short_side=0)
    by_id, _ = _index(dh, out)
    classes = _classes(out)
    assert classes == SSV1_CLASSES
    expected = {vid: (label, normalise_split(split))
                for split, rows in d["splits"].items() for vid, label, _ in rows}
    _check_rows(by_id, expected, classes)
    assert json.loads((out / "prepare.json").read_text())["dataset"] == "ssv1"


def test_frame_folder_jpegs_are_stored_unchanged(prepared, ssv1_dataset, dh):
    """At the original size, a frame folder's JPEG files are stored byte for byte."""
    from vcorr.pipelines.data.shards import ShardReader

    d = ssv1_dataset
    out = prepared("ssv1", "ssv1", d["annotations"], d["root"], d["labels"], short_side=0)
    by_id, _ = _index(dh, out)
    r = by_id["22"]
    data = ShardReader(out / "shards").read_encoded(r["shard"], "22", [0, 3, 5])
    for got, i in zip(data, [1, 4, 6]):
        assert bytes(got) == (d["root"] / "22" / f"{i:05d}.jpg").read_bytes()


def test_frame_folder_resized_and_every(tmp_path, jester_dataset, dh):
    d = jester_dataset
    out = tmp_path / "j"
    dh.run_prepare(out, "jester", d["annotations"][0], d["root"], d["labels"], short_side=24,
                   every=2, folder_fps=15.0)
    by_id, _ = _index(dh, out)
    r = by_id["34870"]  # 8 frames -> 0, 2, 4, 6
    assert (int(r["num_frames"]), int(r["height"]), int(r["width"])) == (4, 24, 32)
    assert (float(r["source_fps"]), float(r["fps"])) == (15.0, 7.5)
    src = np.stack([dh.synth_frames(8, seed=500)[i] for i in (0, 2, 4, 6)])
    import torch
    from torchvision.transforms.v2 import functional as TF
    small = TF.resize(torch.from_numpy(src).permute(0, 3, 1, 2), [24, 32], antialias=True)
    assert dh.psnr(dh.stored_frames(out, r), small.permute(0, 2, 3, 1).numpy()) > 28


# --------------------------------------------------------------------------- ucf101
def test_ucf101_format(prepared, ucf101_dataset, dh):
    d = ucf101_dataset
    out = prepared("ucf101", "ucf101", d["annotations"], d["root"], d["labels"], short_side=0)
    by_id, _ = _index(dh, out)
    classes = _classes(out)
    assert classes == UCF_CLASSES  # classInd.txt order (1-based indices -> 0-based)
    expected = {s: (c, "train") for c, s in d["train"]}
    expected.update({s: (c, "test") for c, s in d["test"]})  # testlist: class from the folder
    _check_rows(by_id, expected, classes)
    assert int(by_id["v_HandStandPushups_g08_c01"]["label_index"]) == 3
    assert float(by_id["v_Archery_g01_c01"]["source_fps"]) == pytest.approx(25.0)


# --------------------------------------------------------------------------- diving48
def test_diving48_format(prepared, diving48_dataset, dh):
    d = diving48_dataset
    out = prepared("diving48", "diving48", d["annotations"], d["root"], d["labels"],
                   short_side=0)
    by_id, _ = _index(dh, out)
    classes = _classes(out)
    assert classes == [" ".join(v) for v in DIVING_VOCAB]
    expected = {it["vid_name"]: (" ".join(DIVING_VOCAB[it["label"]]), "train")
                for it in d["train"]}
    expected.update({it["vid_name"]: (" ".join(DIVING_VOCAB[it["label"]]), "test")
                     for it in d["test"]})
    _check_rows(by_id, expected, classes)
    # label_index is the official class number of the JSON
    for it in d["train"] + d["test"]:
        assert int(by_id[it["vid_name"]]["label_index"]) == it["label"]


def test_diving48_without_vocab_keeps_official_class_numbers(diving48_dataset):
    """Without the vocab file the label index must still be the official class number."""
    d = diving48_dataset
    a = parse_annotations("diving48", d["annotations"], None, d["root"])
    for s, it in zip(a.samples, d["train"] + d["test"]):
        assert a.classes.index(s.label) == it["label"], (s, a.classes)


# --------------------------------------------------------------------------- helpers
@pytest.mark.parametrize("name,split", [("jester-v1-validation.csv", "val"),
                                        ("something-something-v2-train.json", "train"),
                                        ("Diving48_V2_test.json", "test"),
                                        ("kinetics_val.csv", "val")])
def test_split_from_filename(tmp_path, name, split):
    assert split_from_filename(tmp_path / name) == split


def test_split_from_filename_unknown_is_user_error(tmp_path):
    with pytest.raises(UserError, match="labels_2020.csv"):
        split_from_filename(tmp_path / "labels_2020.csv")


@pytest.mark.parametrize("raw,norm", [("validate", "val"), ("Validation", "val"),
                                      ("training", "train"), (" test ", "test")])
def test_normalise_split(raw, norm):
    assert normalise_split(raw) == norm


def test_safe_key_is_injective_and_flat():
    ids = ["a/b", "a%2Fb", "a b", "a_b", "ü"]
    keys = [safe_key(i) for i in ids]
    assert len(set(keys)) == len(ids)
    assert all("/" not in k for k in keys)


def test_ids_with_slashes_prepare(tmp_path, list_dataset, dh):
    """An id holding '/' (HDF5 would nest it) round-trips through a shard."""
    ann = tmp_path / "a.csv"
    ann.write_text("path,label,id\nvideos/apple/vid_a1.mp4,apple,clips/one\n"
                   "videos/banana/vid_b1.mp4,banana,clips%2Fone\n")
    out = tmp_path / "o"
    r = dh.run_prepare(out, "list", ann, list_dataset["root"], short_side=0)
    assert r.videos == 2 and r.failures == 0
    by_id, _ = _index(dh, out)
    a = dh.stored_frames(out, by_id["clips/one"])
    b = dh.stored_frames(out, by_id["clips%2Fone"])
    assert a.shape[0] == 16 and b.shape[0] == 12
