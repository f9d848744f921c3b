"""HDF5 shard layout: writing one shard atomically and reading clips from it.

A shard ``shards/<split>-NNNNN.h5`` holds up to ``videos_per_shard`` videos::

    /<key>/jpeg      uint8 (total_bytes,)   the frames' JPEG files, concatenated
    /<key>/offsets   int64 (num_frames+1,)  frame i is jpeg[offsets[i]:offsets[i+1]]
    /<key>/frames    uint8 (T, H, W, 3)     instead of jpeg/offsets with --codec raw

and, as root attributes, ``manifest`` (JSON rows of index.csv for its videos), ``failures``
(JSON rows of failures.csv), ``warnings`` (JSON rows of warnings.csv: videos stored from the
frames that decoded), ``options_hash`` and ``complete``. A clip is therefore one
contiguous read of a byte range, not one read per frame. A shard is written to
``<name>.tmp`` and renamed only when complete, so a killed run never leaves a shard that
looks finished.

Shards are opened for reading with HDF5 file locking off: datasets live on NFS and Lustre,
where locking fails ("unable to lock file, errno = 37, No locks available"), and a finished
shard is never written again (writers use a temporary name).
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from vcorr.pipelines.data.annotations import safe_key

SHARD_FORMAT_VERSION = 1
INDEX_COLUMNS = ("id", "split", "label", "label_index", "shard", "num_frames", "fps",
                 "source_fps", "height", "width", "duration", "variable_rate")
FAILURE_COLUMNS = ("id", "path", "reason")
WARNING_COLUMNS = ("id", "path", "warning")


def shard_name(split: str, number: int) -> str:
    return f"{split}-{number:05d}.h5"


class ShardWriter:
    """Writes videos into ``<path>.tmp``; :meth:`close` marks it complete and renames it."""

    def __init__(self, path: str | Path, options_hash: str) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.tmp.unlink(missing_ok=True)
        self._h5 = h5py.File(self.tmp, "w")
        self._h5.attrs["format_version"] = SHARD_FORMAT_VERSION
        self._h5.attrs["options_hash"] = options_hash
        self._h5.attrs["complete"] = False
        self.manifest: list[dict] = []
        self.failures: list[dict] = []
        self.warnings: list[dict] = []

    def add_jpeg(self, row: dict, jpegs: Sequence[bytes] | np.ndarray,
                 offsets: np.ndarray | None = None) -> None:
        """Store one video's JPEG frames; ``row`` is its index.csv row (without shard)."""
        if offsets is None:
            sizes = np.array([len(b) for b in jpegs], np.int64)
            offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            data = np.frombuffer(b"".join(jpegs), np.uint8)
        else:
            data = np.asarray(jpegs, np.uint8)
        g = self._h5.create_group(safe_key(row["id"]))
        # Contiguous, uncompressed: a clip is one plain read of a byte range.
        g.create_dataset("jpeg", data=data)
        g.create_dataset("offsets", data=offsets)
        self._add_row(row)

    def add_raw(self, row: dict, frames: np.ndarray) -> None:
        """Store one video's frames uncompressed, (T, H, W, 3) uint8."""
        g = self._h5.create_group(safe_key(row["id"]))
        g.create_dataset("frames", data=frames, chunks=(1, *frames.shape[1:]))
        self._add_row(row)

    def add_failure(self, id_: str, path: str, reason: str) -> None:
        self.failures.append({"id": id_, "path": path, "reason": reason})

    def add_warning(self, id_: str, path: str, warning: str) -> None:
        self.warnings.append({"id": id_, "path": path, "warning": warning})

    def _add_row(self, row: dict) -> None:
        self.manifest.append({**row, "shard": self.path.name})

    def close(self) -> None:
        """Finish the shard: write its manifest and move it to its final name."""
        self._h5.attrs["manifest"] = json.dumps(self.manifest)
        self._h5.attrs["failures"] = json.dumps(self.failures)
        self._h5.attrs["warnings"] = json.dumps(self.warnings)
        self._h5.attrs["complete"] = True
        self._h5.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._h5.close()
        self.tmp.unlink(missing_ok=True)


class ShardTables(NamedTuple):
    """The tables a complete shard carries (rows of index.csv, failures.csv, warnings.csv)."""

    options_hash: str
    manifest: list[dict]
    failures: list[dict]
    warnings: list[dict]


def open_shard(path: str | Path) -> h5py.File:
    """Open a shard read-only, without HDF5 file locking (see the module docstring)."""
    return h5py.File(path, "r", locking=False)


def read_shard_tables(path: str | Path) -> ShardTables:
    """The tables of a complete shard (shards written before warnings existed have none).

    Raises:
        ValueError: the shard is incomplete.
        OSError: not an HDF5 file.
    """
    with open_shard(path) as h5:
        if not h5.attrs.get("complete", False):
            raise ValueError(f"{path}: shard is incomplete")
        return ShardTables(str(h5.attrs["options_hash"]), json.loads(h5.attrs["manifest"]),
                           json.loads(h5.attrs["failures"]),
                           json.loads(h5.attrs.get("warnings", "[]")))


