"""What a run shows while it trains, besides ``metrics.jsonl``: ``RUN_DIR/curves.png`` and
TensorBoard event files in ``RUN_DIR/tb`` (rank 0 only).

Both are views of the ``metrics.jsonl`` records and nothing else: the monitor is handed each
record as it is written. curves.png is redrawn from the whole file after every validation (and
at the end of a call, if train records came after the last validation). TensorBoard logging
needs the ``tensorboard`` package (``pip install 'vcorr[tb]'``); without it the run says once
that it is off and trains on (commands that train several models, ``vcorr demo`` and ``vcorr
bench learn``, say it once in all: :func:`tensorboard_note_once`). On resume the trainer cuts
``metrics.jsonl`` back to what the checkpoint had seen; the event files are then rebuilt from
those records (a new file is written, then the old ones are removed), so TensorBoard never
shows steps the resumed run will repeat.
"""
from __future__ import annotations

import contextlib
import resource
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from vcorr.pipelines.train.curves import plot_run_curves, read_records

MIB = 2 ** 20

# TensorBoard tags of the record fields (``split/field``).
_TB_FIELDS = {
    "train": ("loss", "top1", "lr", "clips_per_s", "data_wait", "peak_mem_mib"),
    "val": ("loss", "top1", "top5"),
}


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """Peak memory of this process so far, in MiB (2^20 bytes), and what was measured:
    ``("cuda", ...)`` :func:`torch.cuda.max_memory_allocated` on ``device`` (tensors the
    caching allocator handed out, not what it reserved) or ``"rss"``, the peak resident set
    size of the main process (``getrusage``; DataLoader worker processes are not counted)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MIB, "cuda"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return (peak / MIB if sys.platform == "darwin" else peak / 1024), "rss"


TB_OFF_NOTE = ("note: TensorBoard logging is off: the tensorboard package is not installed "
               "(pip install 'vcorr[tb]'); curves.png and metrics.jsonl are written as always")

# Within tensorboard_note_once(): [whether the note was printed]; outside: None (each
# run says it).
_note_once: list[bool] | None = None


@contextlib.contextmanager
def tensorboard_note_once() -> Iterator[None]:
    """Within: of the runs trained in this process, only the first prints
    :data:`TB_OFF_NOTE` (the demo trains six models; the note is the same for each)."""
    global _note_once
    outer = _note_once
    _note_once = outer if outer is not None else [False]
    try:
        yield
    finally:
        _note_once = outer


def _say_tensorboard_off() -> None:
    if _note_once is not None:
        if _note_once[0]:
            return
        _note_once[0] = True
    print(TB_OFF_NOTE, flush=True)


def tensorboard_writer_class() -> Any:
    """``torch.utils.tensorboard.SummaryWriter``, or None when ``tensorboard`` is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter


class TrainingMonitor:
    """curves.png and TensorBoard events of the run in ``out`` (``enabled``: rank 0).

    ``plan`` (the config's phases) marks the phases on the curves; ``resumed`` rebuilds the
    event files from the records already in ``metrics.jsonl``. :meth:`close` at the end."""

    def __init__(self, out: Path, *, title: str, plan: Sequence[dict[str, Any]], enabled: bool,
                 resumed: bool) -> None:
        self.out, self.title, self.plan, self.enabled = out, title, list(plan), enabled
        self.writer: Any = None
        self.stale = False  # train records since curves.png was drawn
        if not enabled:
            return
        writer_class = tensorboard_writer_class()
        if writer_class is None:
            _say_tensorboard_off()
        else:
            tb = out / "tb"
            old = set(tb.glob("events.out.tfevents.*"))
            self.writer = writer_class(log_dir=str(tb))
            if resumed:
                for rec in read_records(out / "metrics.jsonl"):
                    self._log(rec)
                self.writer.flush()
                # The new file holds every kept record: only now are the old ones removed.
                for path in old:
                    path.unlink(missing_ok=True)
        if resumed and read_records(out / "metrics.jsonl"):
            self.draw()

    def _log(self, rec: dict[str, Any]) -> None:
        for key in _TB_FIELDS.get(rec.get("split"), ()):
            value = rec.get(key)
            if isinstance(value, (int, float)):
                self.writer.add_scalar(f"{rec['split']}/{key}", value, rec["step"])

    def record(self, rec: dict[str, Any]) -> None:
        """A record was just appended to ``metrics.jsonl``."""
        if not self.enabled:
            return
        if self.writer is not None:
            self._log(rec)
        if rec.get("split") == "val":
            if self.writer is not None:
                self.writer.flush()
            self.draw()
        else:
            self.stale = True

    def draw(self) -> None:
        """Redraw ``curves.png`` from ``metrics.jsonl``."""
        plot_run_curves(read_records(self.out / "metrics.jsonl"), self.out / "curves.png",
                        title=self.title, plan=self.plan)
        self.stale = False

    def close(self) -> None:
        """The run's call ends (finished, stopped or failed): the event writer is closed and
        curves.png brought up to date with the records since the last validation."""
        if not self.enabled:
            return
        if self.writer is not None:
            self.writer.close()
        if self.stale:
            self.draw()
