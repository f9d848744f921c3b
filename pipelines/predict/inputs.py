"""The videos a ``vcorr predict`` / ``vcorr extract`` command line names: video files, folders
(searched recursively for video files and frame folders) and text files listing paths."""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from vcorr.pipelines.data.annotations import VIDEO_SUFFIXES
from vcorr.pipelines.data.decode import IMAGE_SUFFIXES
from vcorr.pipelines.errors import UserError

LIST_SUFFIXES = (".txt", ".lst")
# Files a command line may name by mistake for a list or a video (a .csv annotation file, a
# checkpoint, a single image): refused in one line instead of failing to decode as a video.
NOT_VIDEO_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".md", ".toml", ".yaml", ".yml",
                      ".h5", ".hdf5", ".pt", ".pth", ".npy", ".npz") + IMAGE_SUFFIXES


@dataclass(frozen=True)
class VideoInput:
    """One video: ``id`` (unique, used in output names) and ``path`` (a file or frame
    folder; one a list file names may not exist: it is then reported as a missing file)."""

    id: str
    path: str


def _is_frame_folder(folder: Path) -> bool:
    return any(f.suffix.lower() in IMAGE_SUFFIXES for f in folder.iterdir() if f.is_file())


def _search(folder: Path) -> list[tuple[Path, str]]:
    """Video files and frame folders under ``folder`` (a frame folder is not searched
    further), with their path relative to ``folder``, sorted."""
    found: list[tuple[Path, str]] = []
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            if _is_frame_folder(p):
                found.append((p, p.relative_to(folder).as_posix()))
            else:
                found += [(q, f"{p.name}/{rel}") for q, rel in _search(p)]
        elif p.suffix.lower() in VIDEO_SUFFIXES:
            found.append((p, p.with_suffix("").relative_to(folder).as_posix()))
    return found


def _check_named(p: Path) -> None:
    """A path the command line names (not one a list file names): it must exist and not be
    a file of another kind, so that a typo or a .csv fails before anything is written."""
    if not p.exists():
        raise UserError(f"{p}: no such file or folder")
    if p.is_file() and p.suffix.lower() in NOT_VIDEO_SUFFIXES:
        raise UserError(f"{p}: not a video; list files are {' or '.join(LIST_SUFFIXES)} (one "
                        f"path per line), videos are {', '.join(VIDEO_SUFFIXES)}")


def _expand(p: Path, in_list: bool) -> list[tuple[Path, str]]:
    if not in_list:
        _check_named(p)
    if p.is_dir():
        if _is_frame_folder(p):
            return [(p, p.name)]
        found = _search(p)
        if not found:
            raise UserError(f"{p}: no video files ({', '.join(VIDEO_SUFFIXES)}) or frame "
                            "folders in it")
        return found
    if p.suffix.lower() in LIST_SUFFIXES and p.is_file() and not in_list:
        out = []
        for line in p.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                q = Path(line).expanduser()
                out += _expand(q if q.is_absolute() else p.parent / q, True)
        if not out:
            raise UserError(f"{p}: lists no paths")
        return out
    return [(p, p.stem if p.suffix else p.name)]


def collect_inputs(inputs: Sequence[str | Path]) -> list[VideoInput]:
    """Every video the ``inputs`` name, in order, each once: a folder's video files
    (``VIDEO_SUFFIXES``) and frame folders (folders holding images), recursively, sorted; a
    ``.txt``/``.lst`` file's lines (paths relative to the list's folder; blank lines and
    ``#`` comments skipped); anything else is taken as a video. Ids are the path relative to
    the folder searched (or the file's stem), ``/`` written ``__``; repeated ids get ``~2``,
    ``~3``. A path a list file names may be missing (the caller reports it as one failed
    video); one ``inputs`` names may not.

    Raises:
        UserError: no inputs, an input that does not exist or is not a video, list or folder
            (:data:`NOT_VIDEO_SUFFIXES`), a folder without videos, an empty list file.
    """
    seen: set[str] = set()
    ids: set[str] = set()
    out: list[VideoInput] = []
    for item in inputs:
        for path, name in _expand(Path(item).expanduser(), False):
            key = str(path.resolve())
            if key in seen:
                continue
            seen.add(key)
            base = re.sub(r"[/\\]", "__", name) or "video"
            vid, n = base, 1
            while vid in ids:
                n += 1
                vid = f"{base}~{n}"
            ids.add(vid)
            out.append(VideoInput(vid, str(path)))
    if not out:
        raise UserError("no input videos given")
    return out
