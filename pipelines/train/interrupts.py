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

A signal may reach the main process only or the whole process group (Ctrl-C in a terminal,
SLURM, ``kill -- -PGID``). DataLoader workers ignore SIGINT and exit (status 0) on SIGTERM
(:func:`ignore_stop_signals`), so ``Process.terminate()`` always ends them; the trainer shuts
its loaders' workers down on every way out; :func:`held` keeps stop signals waiting while
workers are forked; and a handler call that Python drops (raised inside a fork callback or a
``__del__``) is acted on at the next :func:`fault_point` (:meth:`SignalGuard.check`).

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
    changes nothing and Python's default Ctrl-C behaviour stays.

    A signal is never lost: the handler also records it in ``pending``, and :meth:`check`
    (every :func:`fault_point` calls it) raises it again. Python runs signal handlers wherever
    the main thread is, and an exception raised inside an ``os.fork`` callback, a ``__del__``
    or a weakref callback is printed as "Exception ignored" and dropped (seen: a SIGINT that
    arrived while the DataLoader forked its workers, in logging's at-fork hook)."""

    def __init__(self) -> None:
        self._depth = 0
        self.pending: int | None = None   # received, not yet acted on
        self.received: int | None = None  # the first stop signal received, kept
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "SignalGuard":
        global _active
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            _active = self
        return self

    def __exit__(self, *exc: Any) -> None:
        global _active
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        if _active is self:
            _active = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is None:
            self.received = signum
        if self.pending is None:
            self.pending = signum
        if self._depth:
            return
        raise Interrupted(signum)

    def check(self) -> None:
        """Raise :class:`Interrupted` for a signal received but not acted on (outside a
        :meth:`deferred` block)."""
        if self.pending is not None and not self._depth:
            signum, self.pending = self.pending, None
            raise Interrupted(signum)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A block that a stop signal does not cut: the signal takes effect when it ends."""
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
        self.check()


_active: SignalGuard | None = None  # the guard entered in the main thread, if any


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A block around ``iter(loader)``, which forks the DataLoader's workers, where SIGINT and
    SIGTERM wait: the entered guard's :meth:`SignalGuard.deferred` block, with both signals
    also blocked in the calling thread. So a signal neither cuts the main process inside a
    fork callback (where it would be dropped) nor reaches a new worker before its
    ``worker_init_fn`` (:func:`ignore_stop_signals`): a worker inherits the blocked mask and
    gets a signal sent meanwhile only once it handles it. Without the mask, a SIGTERM to the
    process group in that window meets the handler PyTorch sets at a worker's start, which
    dies by the signal when it does not come from the parent, and the main process then fails
    with "DataLoader worker ... is killed by signal" instead of stopping."""
    main = threading.current_thread() is threading.main_thread()
    block = main and hasattr(signal, "pthread_sigmask")
    with _active.deferred() if _active is not None and main else contextlib.nullcontext():
        old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS) if block else None
        try:
            yield
        finally:
            if old is not None:
                signal.pthread_sigmask(signal.SIG_SETMASK, old)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: a worker ignores SIGINT (Ctrl-C in a terminal reaches
    the whole process group; the main process stops at a safe point and shuts its workers
    down) and leaves on SIGTERM (:func:`_worker_sigterm`), so that ``Process.terminate()``
    always ends it: the DataLoader's own shutdown and Python's exit handler rely on it (a
    worker that ignored SIGTERM kept a stopped run waiting for ever in its exit handler)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_sigterm)
    if hasattr(signal, "pthread_sigmask"):  # blocked by held() while the worker was forked
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _worker_sigterm(signum: int, frame: Any) -> None:
    """A worker's SIGTERM: exit with status 0 through ``SystemExit`` (its queues are flushed
    and closed as at a normal exit). Status 0, not death by the signal: SIGTERM sent to the
    whole group (SLURM, torchrun, ``kill -TERM -PGID``) reaches the main process too, and the
    DataLoader's SIGCHLD handler raises an error in the main process for a worker killed by a
    signal or exiting with another status -- in the middle of the main process's own orderly
    stop. A second SIGTERM kills the worker outright."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise SystemExit(0)


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
    """A place where a test may interrupt training (see the module docstring), and where a
    signal that an earlier handler call could not deliver stops the run
    (:meth:`SignalGuard.check`)."""
    if _active is not None:
        _active.check()
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
