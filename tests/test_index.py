"""The index as columns (issue 24): :class:`VideoTable` gives the same rows as the former
list of dicts (the reference parser below), whole columns for the summary and the preflight
checks, and a forked worker reading every row of a large index keeps its memory flat, where
the list of dicts makes it grow."""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from collections import Counter
from pathlib import Path

import pytest

from vcorr.pipelines.data import DenseSampler, VideoClipDataset
from vcorr.pipelines.data.index import VideoTable, load_index
from vcorr.pipelines.data.inspect import class_checks, read_classes, read_index, summarize
from vcorr.pipelines.data.shards import INDEX_COLUMNS
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.train.preflight import data_fingerprint
from vcorr.pipelines.bench.index import dict_rows  # the pre-issue-24 parser, the reference


def same_rows(a: list[dict], b: list[dict]) -> bool:
    """Equal keys (in order), values and Python types."""
    return len(a) == len(b) and all(
        list(x) == list(y) and x == y and all(type(x[k]) is type(y[k]) for k in x)
        for x, y in zip(a, b))


def write_index(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.csv").write_text(text, encoding="utf-8", newline="")
    return folder


HEADER = ",".join(INDEX_COLUMNS)


# --------------------------------------------------------------------------- same rows
@pytest.mark.parametrize("name", ["list_prepared", "toy_prepared"])
def test_table_gives_the_former_rows(name: str, request) -> None:
    """Every row, by index, by negative index and by iteration, equals the reference's, with
    the same key order and Python types."""
    folder = request.getfixturevalue(name)
    want = dict_rows(folder)
    table = read_index(folder)
    assert isinstance(table, VideoTable) and len(table) == len(want) > 0
    assert same_rows([table[i] for i in range(len(table))], want)
    assert same_rows(list(table), want) and same_rows(table.to_rows(), want)
    assert table[-1] == want[-1]
    with pytest.raises(IndexError):
        table[len(want)]
    assert same_rows(VideoTable.from_rows(want).to_rows(), want)
    assert same_rows(pickle.loads(pickle.dumps(table)).to_rows(), want)


def test_older_folders_quoted_fields_and_crlf(tmp_path: Path) -> None:
    """Without the optional columns, or with empty cells, ``duration`` and ``variable_rate``
    are None; quoted fields (commas, quotes in ids), CRLF line ends and extra columns read as
    the csv module reads them."""
    old = ",".join(c for c in INDEX_COLUMNS if c not in ("duration", "variable_rate"))
    folder = write_index(tmp_path / "old", old + "\na,train,x,0,train-00000.h5,8,12.5,25.0,48,64\n")
    (row,) = read_index(folder)
    assert row["duration"] is None and row["variable_rate"] is None
    assert same_rows([row], dict_rows(folder)) and list(row)[-2:] == ["duration",
                                                                      "variable_rate"]
    text = (HEADER + ",note\r\n"
            '"id, with comma",val,"say ""hi""",1,val-00000.h5,3,30.0,29.97003,240,320,,1,n1\r\n'
            'b,train,x,0,train-00000.h5,300,30.0,30.0,256,340,10.0,,\r\n')
    folder = write_index(tmp_path / "quoted", text)
    rows = read_index(folder).to_rows()
    assert same_rows(rows, dict_rows(folder))
    assert rows[0]["id"] == "id, with comma" and rows[0]["label"] == 'say "hi"'
    assert rows[0]["duration"] is None and rows[0]["variable_rate"] is True
    assert rows[1]["variable_rate"] is None and rows[0]["note"] == "n1"
    assert len(read_index(write_index(tmp_path / "empty", HEADER + "\n"))) == 0


@pytest.mark.parametrize("text, words", [
    ("id,split,label\na,train,x\n", "missing columns label_index"),
    (HEADER + "\na,train,x,0,s.h5,8,30.0\n", "fields"),
    (HEADER + "\na,train,x,zero,s.h5,8,30.0,30.0,48,64,1.0,0\n", "invalid literal"),
])
def test_malformed_index_is_a_user_error(tmp_path: Path, text: str, words: str) -> None:
    with pytest.raises(UserError, match=words):
        read_index(write_index(tmp_path / "bad", text))


def test_columns_views_and_counts(list_prepared: Path) -> None:
    """Columns, codes, masks, counts and views agree with the reference rows."""
    want = dict_rows(list_prepared)
    table = read_index(list_prepared)
    assert table.column("num_frames").tolist() == [r["num_frames"] for r in want]
    assert table.column("id") == [r["id"] for r in want]
    assert table.counts("split") == dict(Counter(r["split"] for r in want))
    train = table.select(table.mask("split", "train"))
    assert same_rows(train.to_rows(), [r for r in want if r["split"] == "train"])
    picked = train.select([2, 0])
    assert picked.to_rows() == [train[2], train[0]]
    assert same_rows(table[1:4].to_rows(), want[1:4])
    assert not table.mask("split", "no such split").any()
    assert train.nbytes < table.nbytes + 64
    with pytest.raises(KeyError):
        table.column("nope")


def test_one_table_per_unchanged_file(toy_prepared: Path, tmp_path: Path) -> None:
    """Loads of an unchanged file share the live table; a rewrite, even of the same size at
    once, is read again."""
    folder = tmp_path / "copy"
    shutil.copytree(toy_prepared, folder)
    first = load_index(folder)
    assert load_index(folder) is first
    ds = VideoClipDataset(folder, "train", DenseSampler(2))
    assert ds.videos._c is first._c            # the dataset's rows are a view of it
    text = (folder / "index.csv").read_text()
    swapped = text.replace(",train,", ",trian,", 1)
    assert len(swapped) == len(text)
    (folder / "index.csv").write_text(swapped)
    again = load_index(folder)
    assert again is not first and again.counts("split").get("trian") == 1


def test_columns_cache_beside_a_large_index(toy_prepared: Path, tmp_path: Path,
                                            monkeypatch) -> None:
    """A large index's columns are cached beside it and read back while index.csv is
    unchanged; a changed index.csv, a damaged cache or a read-only folder fall back to the
    parse (here "large" is lowered to every size)."""
    from vcorr.pipelines.data import index as ix

    folder = tmp_path / "copy"
    shutil.copytree(toy_prepared, folder)
    want = dict_rows(folder)
    monkeypatch.setattr(ix, "CACHE_MIN_BYTES", 0)
    cache = folder / ix.CACHE_NAME

    def fresh_load() -> VideoTable:   # as a new process would: no table alive
        monkeypatch.setattr(ix, "_LOADED", type(ix._LOADED)())
        return load_index(folder)

    assert same_rows(fresh_load().to_rows(), want) and cache.is_file()
    parse = ix.parse_index
    monkeypatch.setattr(ix, "parse_index", lambda path: pytest.fail("parsed, not cached"))
    assert same_rows(fresh_load().to_rows(), want)
    monkeypatch.setattr(ix, "parse_index", parse)
    (folder / "index.csv").write_text((folder / "index.csv").read_text().replace(
        ",train,", ",trian,", 1))
    assert fresh_load().counts("split").get("trian") == 1   # the cache of the old content
    assert same_rows(fresh_load().to_rows(), dict_rows(folder))   # is replaced
    cache.write_bytes(b"not a cache")
    assert same_rows(fresh_load().to_rows(), dict_rows(folder))
    cache.unlink()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):   # root writes anyway: nothing to check
            return
        assert same_rows(fresh_load().to_rows(), dict_rows(folder)) and not cache.exists()
    finally:
        folder.chmod(0o755)


