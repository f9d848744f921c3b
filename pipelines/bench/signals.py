"""Stop-signal stress benchmark (issue 24, item B): ``vcorr train`` stopped by SIGINT or SIGTERM
at many random moments, sent to the main process only or to its whole process group, with and
without loader workers. For every run: the exit code (128 + signal), the seconds from the
signal to the exit, the "interrupted" line, no process of the run's group left behind, and
(``check_resume``) that ``vcorr train --out RUN --resume`` ends bit-identical to an
uninterrupted run (parameters, buffers, optimiser state, metrics without timings).

Each run is one ``python -m vcorr.cli train`` in a new session (its process group is its own);
the moment is "after the k-th metrics record (one per step and one per validation) plus up to
``max_delay`` s", k and the delay drawn from a seeded RNG. ``tests/test_signals.py`` runs the
short form (8 runs) with :func:`interrupt_run`.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

TIMING_KEYS = ("clips_per_s", "data_wait", "peak_mem_mib", "seconds")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _records(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return -1


def interrupt_run(args: list[str], out: Path, signum: int, group: bool, after_records: int,
                  delay: float, exit_within: float = 30.0) -> dict[str, Any]:
    """Run ``python -m vcorr.cli train ARGS --out OUT`` in a new session and send ``signum``
    once ``OUT/metrics.jsonl`` has ``after_records`` records, plus ``delay`` seconds, to the
    main process or (``group``) its whole process group.

    Returns ``code`` (None: still running ``exit_within`` s after the signal; it is then
    killed), ``seconds`` (signal to exit), ``left`` (a process of the group outlived the main
    one by more than 1 s), ``finished_first`` (the run printed "done:" before the signal
    arrived) and ``output`` (stdout and stderr)."""
    cmd = [sys.executable, "-m", "vcorr.cli", "train", *args, "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    env.pop("VCORR_FAULT", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    log_path = out.parent / f"{out.name}.log"
    metrics = out / "metrics.jsonl"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            started = time.monotonic()
            while (proc.poll() is None and _records(metrics) < after_records
                   and time.monotonic() - started < 300):
                time.sleep(0.003)
            time.sleep(delay)
            sent = time.monotonic()
            try:
                if group:
                    os.killpg(proc.pid, signum)
                else:
                    proc.send_signal(signum)
            except ProcessLookupError:
                pass
            try:
                code: int | None = proc.wait(timeout=exit_within)
            except subprocess.TimeoutExpired:
                code = None
            seconds = time.monotonic() - sent
            deadline = time.monotonic() + 1.0  # an orphan on its way out is not a leak
            while _group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            left = _group_alive(proc.pid)
        finally:
            if _group_alive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    output = log_path.read_text(errors="replace")
    return {"code": code, "seconds": seconds, "left": left, "output": output,
            "finished_first": code is not None and "done:" in output
            and f"interrupted ({signal.Signals(signum).name})" not in output}


def same_run(got: Path, want: Path) -> str | None:
    """None if two finished runs hold the same model, optimiser state, position and metrics
    (timings aside), else what differs."""
    import torch

    from vcorr.pipelines.train.checkpoint import load_checkpoint

    def same(a: Any, b: Any) -> bool:
        if isinstance(a, torch.Tensor):
            return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        if isinstance(a, dict):
            return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    def records(run: Path) -> list[dict]:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    a, b = load_checkpoint(got / "last.pt"), load_checkpoint(want / "last.pt")
    for key in ("model", "optimizer", "position"):
        if not same(a[key], b[key]):
            return key
    if records(got) != records(want):
        return "metrics.jsonl"
    return None


def run_stress(config: str | Path, out: str | Path, runs: int = 50, seed: int = 0,
               workers: tuple[int, ...] = (2, 0), max_delay: float = 0.2,
               check_resume: bool = True, exit_within: float = 30.0) -> dict[str, Any]:
    """``runs`` interrupted runs of the training config ``config`` (a TOML file with its
    data.root; a few epochs of a small model make the window wide) in folder ``out``. The
    moments are drawn over the run's records, found by one uninterrupted reference run.

    Returns ``runs`` (one dict each: workers, signal, group, after_records, delay, code,
    seconds, left, interrupted, resumed_same), and ``summary``: counts of runs stopped
    correctly, still running after ``exit_within`` s (hangs), wrong exit codes, leftover
    processes, resumes that differ, runs that finished before the signal, and the largest and
    median exit time."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = [str(config), "--device", "cpu", "--no-progress"]
    reference = out / "reference"
    if not (reference / "last.pt").is_file():
        subprocess.run([sys.executable, "-m", "vcorr.cli", "train", *base, "--out",
                        str(reference), "--overwrite"], check=True, capture_output=True,
                       env=dict(os.environ, OMP_NUM_THREADS="1"))
    total = _records(reference / "metrics.jsonl")
    rng = random.Random(seed)
    rows = []
    for i in range(runs):
        w = workers[i % len(workers)]
        signum = rng.choice([signal.SIGINT, signal.SIGTERM])
        group = rng.random() < 0.5
        after, delay = rng.randrange(0, max(total - 3, 1)), rng.uniform(0.0, max_delay)
        run_dir = out / f"run{i:03d}"
        args = base + ["--overwrite", "--set", f"data.workers={w}"]
        r = interrupt_run(args, run_dir, signum, group, after, delay, exit_within)
        name = signal.Signals(signum).name
        row = {"workers": w, "signal": name, "group": group, "after_records": after,
               "delay": round(delay, 3), "code": r["code"], "seconds": round(r["seconds"], 2),
               "left": r["left"], "finished_first": r["finished_first"],
               "interrupted": (r["code"] == 128 + signum and f"interrupted ({name})"
                               in r["output"] and "Traceback" not in r["output"]),
               "resumed_same": None}
        if check_resume and row["interrupted"]:
            resume = ([str(config), "--overwrite", "--set", f"data.workers={w}"]
                      if not (run_dir / "last.pt").is_file() else ["--resume"])
            done = subprocess.run([sys.executable, "-m", "vcorr.cli", "train", "--out",
                                   str(run_dir), "--device", "cpu", "--no-progress", *resume],
                                  capture_output=True, text=True,
                                  env=dict(os.environ, OMP_NUM_THREADS="1"))
            row["resumed_same"] = (done.returncode == 0
                                   and same_run(run_dir, reference) is None)
        rows.append(row)
    stopped = [r for r in rows if not r["finished_first"]]
    times = sorted(r["seconds"] for r in stopped if r["code"] is not None)
    summary = {
        "runs": len(rows), "finished_before_signal": len(rows) - len(stopped),
        "stopped_cleanly": sum(r["interrupted"] and not r["left"] for r in stopped),
        "hangs": sum(r["code"] is None for r in stopped),
        "wrong_exit": sum(r["code"] is not None and not r["interrupted"] for r in stopped),
        "processes_left": sum(r["left"] for r in stopped),
        "resume_differs": sum(r["resumed_same"] is False for r in rows),
        "max_exit_s": times[-1] if times else None,
        "median_exit_s": times[len(times) // 2] if times else None,
    }
    return {"runs": rows, "summary": summary}


def render(result: dict[str, Any]) -> list[str]:
    """One line per failing run and the summary line."""
    lines = []
    for i, r in enumerate(result["runs"]):
        ok = (r["finished_first"] or (r["interrupted"] and not r["left"]
                                      and r["resumed_same"] is not False))
        if not ok:
            lines.append(f"run {i}: workers {r['workers']} {r['signal']} to "
                         f"{'the group' if r['group'] else 'the main process'} after record "
                         f"{r['after_records']} + {r['delay']} s: exit {r['code']} in "
                         f"{r['seconds']} s, left {r['left']}, resume same {r['resumed_same']}")
    s = result["summary"]
    lines.append(f"{s['runs']} runs: {s['stopped_cleanly']} stopped cleanly, {s['hangs']} hung, "
                 f"{s['wrong_exit']} wrong exit, {s['processes_left']} left processes, "
                 f"{s['resume_differs']} resumed differently, {s['finished_before_signal']} "
                 f"finished before the signal; exit in at most {s['max_exit_s']} s "
                 f"(median {s['median_exit_s']} s)")
    return lines
