"""The layouts of other toolkits (issue 26, "your data as it already is"): class folders,
mmaction2's video and rawframe lists, PySlowFast/PyTorchVideo CSVs and HMDB-51's split files.

Each format is prepared from small files in its real layout and compared with the reference:
the same videos listed in a ``list`` CSV (ids, labels, splits given explicitly) and prepared
the same way; the two indexes must agree row for row. The traps (0- versus 1-based labels,
several labels on a line, a frame folder with fewer frames than listed, a class missing from
--labels) and the seeded split of class folders are checked on the parsed annotations.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import _write_video, synth_frames, write_frame_folder

from vcorr.cli.main import cli
from vcorr.pipelines.data.annotations import FormatOptions, parse_annotations
from vcorr.pipelines.errors import UserError

PREP = {"short_side": 0, "videos_per_shard": 100}


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def toy(toy_dataset, dh) -> dict:
    """The toy dataset's 16 videos: id -> (file, class, split), and its class order."""
    root = toy_dataset["root"]
    rows = dh.read_csv(toy_dataset["annotations"])
    classes = toy_dataset["labels"].read_text().split()
    return {"videos": {r["id"]: (root / r["path"], r["label"], r["split"]) for r in rows},
            "classes": classes}


def _write_list(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """A 'list' CSV: rows of (path under root, label, split, id)."""
    path.write_text("path,label,split,id\n" + "".join(",".join(r) + "\n" for r in rows))
    return path


def _index(dh, out: Path) -> dict[str, dict]:
    """index.csv by id, without the shard column (shard names follow the annotation order)."""
    return {r["id"]: {k: v for k, v in r.items() if k != "shard"}
            for r in dh.read_csv(out / "index.csv")}


def _assert_same_as_list(dh, out: Path, ref: Path) -> dict[str, dict]:
    """``out`` holds exactly the videos of the reference ``list`` preparation ``ref``."""
    got, want = _index(dh, out), _index(dh, ref)
    assert want and got == want
    assert (out / "classes.txt").read_text() == (ref / "classes.txt").read_text()
    return got


def _reasons(dh, out: Path) -> dict[str, str]:
    return {f["id"] or f["path"]: f["reason"] for f in dh.read_csv(out / "failures.csv")}


def _parsed(a) -> list[tuple[str, str, str]]:
    return [(s.id, s.label, s.split) for s in a.samples]


# --------------------------------------------------------------------------- folders
def test_folders_without_split_level_matches_list(tmp_path, toy, dh):
    """Class folders, a seeded val split, and a frame folder inside a class folder."""
    root = tmp_path / "clips"
    for vid, (src, cls, _) in toy["videos"].items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / cls / f"{vid}.mp4")
    write_frame_folder(root / "up" / "frames_a", synth_frames(5, 32, 32, seed=9))
    (root / "up" / "notes.txt").write_text("not a video")
    out = tmp_path / "out"
    dh.run_prepare(out, "folders", [], root, **PREP)
    # Reference: the documented rule recomputed here: per class, by sha256(seed, path),
    # round(n * 0.2) videos go to val.
    rels = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*")
                  if p.suffix == ".mp4" or p.is_dir())
    rows = []
    for cls in sorted({r.split("/")[0] for r in rels}):
        mine = [r for r in rels if r.startswith(cls + "/")]
        ranked = sorted(mine, key=lambda r: hashlib.sha256(f"0\0{r}".encode()).digest())
        val = set(ranked[:min(int(len(mine) * 0.2 + 0.5), len(mine) - 1)])
        rows += [(r, cls, "val" if r in val else "train", r.removesuffix(".mp4"))
                 for r in mine]
    classes = tmp_path / "sorted.txt"
    classes.write_text("down\nleft\nright\nup\n")
    ref = tmp_path / "ref"
    dh.run_prepare(ref, "list", _write_list(tmp_path / "ref.csv", rows), root, classes, **PREP)
    got = _assert_same_as_list(dh, out, ref)
    assert "up/frames_a" in got and int(got["up/frames_a"]["num_frames"]) == 5
    assert {r["split"] for r in got.values()} == {"train", "val"}
    meta = json.loads((out / "prepare.json").read_text())["data_options"]
    assert (meta["val_fraction"], meta["seed"]) == (0.2, 0)


