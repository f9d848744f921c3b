"""``vcorr bench knn`` and ``vcorr bench models`` (issue 3) on tiny inputs: the bench functions
return their JSON keys with sane values, the k-NN agreement check tells ties from wrong
neighbours, and the CLI writes valid JSON. The real sizes are for ``vcorr bench``, not tests.
"""
from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from vcorr.pipelines.bench.models import bench_knn, bench_models, neighbour_agreement, parse_model_list
from vcorr.pipelines.errors import UserError

KNN_KEYS = {"same_neighbours", "peak_memory_ratio_vs_naive", "time_ratio_vs_matmul", "batch",
            "channels", "frames", "size", "k", "positions", "floor_best_s", "chunked_best_s",
            "naive_best_s", "chunked_peak_bytes", "naive_matrix_bytes", "targets", "targets_met"}


@pytest.mark.parametrize("channels,frames,size", [(8, 3, 4), (64, 2, 16)])
def test_bench_knn_tiny(channels: int, frames: int, size: int) -> None:
    """Tiny clips (the second one is large enough for the oneDNN path where it exists)."""
    r = bench_knn(batch=1, channels=channels, frames=frames, size=size, k=4, repeats=1)
    assert KNN_KEYS <= set(r)
    assert r["same_neighbours"] is True and r["chunked_blas_same_neighbours"] is True
    assert r["agreement"]["rows"] == frames * size * size
    for key in ("time_ratio_vs_matmul", "peak_memory_ratio_vs_naive", "floor_best_s",
                "chunked_best_s", "naive_best_s", "speedup_vs_naive"):
        assert r[key] > 0, key
    assert r["naive_matrix_bytes"] == 4 * (frames * size * size) ** 2
    assert r["threads"] == 1 and isinstance(r["targets_met"], bool)
    json.dumps(r)


def test_neighbour_agreement_ties_and_errors() -> None:
    """Equal-distance neighbours in either order are ties; a farther neighbour, or the right
    ones not nearest first, are real differences."""
    feat = torch.zeros(1, 2, 8)
    feat[0, 0] = torch.tensor([0.0, 0.0, 1.0, -1.0, 5.0, 0.0, 0.0, 0.0])
    ref = torch.tensor([[[2, 3]]]).expand(1, 8, 2).clone()   # from 0: both at distance 1
    assert neighbour_agreement(feat, ref, ref)["rows_differing"] == 0
    tie = ref.clone()
    tie[0, 0] = torch.tensor([3, 2])
    r = neighbour_agreement(feat, tie, ref)
    assert r["same"] and r["rows_differing"] == 1 and r["max_distance_gap"] == 0
    order = ref.clone()
    order[0, 4] = torch.tensor([3, 2])                      # from 5: 36 before 16
    wrong = ref.clone()
    wrong[0, 0, 1] = 4                                      # distance 25 instead of 1
    for bad in (order, wrong):
        r = neighbour_agreement(feat, bad, ref)
        assert not r["same"] and r["rows_differing_beyond_float32_ties"] == 1


def test_bench_models_tiny() -> None:
    r = bench_models(["toy_cpnet", "toy_c2d"], frames=4, size=16, batch=2, repeats=1)
    assert r["models"] == ["toy_cpnet", "toy_c2d"] and r["baseline"] == "toy_c2d"
    for name in r["models"]:
        row = r["results"][name]
        assert row["step_best_s"] > 0 and row["peak_bytes"] > 0 and row["params"] > 0
    assert r["results"]["toy_c2d"]["time_ratio"] == 1.0
    assert r["time_ratio"] > 0 and r["peak_memory_ratio"] > 0
    assert isinstance(r["targets_met"], bool)
    json.dumps(r)


def test_parse_model_list() -> None:
    assert parse_model_list("cpnet_r18, c2d_r18") == ["cpnet_r18", "c2d_r18"]
    with pytest.raises(UserError, match="unknown model"):
        parse_model_list("cpnet_r18,no_such_model")
    with pytest.raises(UserError):
        parse_model_list(" , ")


def test_cli_writes_json(tmp_path) -> None:
    from vcorr.cli.main import cli

    runner = CliRunner()
    out = tmp_path / "knn.json"
    res = runner.invoke(cli, ["bench", "knn", "--batch", "1", "--channels", "8", "--frames", "3",
                              "--size", "4", "-k", "4", "--repeats", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert KNN_KEYS <= set(r) and r["same_neighbours"] is True
    assert "same neighbours" in res.output

    out = tmp_path / "vcorr.models.json"
    res = runner.invoke(cli, ["bench", "models", "--models", "toy_cpnet,toy_c2d", "--frames", "4",
                              "--size", "16", "--batch", "2", "--repeats", "1", "--json", str(out)])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert set(r["results"]) == {"toy_cpnet", "toy_c2d"} and r["time_ratio"] > 0
    assert not list(tmp_path.glob(".*.tmp"))          # atomic write left no temporary file

    res = runner.invoke(cli, ["bench", "models", "--models", "nope"])
    assert res.exit_code == 2 and "unknown model" in res.output


@pytest.mark.parametrize("command", ["knn", "models"])
def test_cli_help_has_examples(command: str) -> None:
    from vcorr.cli.main import cli

    res = CliRunner().invoke(cli, ["bench", command, "--help"])
    assert res.exit_code == 0 and "Examples:" in res.output
    assert f"vcorr bench {command}" in res.output
