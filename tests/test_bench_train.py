"""``vcorr bench train`` on a tiny prepared toy set: it runs the real training loop and reports
clips/s and the data-wait share from the loop's own per-step metrics."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from vcorr.pipelines.bench.train import bench_train
from vcorr.cli.main import cli


def test_bench_train_reports_the_timed_steps(toy_train_prepared: Path) -> None:
    r = bench_train(toy_train_prepared, "toy_c2d", frames=4, crop=32, batch=4, workers=0,
                    steps=3, warmup=1, device="cpu")
    assert r["steps"] == 3                      # warm-up steps are left out
    assert r["clips_per_s"] > 0 and r["step_s_median"] > 0
    assert 0.0 <= r["data_wait_share"] <= 1.0
    assert r["target_met"] == (r["data_wait_share"] < 0.10)


def test_bench_train_cli_writes_json(toy_train_prepared: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench_train.json"
    res = CliRunner().invoke(cli, ["bench", "train", str(toy_train_prepared), "--model", "toy_c2d",
                                   "--frames", "4", "--crop", "32", "--batch", "4",
                                   "--workers", "0", "--steps", "2", "--json", str(out)])
    assert res.exit_code == 0, res.output
    data = json.loads(out.read_text())
    assert data["model"] == "toy_c2d" and data["steps"] == 2 and data["workers"] == 0
    assert "data wait share" in res.output


def test_bench_train_needs_data() -> None:
    res = CliRunner().invoke(cli, ["bench", "train"])
    assert res.exit_code == 2 and "give DATA" in res.output