def test_folders_with_split_level_matches_list(tmp_path, toy, dh):
    """``train/``, ``validation/`` (-> val) and ``test/`` folders; a test video outside any
    class folder is an unlabelled test video, a train video outside one a failure row."""
    root = tmp_path / "hf"
    rows = []
    for vid, (src, cls, split) in toy["videos"].items():
        rel = f"{'train' if split == 'train' else 'validation'}/{cls}/{vid}.mp4"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / rel)
        rows.append((rel, cls, split, rel.removesuffix(".mp4")))
    first = next(iter(toy["videos"].values()))[0]
    (root / "test").mkdir()
    shutil.copy(first, root / "test" / "unlabelled.mp4")
    rows.append(("test/unlabelled.mp4", "", "test", "test/unlabelled"))
    shutil.copy(first, root / "train" / "loose.mp4")
    labels = tmp_path / "classes.txt"  # the toy's order, not alphabetical: --labels decides
    labels.write_text("\n".join(toy["classes"]) + "\n")
    out, ref = tmp_path / "out", tmp_path / "ref"
    dh.run_prepare(out, "folders", [], root, labels, **PREP)
    dh.run_prepare(ref, "list", _write_list(tmp_path / "ref.csv", rows), root, labels, **PREP)
    got = _assert_same_as_list(dh, out, ref)
    assert got["test/unlabelled"]["label"] == "" and got["test/unlabelled"]["split"] == "test"
    assert _reasons(dh, out)["train/loose"].startswith("missing label: not in a class folder")
    with pytest.raises(UserError, match="split folders"):
        parse_annotations("folders", [], None, root, FormatOptions(val_fraction=0.3))


def test_folders_split_is_seeded_stratified_and_independent_of_file_order(tmp_path):
    """The same files created in opposite orders in two folders give the same split, run
    after run; each class sends round(n * fraction) videos to val (at least one to train)."""
    sizes = {"aa": 10, "bb": 7, "cc": 3, "dd": 1}
    names = [f"{c}/clip_{i:02d}.mp4" for c, n in sizes.items() for i in range(n)]
    for root, order in ((tmp_path / "one", names), (tmp_path / "two", names[::-1])):
        for rel in order:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(b"")
    one = _parsed(parse_annotations("folders", [], None, tmp_path / "one"))
    assert one == _parsed(parse_annotations("folders", [], None, tmp_path / "two"))
    assert one == _parsed(parse_annotations("folders", [], None, tmp_path / "one"))
    val = {c: sum(1 for i, lab, s in one if lab == c and s == "val") for c in sizes}
    assert val == {"aa": 2, "bb": 1, "cc": 1, "dd": 0}
    half = _parsed(parse_annotations("folders", [], None, tmp_path / "two",
                                     FormatOptions(val_fraction=0.5, seed=3)))
    assert {c: sum(1 for _, lab, s in half if lab == c and s == "val") for c in sizes} == {
        "aa": 5, "bb": 4, "cc": 2, "dd": 0}
    other_seed = _parsed(parse_annotations("folders", [], None, tmp_path / "one",
                                           FormatOptions(seed=1)))
    assert sorted(other_seed) != sorted(one)
    with pytest.raises(UserError, match="--val-fraction must be"):
        parse_annotations("folders", [], None, tmp_path / "one", FormatOptions(val_fraction=1))


