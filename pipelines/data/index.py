"""``index.csv`` as columns: :class:`VideoTable`.

A prepared folder lists its videos in ``index.csv`` (one row per video, the columns of
:data:`vcorr.pipelines.data.shards.INDEX_COLUMNS`). Held as one Python dict per video, 650,000
videos took 1.5 GB in every process that read them, and DataLoader workers forked from a
training process copied the pages of those dicts bit by bit as reading them touched their
reference counts (copy-on-read), so each worker's own memory grew by about as much again over
an epoch (issue 24).

A :class:`VideoTable` holds the same rows as a few numpy arrays: numbers in numeric arrays,
the ids in one UTF-8 byte array with offsets, and split, label and shard (a few hundred
distinct values) as small integer codes into short lists of names: about 80 bytes per video,
50 MiB for 650,000, in a handful of Python objects, so reading rows in a forked worker touches
no shared page but those few objects' headers. It still reads like the former list of row
dicts: ``table[i]`` builds the row's dict on the fly (the same keys and Python types as
before), iteration yields them, and :meth:`VideoTable.select` gives a view of some rows that
shares the arrays.

:func:`load_index` parses index.csv (1.6 s for 650,000 rows) and, for large files, keeps the
columns in a cache file beside it (:data:`CACHE_NAME`, read in 0.2 s) keyed by index.csv's
size and SHA-1; index.csv stays the source of truth. ``vcorr bench index`` measures all this.
"""
from __future__ import annotations

import csv
import ctypes
import hashlib
import itertools
import json
import math
import os
import operator
import sys
import weakref
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vcorr.pipelines.errors import UserError

# Columns every index.csv has, and those folders prepared before them lack (read as None).
REQUIRED_COLUMNS = ("id", "split", "label", "label_index", "shard", "num_frames", "fps",
                    "source_fps", "height", "width")
OPTIONAL_COLUMNS = ("duration", "variable_rate")
INT_COLUMNS = ("label_index", "num_frames", "height", "width")
FLOAT_COLUMNS = ("fps", "source_fps")
# Text columns with few distinct values, held as codes into a list of the values.
CODED_COLUMNS = ("split", "label", "shard")
_CHUNK = 1 << 16   # rows converted at a time: bounds the parser's temporary Python objects


def _narrow(a: np.ndarray) -> np.ndarray:
    """An int64 array as int32 where every value fits."""
    if a.size == 0 or (a.min() >= -2**31 and a.max() < 2**31):
        return a.astype(np.int32)
    return a


def _code_dtype(distinct: int) -> type:
    return np.uint8 if distinct <= 2**8 else np.uint16 if distinct <= 2**16 else np.int32


def _frozen(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


class _Text:
    """Strings as one UTF-8 byte array and int64 offsets (string i is
    ``blob[offsets[i]:offsets[i + 1]]``)."""

    def __init__(self) -> None:
        # Parts as bytes, not arrays: large bytes live outside Python's small-object arenas,
        # which the parser's temporary strings fill and a kept small object would pin.
        self._blobs: list[bytes] = []
        self._sizes: list[bytes] = []
        self.blob = self.offsets = np.zeros(0, np.int64)

    def add(self, strings: Sequence[str]) -> None:
        """Append strings (call :meth:`finish` after the last)."""
        encoded = [s.encode("utf-8") for s in strings]
        self._sizes.append(np.fromiter(map(len, encoded), np.int64, len(encoded)).tobytes())
        self._blobs.append(b"".join(encoded))

    def finish(self) -> _Text:
        sizes = np.frombuffer(b"".join(self._sizes), np.int64)
        self.offsets = _frozen(np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))
        self.blob = _frozen(np.frombuffer(b"".join(self._blobs), np.uint8).copy())
        self._blobs, self._sizes = [], []
        return self

    def get(self, i: int) -> str:
        return self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes().decode("utf-8")

    def many(self, rows: np.ndarray | None, start: int, stop: int) -> list[str]:
        """Strings of positions ``rows[start:stop]`` (or ``start:stop`` without ``rows``)."""
        if rows is None:
            lo, hi = int(self.offsets[start]), int(self.offsets[stop])
            data = self.blob[lo:hi].tobytes()
            cuts = (self.offsets[start:stop + 1] - lo).tolist()
            return [data[a:b].decode("utf-8") for a, b in zip(cuts[:-1], cuts[1:])]
        return [self.get(int(j)) for j in rows[start:stop]]

    @property
    def nbytes(self) -> int:
        return self.blob.nbytes + self.offsets.nbytes