# --------------------------------------------------------------------------- users of rows
def test_summary_from_columns(list_prepared: Path) -> None:
    """inspect's summary counts videos, frames, shards and classes per split as the rows
    say."""
    want = dict_rows(list_prepared)
    s = summarize(list_prepared)
    assert s["videos"] == len(want) and s["frames"] == sum(r["num_frames"] for r in want)
    assert list(s["splits"]) == list(dict.fromkeys(r["split"] for r in want))
    for sp, v in s["splits"].items():
        rows = [r for r in want if r["split"] == sp]
        assert v["videos"] == len(rows) and v["frames"] == sum(r["num_frames"] for r in rows)
        assert v["shards"] == len({r["shard"] for r in rows}) and v["bytes"] > 0
        assert s["per_class"][sp] == dict(sorted(Counter(r["label"] for r in rows).items()))
    classes = read_classes(list_prepared)
    assert class_checks(read_index(list_prepared), classes) == class_checks(want, classes)


def test_fingerprint_is_the_former_hash(list_prepared: Path) -> None:
    """A checkpoint's data fingerprint does not change with the table (resumes still match),
    including over more rows than one hashed run."""
    def former(rows: list[dict], classes: list[str], split: str) -> dict:
        videos = [f"{r['id']}\0{r['label_index']}\0{r['num_frames']}" for r in rows
                  if r["split"] == split]
        return {"classes": hashlib.sha256("\n".join(classes).encode()).hexdigest()[:16],
                "train": hashlib.sha256("\n".join(videos).encode()).hexdigest()[:16],
                "train_videos": len(videos)}

    rows, classes = dict_rows(list_prepared), read_classes(list_prepared)
    for split in ("train", "val", "nothing"):
        assert data_fingerprint(read_index(list_prepared), classes, split) == former(
            rows, classes, split) == data_fingerprint(rows, classes, split)
    many = [{**rows[0], "id": f"v{k}", "num_frames": k % 7 + 1} for k in range(70_000)]
    assert data_fingerprint(many, classes, rows[0]["split"]) == former(many, classes,
                                                                        rows[0]["split"])