def test_folders_rerun_keeps_the_split_in_the_index(tmp_path, toy, dh):
    """A video added to a class after a first run would move another one out of val in a
    fresh draw; a rerun into the same OUT keeps every split already in its index."""
    root = tmp_path / "clips"
    ups = sorted(v for v, (_, cls, _) in toy["videos"].items() if cls == "up")[:4]
    (root / "up").mkdir(parents=True)
    for vid in ups:
        shutil.copy(toy["videos"][vid][0], root / "up" / f"{vid}.mp4")
    out = tmp_path / "out"
    dh.run_prepare(out, "folders", [], root, **PREP)
    before = {i: r["split"] for i, r in _index(dh, out).items()}
    assert sorted(before.values()) == ["train", "train", "train", "val"]
    old_val = next(i for i, s in before.items() if s == "val")
    for k in range(200):  # a name that ranks first: a fresh draw would make it the val video
        new = f"up/new_{k}"
        shutil.copy(toy["videos"][ups[0]][0], root / f"{new}.mp4")
        fresh = {i: s for i, _, s in _parsed(parse_annotations("folders", [], None, root))}
        if fresh[old_val] == "train":
            break
        (root / f"{new}.mp4").unlink()
    assert fresh[old_val] == "train"
    r = dh.run_prepare(out, "folders", [], root, **PREP)
    after = {i: r["split"] for i, r in _index(dh, out).items()}
    assert {i: after[i] for i in before} == before and new in after
    assert r.videos == 5


def test_folders_bad_layouts_are_one_error(tmp_path):
    (tmp_path / "mixed" / "train" / "a").mkdir(parents=True)
    (tmp_path / "mixed" / "cats").mkdir()
    with pytest.raises(UserError, match=r"split folders \(train\) beside other folders \(cats\)"):
        parse_annotations("folders", [], None, tmp_path / "mixed")
    write_frame_folder(tmp_path / "flat" / "clip1", synth_frames(2, 16, 16))
    with pytest.raises(UserError, match="clip1: a folder of images where a class folder"):
        parse_annotations("folders", [], None, tmp_path / "flat")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(UserError, match="no videos in class folders"):
        parse_annotations("folders", [], None, tmp_path / "empty")


