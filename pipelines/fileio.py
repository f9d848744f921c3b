"""Small file helpers shared by the pipelines."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def replace_atomic(path: str | Path, write: Callable[[Path], object], *,
                   durable: bool = False) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    A reader never sees a half-written file and a crash never destroys the previous one; if
    ``write`` raises, the temporary file is removed. ``durable`` also flushes the file and the
    rename to disk (``fsync``), so that not even a power cut leaves a half-written ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not possible on every platform / file system
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` with :func:`replace_atomic`."""
    if isinstance(data, bytes):
        replace_atomic(path, lambda tmp: tmp.write_bytes(data))
    else:
        replace_atomic(path, lambda tmp: tmp.write_text(data, encoding="utf-8"))