# --------------------------------------------------------------------------- forked workers
def _pss_kib() -> int:
    with open("/proc/self/smaps_rollup") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith("Pss:"))


def _child_pss_growth_mib(videos) -> float:
    """Fork a worker-like child that reads every row of ``videos`` as the dataset's
    ``__getitem__`` does; its PSS growth in MiB."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: no exception may escape into pytest's copy
        try:
            os.close(r)
            before = _pss_kib()
            total = 0
            for i in range(len(videos)):
                v = videos[i]
                total += v["num_frames"] + v["label_index"] + len(v["id"]) + len(v["shard"])
            os.write(w, str((_pss_kib() - before) / 1024).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        out = f.read()
    os.waitpid(pid, 0)
    return float(out)


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup") or not hasattr(os, "fork"),
                    reason="needs Linux /proc/<pid>/smaps_rollup and fork")
def test_forked_worker_reading_every_row_keeps_its_memory_flat(tmp_path: Path) -> None:
    """A child forked from a process holding a 100,000-video dataset reads every row: with
    the index as columns its proportional memory (PSS) grows by less than 8 MiB; with the
    former list of dicts it grows by far more (copy-on-read: reading a dict writes its
    reference count, so the child copies every page of dicts it reads)."""
    n = 100_000
    lines = [HEADER] + [f"vid{k:07d}_{k * 7919 % 1000:06d},train,class {k % 400},{k % 400},"
                        f"train-{k // 1000:05d}.h5,{250 + k % 51},30.0,29.97003,256,340,"
                        f"{(250 + k % 51) / 30:.6f},0" for k in range(n)]
    folder = write_index(tmp_path / "big", "\n".join(lines) + "\n")
    (folder / "shards").mkdir()
    (folder / "classes.txt").write_text("".join(f"class {c}\n" for c in range(400)))
    ds = VideoClipDataset(folder, "train", DenseSampler(8))
    assert len(ds) == n
    bound = 8.0
    table_growth = _child_pss_growth_mib(ds.videos)
    dicts = dict_rows(folder)   # the former layout, as the reference that fails the bound
    dict_growth = _child_pss_growth_mib(dicts)
    assert dict_growth > 4 * bound, f"the list of dicts grew by only {dict_growth:.1f} MiB"
    assert table_growth < bound, (f"a worker reading all rows grew by {table_growth:.1f} "
                                  f"MiB (dicts: {dict_growth:.1f} MiB)")