def test_folders_missing_class_in_labels_is_a_failure_row(tmp_path):
    for rel in ("run/a.mp4", "jump/b.mp4", "swim/c.mp4"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    labels = tmp_path / "classes.txt"
    labels.write_text("swim\nrun\n")
    a = parse_annotations("folders", [], labels, tmp_path)
    assert a.classes == ["swim", "run"]
    assert [(f.id, f.reason) for f in a.failures] == [("jump/b", "unknown label: 'jump'")]


# --------------------------------------------------------------------------- mmaction
@pytest.fixture(scope="module")
def mm(tmp_path_factory, toy) -> dict:
    """mmaction2 video lists of the toy videos (labels = line numbers of classes.txt, which is
    not in alphabetical order) and the equivalent list CSV."""
    d = tmp_path_factory.mktemp("mmaction")
    root = d / "videos"
    classes = toy["classes"]
    (d / "classes.txt").write_text("\n".join(classes) + "\n")
    lists = {"train": [], "val": []}
    rows = []
    for vid, (src, cls, split) in toy["videos"].items():
        rel = f"{cls}/{vid}.mp4"
        (root / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / rel)
        lists[split].append((rel, classes.index(cls)))
        rows.append((rel, cls, split, vid))
    files = []
    for split, items in lists.items():
        for base in (0, 1):
            f = d / f"toy_{split}_list_videos{'_1based' if base else ''}.txt"
            f.write_text("".join(f"{rel} {k + base}\n" for rel, k in items))
            if not base:
                files.append(f)
    return {"root": root, "files": files, "labels": d / "classes.txt", "dir": d,
            "csv": _write_list(d / "ref.csv", rows), "classes": classes}


def test_mmaction_matches_list(tmp_path, mm, dh):
    out, ref = tmp_path / "out", tmp_path / "ref"
    dh.run_prepare(out, "mmaction", mm["files"], mm["root"], mm["labels"], **PREP)
    dh.run_prepare(ref, "list", mm["csv"], mm["root"], mm["labels"], **PREP)
    _assert_same_as_list(dh, out, ref)
    assert json.loads((out / "prepare.json").read_text())["dataset"] == "mmaction"


def test_mmaction_one_based_labels(tmp_path, mm):
    """The 0/1-based trap: labels 1..N with a class file of N names are refused without
    --label-base; --label-base 1 reads them right; --label-base 0 makes label N a failure
    row naming the line, with the hint."""
    one = [mm["dir"] / f.name.replace(".txt", "_1based.txt") for f in mm["files"]]
    zero = parse_annotations("mmaction", mm["files"], mm["labels"], mm["root"])
    with pytest.raises(UserError, match=r"_1based.txt: labels run 1\.\.4 with no 0.*"
                                        "--label-base 1"):
        parse_annotations("mmaction", one, mm["labels"], mm["root"])
    based = parse_annotations("mmaction", one, mm["labels"], mm["root"],
                              FormatOptions(label_base=1))
    assert _parsed(based) == _parsed(zero) and based.classes == zero.classes == mm["classes"]
    forced = parse_annotations("mmaction", one, mm["labels"], mm["root"],
                               FormatOptions(label_base=0))
    last = [f for f in forced.failures if f.reason.startswith("unknown label: 4 at ")]
    assert last and len(last) == sum(1 for s in zero.samples if s.label == "right")
    assert all(f.reason.endswith("outside 0..3 of classes.txt (1-based labels? use "
                                 "--label-base 1)") for f in last)
    assert "_1based.txt:" in last[0].reason


def test_integer_labels_without_class_names(tmp_path, mm):
    with pytest.raises(UserError, match="need --labels .* or --label-base"):
        parse_annotations("mmaction", mm["files"], None, mm["root"])
    a = parse_annotations("mmaction", mm["files"], None, mm["root"],
                          FormatOptions(label_base=0))
    ref = parse_annotations("mmaction", mm["files"], mm["labels"], mm["root"])
    assert a.classes == ["0", "1", "2", "3"]
    assert [(s.id, a.classes.index(s.label)) for s in a.samples] == [
        (s.id, ref.classes.index(s.label)) for s in ref.samples]


def test_mmaction_row_problems(tmp_path, mm):
    f = tmp_path / "x_train_list.txt"
    f.write_text("up/a.mp4 0\nup/b.mp4 7\nup/c.mp4 zero\nup/a.mp4 1\n")
    a = parse_annotations("mmaction", [f], mm["labels"], mm["root"])
    reasons = [r.reason for r in a.failures]
    # label 7 with 0 also present: out of range, no 1-based hint
    assert reasons[0] == f"unknown label: 7 at {f}:2 outside 0..3 of classes.txt"
    assert reasons[1].startswith("unparsable row: ") and reasons[2].startswith("duplicate id")
    for bad in ("up/a.mp4 3 7\n", "up/a.mp4 3,7\n"):
        f.write_text("up/z.mp4 0\n" + bad)
        with pytest.raises(UserError, match=f"{f.name}:2: several labels on one line"):
            parse_annotations("mmaction", [f], mm["labels"], mm["root"])
    f.write_text("path,label\nup/a.mp4,0\n")
    with pytest.raises(UserError, match="not an mmaction2 video list"):
        parse_annotations("mmaction", [f], mm["labels"], mm["root"])


# --------------------------------------------------------------------------- rawframes
def _rawframes(folder: Path, t: int, seed: int, flow: bool = False) -> None:
    write_frame_folder(folder, synth_frames(t, 32, 32, seed=seed))
    for p in sorted(folder.iterdir()):
        p.rename(folder / f"img_{p.name}")
        if flow:
            shutil.copy(folder / f"img_{p.name}", folder / f"flow_x_{p.name}")


def test_mmaction_rawframes_matches_list(tmp_path, dh):
    root = tmp_path / "rawframes"
    _rawframes(root / "up" / "clip_a", 6, 1)
    _rawframes(root / "down" / "clip_b", 5, 2)
    _rawframes(root / "down" / "clip_short", 5, 3)
    _rawframes(root / "up" / "clip_flow", 4, 4, flow=True)
    _rawframes(root / "up" / "clip_offset", 4, 5)
    labels = tmp_path / "classes.txt"
    labels.write_text("up\ndown\n")
    train = tmp_path / "toy_train_list_rawframes.txt"
    train.write_text("up/clip_a 6 0\n"
                     "down/clip_b 0 5 1\n"          # the offset variant, offset 0
                     "down/clip_short 8 1\n"        # 5 frames on disk
                     "up/clip_flow 4 0\n"           # flow images beside the RGB ones
                     "up/clip_offset 2 2 0\n")      # offset 2: part of a folder
    out, ref = tmp_path / "out", tmp_path / "ref"
    dh.run_prepare(out, "mmaction-rawframes", train, root, labels, **PREP)
    rows = [("up/clip_a", "up", "train", "clip_a"), ("down/clip_b", "down", "train", "clip_b")]
    dh.run_prepare(ref, "list", _write_list(tmp_path / "ref.csv", rows), root, labels, **PREP)
    got = _assert_same_as_list(dh, out, ref)
    assert int(got["clip_a"]["num_frames"]) == 6 and float(got["clip_a"]["source_fps"]) == 12.0
    reasons = _reasons(dh, out)
    assert reasons["clip_short"] == (f"missing file: the folder holds 5 of the 8 frames listed "
                                     f"at {train}:3")
    assert reasons["clip_flow"].startswith("unsupported frame folder: images of 2 kinds "
                                           "(flow_x_*, img_*)")
    assert reasons["clip_offset"].startswith(f"unsupported row: frame offset 2 at {train}:5")
    (tmp_path / "multi_train.txt").write_text("up/clip_a 6 0 1 1\n")
    with pytest.raises(UserError, match="several labels on one line"):
        parse_annotations("mmaction-rawframes", [tmp_path / "multi_train.txt"], labels, root)


# --------------------------------------------------------------------------- slowfast
def test_slowfast_matches_list(tmp_path, toy, dh):
    """train.csv space-separated with relative paths, val.csv comma-separated with absolute
    paths (a fork's style), test.csv without labels."""
    root = tmp_path / "data"
    (root / "videos").mkdir(parents=True)
    classes = toy["classes"]
    lines = {"train": [], "val": []}
    rows = []
    for vid, (src, cls, split) in toy["videos"].items():
        shutil.copy(src, root / "videos" / f"{vid}.mp4")
        k = classes.index(cls)
        lines[split].append(f"videos/{vid}.mp4 {k}" if split == "train"
                            else f"{root / 'videos' / vid}.mp4,{k}")
        rows.append((f"videos/{vid}.mp4", cls, split, vid))
    shutil.copy(src, root / "videos" / "unseen.mp4")
    rows.append(("videos/unseen.mp4", "", "test", "unseen"))
    ann = tmp_path / "csv"
    ann.mkdir()
    for split, items in lines.items():
        (ann / f"{split}.csv").write_text("\n".join(items) + "\n")
    (ann / "test.csv").write_text("videos/unseen.mp4\n")
    labels = tmp_path / "classes.txt"
    labels.write_text("\n".join(classes) + "\n")
    files = [ann / "train.csv", ann / "val.csv", ann / "test.csv"]
    out, ref = tmp_path / "out", tmp_path / "ref"
    dh.run_prepare(out, "slowfast", files, root, labels, **PREP)
    dh.run_prepare(ref, "list", _write_list(tmp_path / "ref.csv", rows), root, labels, **PREP)
    got = _assert_same_as_list(dh, out, ref)
    assert {r["split"] for r in got.values()} == {"train", "val", "test"}
    (ann / "val.csv").write_text(f"{root}/videos/a.mp4,1,2\n")
    with pytest.raises(UserError, match=r"val.csv:1: several labels on one line"):
        parse_annotations("slowfast", [ann / "val.csv"], labels, root)


# --------------------------------------------------------------------------- hmdb51
@pytest.fixture(scope="module")
def hmdb(tmp_path_factory) -> dict:
    """HMDB-51: ``hmdb51_org/<class>/<video>.avi`` and the split files of splits 1 and 2."""
    d = tmp_path_factory.mktemp("hmdb")
    root = d / "hmdb51_org"
    videos = {"brush_hair": ["April_09_brush_hair_u_nm_np1_ba_goo_0", "Brushing_hair_1",
                             "brush_unused"],
              "cartwheel": ["(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0", "Cartwheel_2"]}
    k = 0
    for cls, names in videos.items():
        for name in names:
            _write_video(root / cls / f"{name}.avi", synth_frames(4, 32, 32, seed=800 + k), 30.0)
            k += 1
    splits = d / "testTrainMulti_7030_splits"
    splits.mkdir()
    flags = {1: {"brush_hair": "120", "cartwheel": "12"},
             2: {"brush_hair": "210", "cartwheel": "21"}}
    for n, per_class in flags.items():
        for cls, fl in per_class.items():
            (splits / f"{cls}_test_split{n}.txt").write_text(
                "".join(f"{name}.avi {f} \n" for name, f in zip(videos[cls], fl)))
    return {"root": root, "splits": splits, "videos": videos, "flags": flags}


def test_hmdb51_matches_list(tmp_path, hmdb, dh):
    out, ref = tmp_path / "out", tmp_path / "ref"
    dh.run_prepare(out, "hmdb51", [hmdb["splits"]], hmdb["root"], split_index=1, **PREP)
    rows = [(f"{cls}/{name}.avi", cls, {"1": "train", "2": "test"}[f], name)
            for cls, fl in hmdb["flags"][1].items()
            for name, f in zip(hmdb["videos"][cls], fl) if f != "0"]
    labels = tmp_path / "classes.txt"
    labels.write_text("brush_hair\ncartwheel\n")
    dh.run_prepare(ref, "list", _write_list(tmp_path / "ref.csv", rows), hmdb["root"], labels,
                   **PREP)
    got = _assert_same_as_list(dh, out, ref)
    assert "brush_unused" not in got and len(got) == 4


def test_hmdb51_split_choice(hmdb):
    s = hmdb["splits"]
    with pytest.raises(UserError, match="splits 1, 2: .*--split-index"):
        parse_annotations("hmdb51", [s], None, hmdb["root"])
    with pytest.raises(UserError, match="splits 1, 2"):
        parse_annotations("hmdb51", [s / "brush_hair_test_split1.txt",
                                     s / "cartwheel_test_split2.txt"], None, hmdb["root"])
    with pytest.raises(UserError, match="a file of split 1, but --split-index 2"):
        parse_annotations("hmdb51", [s / "brush_hair_test_split1.txt"], None, hmdb["root"],
                          FormatOptions(split_index=2))
    two = parse_annotations("hmdb51", sorted(s.glob("*_split2.txt")), None, hmdb["root"])
    assert _parsed(two) == _parsed(parse_annotations("hmdb51", [s], None, hmdb["root"],
                                                     FormatOptions(split_index=2)))
    assert {i: sp for i, _, sp in _parsed(two)} == {
        "April_09_brush_hair_u_nm_np1_ba_goo_0": "test", "Brushing_hair_1": "train",
        "(Rad)Schlag_die_Bank!_cartwheel_f_cm_np1_le_med_0": "test", "Cartwheel_2": "train"}
    assert all(os.path.isfile(x.source) for x in two.samples)


# --------------------------------------------------------------------------- CLI
def test_cli_annotations_optional_for_folders_only(tmp_path, toy):
    root = tmp_path / "clips"
    for vid, (src, cls, _) in list(toy["videos"].items())[:6]:
        (root / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / cls / f"{vid}.mp4")

    def run(*args):
        return CliRunner().invoke(cli, ["prepare", *map(str, args), "--no-progress"],
                                  prog_name="vcorr")

    r = run("--format", "folders", "--root", root, "--out", tmp_path / "o", "--short-side",
            "0", "--val-fraction", "0.5", "--seed", "7")
    assert r.exit_code == 0, r.output
    assert "prepared 6 videos" in r.stdout
    for args, says in ((["--format", "kinetics"], "--format kinetics needs --annotations"),
                       (["--format", "list", "--annotations", root / "x.csv", "--seed", "1"],
                        "--seed is an option of --format folders only"),
                       (["--format", "folders", "--annotations", root / "x.csv"],
                        "takes no --annotations")):
        r = run(*args, "--root", root, "--out", tmp_path / "bad")
        assert r.exit_code == 2 and r.stderr.startswith("error: ") and says in r.stderr, \
            r.output
        assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