# Per-process bounds of a ShardReader (each DataLoader worker has its own reader). An open
# shard costs about 0.5 MiB of resident memory (HDF5's per-file metadata cache) and one file
# descriptor; 64 of them are 34 MiB and 64 descriptors per worker, whatever the dataset size.
MAX_OPEN_SHARDS = 64
# Offsets arrays (int64, one per frame + 1) cached to save one small read per clip: 16 MiB is
# about 7,000 videos of 300 frames (Kinetics at the source frame rate).
MAX_OFFSETS_BYTES = 16 * 2**20


class ShardReader:
    """Reads frames of videos from shards, opening files lazily.

    At most ``max_open`` shards stay open and at most ``max_offsets_bytes`` of offsets arrays
    stay cached; beyond that the least recently used are closed or dropped, so open files and
    memory per process are bounded whatever the number of shards and videos (a dataset with
    1000 shards trains under ``ulimit -n 512``).

    Open it in the process that reads (each DataLoader worker gets its own handles): h5py
    handles must not cross a fork.

    Args:
        shard_dir: the ``shards`` folder of a prepared dataset.
        max_open: open shard handles kept (least recently used closed first), >= 1.
        max_offsets_bytes: bytes of cached offsets arrays kept (0 caches none).
    """

    def __init__(self, shard_dir: str | Path, max_open: int = MAX_OPEN_SHARDS,
                 max_offsets_bytes: int = MAX_OFFSETS_BYTES) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be at least 1, got {max_open}")
        self.shard_dir = Path(shard_dir)
        self.max_open, self.max_offsets_bytes = max_open, max_offsets_bytes
        self._files: OrderedDict[str, h5py.File] = OrderedDict()
        self._offsets: OrderedDict[tuple[str, str], np.ndarray] = OrderedDict()
        self._offsets_bytes = 0
        self._pid = os.getpid()

    @property
    def open_files(self) -> int:
        """Shard handles open in this process now."""
        return len(self._files)

    @property
    def cached_offsets(self) -> tuple[int, int]:
        """(videos, bytes) of offsets arrays cached now."""
        return len(self._offsets), self._offsets_bytes

    def _file(self, shard: str) -> h5py.File:
        if self._pid != os.getpid():  # forked: the parent's handles are not ours to use
            self._files, self._offsets = OrderedDict(), OrderedDict()
            self._offsets_bytes, self._pid = 0, os.getpid()
        f = self._files.get(shard)
        if f is not None:
            self._files.move_to_end(shard)
            return f
        while len(self._files) >= self.max_open:
            _, old = self._files.popitem(last=False)
            old.close()
        f = self._files[shard] = open_shard(self.shard_dir / shard)
        return f

    def _group(self, shard: str, video_id: str) -> h5py.Group:
        return self._file(shard)[safe_key(video_id)]

    def _cached_offsets(self, shard: str, video_id: str, g: h5py.Group) -> np.ndarray:
        key = (shard, video_id)
        offsets = self._offsets.get(key)
        if offsets is not None:
            self._offsets.move_to_end(key)
            return offsets
        offsets = g["offsets"][()]
        if offsets.nbytes <= self.max_offsets_bytes:
            self._offsets[key] = offsets
            self._offsets_bytes += offsets.nbytes
            while self._offsets_bytes > self.max_offsets_bytes:
                _, old = self._offsets.popitem(last=False)
                self._offsets_bytes -= old.nbytes
        return offsets

    def read_encoded(self, shard: str, video_id: str,
                     indices: Sequence[int]) -> list[np.ndarray] | np.ndarray:
        """JPEG bytes of the frames at ``indices`` (list of uint8 arrays), or, for raw
        shards, the decoded frames (N, H, W, 3) uint8."""
        g = self._group(shard, video_id)
        if "frames" in g:
            uniq = sorted(set(int(i) for i in indices))
            data = g["frames"][uniq]
            pos = {v: k for k, v in enumerate(uniq)}
            return data[[pos[int(i)] for i in indices]]
        offsets = self._cached_offsets(shard, video_id, g)
        lo, hi = int(min(indices)), int(max(indices))
        # One read of the covered byte range; frames in between are skipped in memory.
        blob = g["jpeg"][offsets[lo]:offsets[hi + 1]]
        base = offsets[lo]
        return [blob[offsets[i] - base:offsets[i + 1] - base] for i in indices]

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files, self._offsets, self._offsets_bytes = OrderedDict(), OrderedDict(), 0

    def __getstate__(self) -> dict:
        return {"shard_dir": self.shard_dir, "max_open": self.max_open,
                "max_offsets_bytes": self.max_offsets_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["shard_dir"], state.get("max_open", MAX_OPEN_SHARDS),
                      state.get("max_offsets_bytes", MAX_OFFSETS_BYTES))
