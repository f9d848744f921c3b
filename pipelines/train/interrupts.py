"""Stopping a training run at any moment without damaging it: SIGINT (Ctrl-C) and SIGTERM
(what SLURM and torchrun send before they kill a job), and fault injection for the tests.

A training step changes the run's state in two stages. Forward and backward change only the
BatchNorm running statistics (buffers) and the gradients, which the loop can put back; the
optimiser step, the position counter, the saved RNG state and the metrics record change
together, which cannot be undone half-way. So a signal that arrives

* outside a step, while loading data, in forward or backward, or during validation, stops the
  run at once (:class:`Interrupted`, a ``KeyboardInterrupt``); the loop restores the buffers
  it saved at the start of the step, and ``last.pt`` is the state after the last completed
  step;
* inside a :meth:`SignalGuard.deferred` block (the optimiser step and its bookkeeping, writing
  a checkpoint) is held until the block ends, then stops the run the same way.

``kill -9`` cannot be caught; checkpoints are written to a temporary file and renamed
(:func:`vcorr.pipelines.fileio.replace_atomic`), so ``last.pt`` is always one that loads.

Fault injection: :func:`fault_point` marks the places a test may interrupt (``data``,
``forward``, ``backward``, ``optimizer``, ``validation``, ``checkpoint``). A hook set with
:func:`set_fault_hook`, or the environment variable ``VCORR_FAULT=POINT@N:SIGNAL`` (e.g.
``forward@5:SIGTERM``: at the 5th time the loop reaches ``forward`` this process sends itself
SIGTERM; ``SIGKILL`` works too), acts there.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

# ``extract``: `vcorr extract` wrote a vector under its temporary name, not yet moved.
FAULT_POINTS = ("data", "forward", "backward", "optimizer", "validation", "checkpoint",
                "extract")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM stopped training; ``signum`` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class SignalGuard:
    """While entered (in the main thread), SIGINT and SIGTERM raise :class:`Interrupted`,
    except inside :meth:`deferred` blocks, which finish first. Elsewhere (another thread) it
    changes nothing and Python's default Ctrl-C behaviour stays."""

    def __init__(self) -> None:
        self._depth = 0
        self.pending: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "SignalGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: Any) -> None:
        if self._depth:
            if self.pending is None:
                self.pending = signum
            return
        raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block that a stop signal does not cut: the signal takes effect when it ends."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        if not self._depth and self.pending is not None:
            signum, self.pending = self.pending, None
            raise Interrupted(signum)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: workers leave SIGINT/SIGTERM to the main process, which
    stops at a safe point and then shuts them down (a worker killed by the signal would make
    the main process fail in the middle of a step)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


# --- fault injection ---------------------------------------------------------------------------

_hook: Callable[[str], None] | None = None
_env_counts: dict[str, int] = {}


def set_fault_hook(hook: Callable[[str], None] | None) -> None:
    """Call ``hook(point)`` at every :func:`fault_point` (None removes it)."""
    global _hook
    _hook = hook


def _env_fault() -> tuple[str, int, int] | None:
    spec = os.environ.get("VCORR_FAULT", "")
    if not spec:
        return None
    try:
        where, sig = spec.split(":")
        point, nth = where.split("@")
        signum = int(getattr(signal, sig)) if not sig.isdigit() else int(sig)
        if point not in FAULT_POINTS:
            raise ValueError(point)
        return point, int(nth), signum
    except (ValueError, AttributeError):
        raise ValueError(f"VCORR_FAULT={spec!r}: expected POINT@N:SIGNAL with POINT one of "
                         f"{', '.join(FAULT_POINTS)}, e.g. forward@5:SIGTERM") from None


def fault_point(point: str) -> None:
    """A place where a test may interrupt training (see the module docstring)."""
    if _hook is not None:
        _hook(point)
        return
    fault = _env_fault()
    if fault is None or fault[0] != point:
        return
    _env_counts[point] = _env_counts.get(point, 0) + 1
    if _env_counts[point] == fault[1]:
        os.kill(os.getpid(), fault[2])


def signal_at(point: str, nth: int, signum: int = signal.SIGINT) -> Callable[[str], None]:
    """A hook for :func:`set_fault_hook` that sends ``signum`` to this process the ``nth``
    time (1-based) training reaches ``point``."""
    if point not in FAULT_POINTS:
        raise ValueError(f"unknown fault point {point!r}; one of {', '.join(FAULT_POINTS)}")
    count = {"n": 0}

    def hook(where: str) -> None:
        if where == point:
            count["n"] += 1
            if count["n"] == nth:
                os.kill(os.getpid(), signum)

    return hook
