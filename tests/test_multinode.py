"""Training across nodes (issue 24, item 4): ``torchrun --nnodes 2`` as two launchers on this
machine that meet through a c10d rendezvous on localhost (gloo, one CPU process per "node"),
exactly as two SLURM nodes would (``examples/train_slurm.sh``).

* The two-node run trains, and its weights equal a one-launcher two-process run's bit for bit
  (``--standalone --nproc_per_node 2``): nothing depends on how the ranks were placed.
* Interrupted on every rank at the same step (each process sends itself SIGTERM there, as
  ``scancel`` does to every task) and resumed with the same command plus ``--resume``, it
  ends with the uninterrupted run's weights, bit for bit.
* ``vcorr eval`` under the same two-node launch gives the metrics of one process.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TOY_C2D = REPO / "examples" / "configs" / "toy_c2d.toml"
TIMEOUT = 240


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VCORR_FAULT", "RANK",
                                                                    "WORLD_SIZE", "LOCAL_RANK",
                                                                    "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _two_nodes(args: list[str], cwd: Path, **env: str) -> list[subprocess.CompletedProcess]:
    """``torchrun --nnodes 2 --nproc_per_node 1`` twice, meeting at a c10d rendezvous."""
    port = _port()
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
              "--nproc_per_node", "1", "--rdzv_backend", "c10d", "--rdzv_endpoint",
              f"127.0.0.1:{port}", "--rdzv_id", f"vcorr{port}", "--max_restarts", "0",
              "-m", "vcorr.cli", *args]
    procs = [subprocess.Popen(launch, cwd=cwd, env=_env(**env), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    out = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a two-node launch did not end in {TIMEOUT} s: {args}")
        out.append(subprocess.CompletedProcess(launch, p.returncode, text, ""))
    return out


def _train_args(data: Path, out: Path) -> list[str]:
    return ["train", str(TOY_C2D), "--data", str(data), "--out", str(out), "--no-progress",
            "--device", "cpu", "--set", "data.workers=0", "--set", "optim.batch_size=8",
            "--set", "optim.epochs=2", "--set", "optim.warmup_epochs=0",
            "--set", "model.args={width=8}", "--set", "train.val_every=1"]


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "last.pt", weights_only=True)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, toy_train_prepared: Path) -> Path:
    run = tmp_path_factory.mktemp("nodes") / "whole"
    res = _two_nodes(_train_args(toy_train_prepared, run), run.parent)
    assert all(r.returncode == 0 for r in res), res[0].stdout[-3000:] + res[1].stdout[-3000:]
    return run


def test_two_nodes_train_like_two_processes_on_one(uninterrupted: Path, tmp_path: Path,
                                                   toy_train_prepared: Path) -> None:
    ckpt = torch.load(uninterrupted / "last.pt", weights_only=True)
    assert ckpt["position"]["global_step"] == 2 * (24 // 8)  # 24 training videos, batch 8
    one = tmp_path / "one"
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node", "2", "-m", "vcorr.cli",
                        *_train_args(toy_train_prepared, one)], cwd=tmp_path, env=_env(),
                       capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    _same(_weights(uninterrupted), _weights(one))


def test_two_nodes_interrupted_on_every_rank_resume_exactly(uninterrupted: Path, tmp_path: Path,
                                                            toy_train_prepared: Path) -> None:
    run = tmp_path / "part"
    # every process stops itself at its 4th forward pass: step 4 of 6, in epoch 2
    res = _two_nodes(_train_args(toy_train_prepared, run), tmp_path,
                     VCORR_FAULT="forward@4:SIGTERM")
    text = res[0].stdout + res[1].stdout
    assert "interrupted (SIGTERM)" in text, text[-3000:]
    part = torch.load(run / "last.pt", weights_only=True)
    assert part["position"]["global_step"] == 3
    res = _two_nodes(_train_args(toy_train_prepared, run) + ["--resume"], tmp_path)
    assert all(r.returncode == 0 for r in res), res[0].stdout[-3000:] + res[1].stdout[-3000:]
    done = torch.load(run / "last.pt", weights_only=True)
    assert done["position"] == torch.load(uninterrupted / "last.pt",
                                          weights_only=True)["position"]
    _same(_weights(uninterrupted), _weights(run))
    whole = [json.loads(x) for x in (uninterrupted / "metrics.jsonl").read_text().splitlines()]
    resumed = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    keys = ("epoch", "step", "split", "loss", "top1")
    assert [tuple(r.get(k) for k in keys) for r in whole] == [
        tuple(r.get(k) for k in keys) for r in resumed]


def test_eval_across_two_nodes_equals_one_process(uninterrupted: Path, tmp_path: Path,
                                                  toy_train_prepared: Path) -> None:
    args = ["eval", str(uninterrupted / "last.pt"), "--data", str(toy_train_prepared),
            "--clips", "2", "--crops", "3", "--workers", "0", "--device", "cpu",
            "--no-progress"]
    res = _two_nodes(args + ["--out", str(tmp_path / "nodes")], tmp_path)
    assert all(r.returncode == 0 for r in res), res[0].stdout[-3000:]
    p = subprocess.run([sys.executable, "-m", "vcorr.cli", *args, "--out", str(tmp_path / "one")],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0, p.stderr[-2000:]
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("nodes", "one"))
    assert a["num_videos"] == b["num_videos"] == 8
    for k in ("top1", "mean_class_accuracy", "confusion_matrix", "per_class"):
        assert a[k] == b[k], k
