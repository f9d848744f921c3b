"""Progress for long commands: a live bar on a terminal, plain periodic lines otherwise.

A bar redrawn with carriage returns is unreadable in a log file or a pipe (a SLURM output file
gets hundreds of partial lines, or one block at the end), so when the stream is not a terminal
progress is one line every :data:`PLAIN_SECONDS` seconds and one at the end.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

# Seconds between progress lines when the output is not a terminal.
PLAIN_SECONDS = 60.0


def rate_text(n: float, seconds: float, unit: str) -> str:
    """``"2.5 video/s"``, or below one per second (a long video, a --window run) the seconds
    each takes, ``"41.3 s/video"``, as tqdm shows it: ``0.0 video/s`` would say nothing."""
    if n <= 0:
        return f"0 {unit}/s"
    rate = n / max(seconds, 1e-9)
    return f"{rate:.1f} {unit}/s" if rate >= 1 else f"{seconds / n:.1f} s/{unit}"


class PlainProgress:
    """tqdm's ``update``/``close`` (and iteration) as plain lines: ``DESC: N/TOTAL UNITs
    (R UNIT/s, or S s/UNIT below one per second)`` every :data:`PLAIN_SECONDS` and when
    done."""

    def __init__(self, total: int, desc: str, unit: str = "it", stream: TextIO | None = None,
                 iterable: Iterable | None = None) -> None:
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = stream if stream is not None else sys.stderr
        self.iterable = iterable
        self.n, self.printed = 0, 0
        self.start = self.last = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if self.n >= self.total or now - self.last >= PLAIN_SECONDS:
            self._line(now)

    def _line(self, now: float) -> None:
        self.last, self.printed = now, self.n
        rate = rate_text(self.n, now - self.start, self.unit)
        print(f"{self.desc}: {self.n}/{self.total} {self.unit}s ({rate})", file=self.stream,
              flush=True)

    def close(self) -> None:
        if self.printed != self.n:
            self._line(time.monotonic())

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()


def make_progress(total: int, desc: str, unit: str = "it", iterable: Iterable | None = None,
                  stream: TextIO | None = None) -> Any:
    """A tqdm bar if ``stream`` (default stderr) is a terminal, else :class:`PlainProgress`;
    both have ``update(n)``, ``close()`` and, given ``iterable``, iteration."""
    stream = stream if stream is not None else sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(iterable, total=total, unit=unit, desc=desc, smoothing=0.1, file=stream)
    return PlainProgress(total, desc, unit, stream, iterable)