def _optional(values: Sequence | None, n: int, kind: type) -> np.ndarray:
    """An optional column's values as float64 (``kind`` float; NaN where missing) or int8
    (``kind`` int: 0/1 for ``bool(int(v))``, -1 where missing): a missing column, an
    empty cell or None is missing (an older folder, or a row dict's None)."""
    if kind is float:
        if values is None:
            return np.full(n, np.nan)
        try:
            return np.fromiter(map(float, values), np.float64, n)
        except (TypeError, ValueError):   # empty cells (or a bad number: raised below)
            return np.fromiter((math.nan if v in ("", None) else float(v) for v in values),
                               np.float64, n)
    if values is None:
        return np.full(n, -1, np.int8)
    try:
        return (np.fromiter(map(int, values), np.int64, n) != 0).astype(np.int8)
    except (TypeError, ValueError):
        return np.fromiter((-1 if v in ("", None) else int(bool(int(v))) for v in values),
                           np.int8, n)


class _Columns:
    """The arrays of a whole index.csv (shared, read-only, by every view of it)."""

    def __init__(self, header: Sequence[str], chunks: Iterable[dict[str, Sequence]]) -> None:
        """``chunks``: dicts of column -> values (the CSV's text, or a row dict's Python
        values) of a run of rows; numbers are converted with ``int``/``float``, as the former
        dict rows were.

        Raises:
            ValueError: a required column is missing; a value does not convert.
        """
        self.header = tuple(header)
        missing = [c for c in REQUIRED_COLUMNS if c not in self.header]
        if missing:
            raise ValueError(f"missing column{'s' if len(missing) > 1 else ''} "
                             f"{', '.join(missing)}")
        self.extra = tuple(c for c in self.header
                           if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
        lookups: dict[str, dict[str, int]] = {c: {} for c in CODED_COLUMNS}
        # Each chunk's converted columns, kept as bytes (see _Text).
        parts: dict[str, list[bytes]] = {c: [] for c in CODED_COLUMNS + INT_COLUMNS
                                         + FLOAT_COLUMNS + OPTIONAL_COLUMNS}
        texts = {c: _Text() for c in ("id",) + self.extra}
        self.n = 0
        for chunk in chunks:
            n = len(chunk["id"])
            self.n += n
            for c, text in texts.items():
                text.add(chunk[c])
            for c in CODED_COLUMNS:
                lut = lookups[c]
                for v in dict.fromkeys(chunk[c]):   # new values, in order of first row
                    if v not in lut:
                        lut[v] = len(lut)
                parts[c].append(np.fromiter(map(lut.__getitem__, chunk[c]), np.int64,
                                            n).tobytes())
            for c in INT_COLUMNS:   # int(v) and float(v) of the text, as the dict rows had
                parts[c].append(np.fromiter(map(int, chunk[c]), np.int64, n).tobytes())
            for c in FLOAT_COLUMNS:
                parts[c].append(np.fromiter(map(float, chunk[c]), np.float64, n).tobytes())
            parts["duration"].append(_optional(chunk.get("duration"), n, float).tobytes())
            parts["variable_rate"].append(_optional(chunk.get("variable_rate"), n, int)
                                          .tobytes())
        # Fresh copies of the names: the parser's own strings sit among its temporaries.
        self.values = {c: tuple("".join(v) for v in lut) for c, lut in lookups.items()}
        del lookups
        self.codes = {c: _frozen(np.frombuffer(b"".join(parts.pop(c)), np.int64)
                                 .astype(_code_dtype(len(self.values[c]))))
                      for c in CODED_COLUMNS}
        self.nums = {}
        for c, chunks_of_c in parts.items():
            dtype = np.int8 if c == "variable_rate" else np.int64 if c in INT_COLUMNS \
                else np.float64
            a = np.frombuffer(b"".join(chunks_of_c), dtype)
            self.nums[c] = _frozen(_narrow(a) if c in INT_COLUMNS else a.copy())
        self.texts = {c: text.finish() for c, text in texts.items()}
        self._finish()

    def _finish(self) -> None:
        # Row dicts keep index.csv's column order; absent optional columns come last (None).
        self.keys = self.header + tuple(c for c in OPTIONAL_COLUMNS if c not in self.header)
        self.plan = tuple(
            (k, "text", self.texts[k]) if k in self.texts else
            (k, "coded", (self.codes[k], self.values[k])) if k in self.codes else
            (k, k if k in OPTIONAL_COLUMNS else "num", self.nums[k]) for k in self.keys)

    def arrays(self) -> dict[str, np.ndarray]:
        """Everything as named arrays (for :func:`np.savez`; :meth:`from_arrays` inverts it)."""
        meta = {"header": self.header, "n": self.n, "values": self.values}
        out = {"meta": np.frombuffer(json.dumps(meta).encode("utf-8"), np.uint8)}
        out.update({f"num.{c}": a for c, a in self.nums.items()})
        out.update({f"code.{c}": a for c, a in self.codes.items()})
        for c, t in self.texts.items():
            out[f"blob.{c}"], out[f"offsets.{c}"] = t.blob, t.offsets
        return out

    @classmethod
    def from_arrays(cls, arrays: Any) -> _Columns:
        """The columns :meth:`arrays` gave (a dict, or what :func:`np.load` returns).

        Raises:
            ValueError, KeyError: arrays that are not such a set.
        """
        meta = json.loads(bytes(arrays["meta"]).decode("utf-8"))
        self = cls.__new__(cls)
        self.header, self.n = tuple(meta["header"]), int(meta["n"])
        self.extra = tuple(c for c in self.header
                           if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS)
        self.values = {c: tuple(meta["values"][c]) for c in CODED_COLUMNS}
        self.nums = {c: _frozen(np.asarray(arrays[f"num.{c}"]))
                     for c in INT_COLUMNS + FLOAT_COLUMNS + OPTIONAL_COLUMNS}
        self.codes = {c: _frozen(np.asarray(arrays[f"code.{c}"])) for c in CODED_COLUMNS}
        self.texts = {}
        for c in ("id",) + self.extra:
            t = self.texts[c] = _Text()
            t.blob = _frozen(np.asarray(arrays[f"blob.{c}"]))
            t.offsets = _frozen(np.asarray(arrays[f"offsets.{c}"]))
            if len(t.offsets) != self.n + 1 or int(t.offsets[-1]) != len(t.blob):
                raise ValueError(f"text column {c} does not match {self.n} rows")
        bad = [c for c, a in {**self.nums, **self.codes}.items() if a.shape != (self.n,)]
        if bad:
            raise ValueError(f"columns {bad} do not match {self.n} rows")
        self._finish()
        return self

    @property
    def nbytes(self) -> int:
        return (sum(a.nbytes for a in self.nums.values())
                + sum(a.nbytes for a in self.codes.values())
                + sum(t.nbytes for t in self.texts.values())
                + sum(len(v.encode("utf-8")) + 56 for vs in self.values.values() for v in vs))


class VideoTable(Sequence):
    """The rows of an ``index.csv``, held as columns; reads like a list of row dicts.

    ``table[i]`` is row ``i`` as a new dict with the keys of ``index.csv`` (and
    ``duration`` / ``variable_rate`` as ``None`` where the folder predates them):
    ``label_index``, ``num_frames``, ``height``, ``width`` ints, ``fps``, ``source_fps``,
    ``duration`` floats, ``variable_rate`` bool, the rest str. Iterating yields every row's
    dict; changing a dict does not change the table. A slice or :meth:`select` gives a view
    of some rows sharing the arrays, and :meth:`column`, :meth:`codes`, :meth:`mask` and
    :meth:`counts` give whole columns without building rows.

    Build one with :func:`load_index` (``index.csv``) or :meth:`from_rows` (dicts).
    """

    def __init__(self, columns: _Columns, rows: np.ndarray | None = None) -> None:
        self._c = columns
        self._rows = rows   # positions in ``columns`` (a view), or None for all of them

    # --- construction ----------------------------------------------------------------------
    @classmethod
    def from_rows(cls, rows: Iterable[dict]) -> VideoTable:
        """A table of row dicts with Python values (as :func:`read_index` returned them):
        ``duration`` / ``variable_rate`` may be ``None`` or absent.

        Raises:
            ValueError: a row lacks one of :data:`REQUIRED_COLUMNS`.
        """
        rows = list(rows)
        header = list(rows[0]) if rows else list(REQUIRED_COLUMNS)
        for r in rows:
            for k in r:
                if k not in header:
                    header.append(k)

        def chunks() -> Iterator[dict[str, list]]:
            for s in range(0, len(rows), _CHUNK):
                part = rows[s:s + _CHUNK]
                out: dict[str, list] = {}
                for c in header:
                    if c in REQUIRED_COLUMNS:
                        try:
                            out[c] = [r[c] for r in part]
                        except KeyError:
                            raise ValueError(f"a row lacks column {c!r}") from None
                        if c in CODED_COLUMNS or c == "id":
                            out[c] = [str(v) for v in out[c]]
                    elif c in OPTIONAL_COLUMNS:
                        out[c] = [r.get(c) for r in part]
                    else:
                        out[c] = [str(r.get(c, "")) for r in part]
                yield out

        return cls(_Columns(header, chunks()))

    # --- rows --------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._c.n if self._rows is None else len(self._rows)

    def _position(self, i: int) -> int:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {i} out of range for a table of {n} rows")
        return i if self._rows is None else int(self._rows[i])

    def __getitem__(self, i: Any) -> Any:
        """Row ``i`` as a dict, or a view of the rows of a slice."""
        if isinstance(i, slice):
            r = range(len(self))[i]
            return self.select(np.arange(r.start, r.stop, r.step))
        j = self._position(operator.index(i))
        row: dict[str, Any] = {}
        for k, kind, data in self._c.plan:
            if kind == "text":
                row[k] = data.get(j)
            elif kind == "coded":
                row[k] = data[1][data[0][j]]
            elif kind == "num":
                row[k] = data[j].item()
            elif kind == "duration":
                v = data[j].item()
                row[k] = None if math.isnan(v) else v   # NaN: missing
            else:   # variable_rate
                v = data[j].item()
                row[k] = None if v < 0 else bool(v)
        return row

    def __iter__(self) -> Iterator[dict]:
        c = self._c
        for s in range(0, len(self), _CHUNK):
            e = min(s + _CHUNK, len(self))
            cols = [self._chunk(k, s, e) for k in c.keys]
            for values in zip(*cols):
                yield dict(zip(c.keys, values))

    def _chunk(self, k: str, s: int, e: int) -> list:
        """Python values of column ``k`` for rows ``s:e`` of this table."""
        c = self._c
        if k in c.texts:
            return c.texts[k].many(self._rows, s, e)
        pos = slice(s, e) if self._rows is None else self._rows[s:e]
        if k in c.codes:
            names = c.values[k]
            return [names[v] for v in c.codes[k][pos].tolist()]
        values = c.nums[k][pos].tolist()
        if k == "duration":
            return [None if math.isnan(v) else v for v in values]
        if k == "variable_rate":
            return [None if v < 0 else bool(v) for v in values]
        return values

    def to_rows(self) -> list[dict]:
        """Every row as a dict (a list of Python objects: for small tables)."""
        return list(self)

    # --- columns -------------------------------------------------------------------------------
    @property
    def columns(self) -> tuple[str, ...]:
        """The keys of a row, in order."""
        return self._c.keys

    def column(self, name: str) -> np.ndarray | list[str]:
        """Column ``name`` for these rows: a numpy array for numbers (int32 or int64; float64,
        ``duration`` NaN where missing; ``variable_rate`` int8 0/1, -1 where missing), a list
        of str for text (a Python object per row: for ids of a few rows, or one-off use).

        Raises:
            KeyError: no such column.
        """
        c = self._c
        if name in c.nums:
            a = c.nums[name]
            return a if self._rows is None else a[self._rows]
        if name in c.codes or name in c.texts:
            return self._chunk(name, 0, len(self))
        raise KeyError(name)

    def codes(self, name: str) -> tuple[np.ndarray, tuple[str, ...]]:
        """(codes of these rows, values) of ``split``, ``label`` or ``shard``: row i's value is
        ``values[codes[i]]``; ``values`` may hold values no row of a view has.

        Raises:
            KeyError: ``name`` is not one of :data:`CODED_COLUMNS`.
        """
        a = self._c.codes[name]
        return (a if self._rows is None else a[self._rows]), self._c.values[name]

    def mask(self, name: str, value: str) -> np.ndarray:
        """bool array: which rows have ``value`` in ``split``, ``label`` or ``shard``."""
        codes, values = self.codes(name)
        try:
            return codes == values.index(value)
        except ValueError:
            return np.zeros(len(self), bool)

    def counts(self, name: str) -> dict[str, int]:
        """Rows per value of ``split``, ``label`` or ``shard``, in order of first row."""
        codes, values = self.codes(name)
        found, first, n = np.unique(codes, return_index=True, return_counts=True)
        order = np.argsort(first, kind="stable")
        return {values[int(found[k])]: int(n[k]) for k in order}

    def select(self, which: np.ndarray | Sequence[int]) -> VideoTable:
        """A view of the rows picked by a bool mask (length ``len(self)``) or by positions,
        sharing this table's arrays (a position costs 4 or 8 bytes).

        Raises:
            ValueError: a mask of another length.
        """
        which = np.asarray(which)
        if which.dtype == bool:
            if which.shape != (len(self),):
                raise ValueError(f"mask of {which.shape} rows for a table of {len(self)}")
            which = np.flatnonzero(which)
        base = np.arange(len(self)) if self._rows is None else self._rows
        picked = base[which.astype(np.int64)]
        dtype = np.int32 if self._c.n < 2**31 else np.int64
        return VideoTable(self._c, _frozen(picked.astype(dtype)))

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays (and names) behind this table, a view's positions included."""
        return self._c.nbytes + (0 if self._rows is None else self._rows.nbytes)

    def __repr__(self) -> str:
        return f"<VideoTable of {len(self)} videos, {self.nbytes / 2**20:.1f} MiB>"


# --- reading index.csv -------------------------------------------------------------------------

def _fast_chunks(f: Any, header: list[str]) -> Iterator[dict[str, list[str]]]:
    """Column chunks of the rest of ``f`` by plain splitting on newlines and commas; raises
    ``_NeedsCsv`` at the first chunk where that may not be what csv reads (quotes, carriage
    returns, blank lines, a row with another number of fields)."""
    nc = len(header)
    while True:
        lines = f.readlines(1 << 22)
        if not lines:
            return
        text = "".join(lines)
        if '"' in text or "\r" in text:
            raise _NeedsCsv
        if text.endswith("\n"):
            text = text[:-1]
        if set(map(str.count, lines, itertools.repeat(","))) != {nc - 1}:
            raise _NeedsCsv
        fields = text.replace("\n", ",").split(",")
        yield {h: fields[k::nc] for k, h in enumerate(header)}


class _NeedsCsv(Exception):
    pass


def _csv_chunks(path: Path, header: list[str]) -> Iterator[dict[str, list[str]]]:
    """Column chunks read with the csv module (quoted fields)."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader)
        while True:
            chunk = list(itertools.islice(reader, _CHUNK))
            if not chunk:
                return
            rows = [r for r in chunk if r]   # csv's DictReader skips blank lines too
            for r in rows:
                if len(r) != len(header):
                    raise ValueError(f"line {reader.line_num}: {len(r)} fields, the header "
                                     f"has {len(header)}")
            if rows:
                yield {h: col for h, col in zip(header, zip(*rows))}


def _release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's ``malloc_trim``; nothing
    elsewhere): the parser's freed temporaries otherwise stay resident, about twice the
    table's size, in the process and in every worker forked from it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError, TypeError):   # not glibc (musl has no malloc_trim)
        pass


# Tables alive in this process, by file identity: the first load's table serves later ones.
_LOADED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_HASHED_BYTES = 8 * 2**20
# index.csv files from this size on (about 60,000 videos) keep their columns in a cache file
# beside them, read in a tenth of the parse's time (0.2 s against 1.6 s for 650,000 videos).
CACHE_NAME = ".index.csv.cache.npz"
CACHE_MIN_BYTES = 4 * 2**20
_CACHE_VERSION = 1


def _content_key(path: Path) -> str:
    """The cache's key of ``path``: format version, size and SHA-1 of the content (read in
    blocks)."""
    h = hashlib.sha1()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(1 << 23):
            h.update(block)
            size += len(block)
    return f"{_CACHE_VERSION}:{size}:{h.hexdigest()}"


def _read_cache(cache: Path, key: str) -> _Columns | None:
    """The columns cached for ``key``, or None (no cache, another key, unreadable)."""
    try:
        with np.load(cache, allow_pickle=False) as z:
            if bytes(z["key"]).decode("ascii") != key:
                return None
            return _Columns.from_arrays({k: z[k] for k in z.files})
    except Exception:   # a damaged or foreign file is no cache: parse instead
        return None


def _write_cache(cache: Path, key: str, columns: _Columns) -> None:
    """Write the cache atomically; where the folder is not writable, or the disk is full,
    do without."""
    tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.frombuffer(key.encode("ascii"), np.uint8), **columns.arrays())
        os.replace(tmp, cache)
    except OSError:
        tmp.unlink(missing_ok=True)


def parse_index(path: str | Path) -> VideoTable:
    """The rows of the index file ``path`` parsed into a table, without any cache (for
    :func:`load_index`, and to time the parse).

    Raises:
        UserError: a malformed file (a missing column, a row of another length, a number
            that does not parse).
    """
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as f:
            first = f.readline()
            header = next(csv.reader([first]), [])
            try:
                if not header:   # an empty file: no rows
                    if f.read().strip():
                        raise ValueError("no header line")
                    return VideoTable(_Columns(REQUIRED_COLUMNS, []))
                return VideoTable(_Columns(header, _fast_chunks(f, header)))
            except _NeedsCsv:
                pass
        return VideoTable(_Columns(header, _csv_chunks(path, header)))
    except ValueError as exc:
        raise UserError(f"{path}: {exc}; prepare the dataset again") from None
    finally:
        _release_free_memory()


def load_index(out: str | Path) -> VideoTable:
    """``OUT/index.csv`` as a :class:`VideoTable` (numbers converted as ``int``/``float``
    would; 50 MiB for 650,000 videos).

    index.csv stays the source of truth. Parsing 650,000 rows takes about 1.6 s; from
    :data:`CACHE_MIN_BYTES` on (about 60,000 rows) the columns are also written beside it to
    :data:`CACHE_NAME` (atomically; not where the folder is read-only), keyed by index.csv's
    size and SHA-1, and read from there while index.csv is unchanged (0.2 s).

    While a table of the file is alive, loading the same unchanged file (same path, size,
    modification and change times and inode; same content, for files up to 8 MiB) returns
    that table rather than a second copy: a training process's checks and datasets share one.

    Raises:
        UserError: no ``index.csv`` in ``out``, or a malformed one (a missing column, a
            row of another length, a number that does not parse).
    """
    path = Path(out) / "index.csv"
    if not path.is_file():
        raise UserError(f"{path}: not found (is {out} a folder written by 'vcorr prepare'?)")
    st = path.stat()
    key: tuple = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if st.st_size <= _HASHED_BYTES:
        # Two writes within one tick of the file system's clock (a few ms) leave the same
        # times: a small file is told apart by its content (a large one takes longer to write).
        key += (hashlib.blake2b(path.read_bytes(), digest_size=16).digest(),)
    table = _LOADED.get(key)
    if table is not None:
        return table
    cache, content = path.with_name(CACHE_NAME), ""
    if st.st_size >= CACHE_MIN_BYTES:
        content = _content_key(path)
        columns = _read_cache(cache, content)
        if columns is not None:
            table = _LOADED[key] = VideoTable(columns)
            return table
    table = parse_index(path)
    if content and _content_key(path) == content:   # not rewritten while it was parsed
        _write_cache(cache, content, table._c)
    _LOADED[key] = table
    return table
