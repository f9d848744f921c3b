"""Small file helpers shared by the pipelines."""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def replace_atomic(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it over ``path``.

    A reader never sees a half-written file and a crash never destroys the previous one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` with :func:`replace_atomic`."""
    if isinstance(data, bytes):
        replace_atomic(path, lambda tmp: tmp.write_bytes(data))
    else:
        replace_atomic(path, lambda tmp: tmp.write_text(data, encoding="utf-8"))
