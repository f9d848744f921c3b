"""The output-folder rule of every command that writes results (train, eval, compare,
visualize): a result that is already there is never changed without being asked.

A command names what it writes, either a whole folder (``train``'s run folder, ``eval``'s and
``compare``'s output folders: their files belong together) or single files (``visualize``'s
figures, several of which may share one folder). If any of it exists, the command stops
before doing any work with one line that says what is there and how to go on; with
``--overwrite`` the old result is moved aside to ``NAME.old-N`` (the smallest free N), never
mixed with the new one and never deleted. ``prepare`` is the exception by design: a rerun
into the same folder resumes it, and other data options are refused.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from vcorr.pipelines.errors import UserError


def aside_name(path: str | Path) -> Path:
    """Where :func:`move_aside` would move ``path``: ``NAME.old-N`` beside it (for a file
    ``STEM.old-N.SUFFIX``), with the smallest N not taken."""
    path = Path(path)
    stem, suffix = (path.name, "") if path.is_dir() or not path.suffix else (path.stem,
                                                                              path.suffix)
    n = 1
    while True:
        candidate = path.with_name(f"{stem}.old-{n}{suffix}")
        if not os.path.lexists(candidate):
            return candidate
        n += 1


def move_aside(path: str | Path) -> Path:
    """Rename ``path`` (a file or a folder) to :func:`aside_name` and return the new path."""
    target = aside_name(path)
    os.rename(path, target)
    return target


def folder_results(folder: str | Path, patterns: Iterable[str]) -> list[str]:
    """Names in ``folder`` that match any of the glob ``patterns`` (sorted; [] if the folder
    does not exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found: set[str] = set()
    for pattern in patterns:
        found.update(p.name for p in folder.glob(pattern))
    return sorted(found)


def check_folder(folder: str | Path, patterns: Sequence[str], *, overwrite: bool,
                 what: str) -> bool:
    """Apply the rule to a folder that is one result: if it holds anything matching
    ``patterns``, raise :class:`UserError` (``what`` says what is there, e.g. "the results of
    an earlier `vcorr eval`") unless ``overwrite``. Returns whether the folder has to be moved
    aside (call :func:`move_aside` when the new result is ready to be written)."""
    found = folder_results(folder, patterns)
    if not found:
        return False
    if not overwrite:
        raise UserError(f"{folder}: holds {what} ({', '.join(found[:4])}"
                        f"{', ...' if len(found) > 4 else ''}); give another --out, or "
                        f"--overwrite to move it aside to {aside_name(folder)}")
    return True


def check_files(paths: Sequence[str | Path], *, overwrite: bool,
                option: str = "--out") -> list[Path]:
    """Apply the rule to files that are one result (a figure and its animation): if any of
    them exists, raise :class:`UserError` unless ``overwrite``. Returns the existing ones (to
    pass to :func:`move_aside` when the new result is ready)."""
    existing = [Path(p) for p in paths if os.path.lexists(p)]
    if existing and not overwrite:
        names = ", ".join(str(p) for p in existing)
        raise UserError(f"{names}: already there from an earlier run; give another {option}, or "
                        f"--overwrite to move {'it' if len(existing) == 1 else 'them'} aside to "
                        f"{', '.join(aside_name(p).name for p in existing)}")
    return existing
