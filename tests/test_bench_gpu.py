"""GPU figures in one script (issue 16, item 5), checked without a GPU: ``vcorr bench gpu
--tiny`` runs every section of the script at toy sizes on the CPU (the same code the GPU run
takes, bar the CUDA calls of :mod:`vcorr.pipelines.runtime`), the README's GPU tables are what the
script writes (all "not measured" until a GPU run fills them), every model benchmark refuses
``--device cuda`` with one line where there is no CUDA, the unfold baseline equals the
correlation operator, and the ``--compile`` / ``--channels-last`` variants of ``bench models``
run. GPU figures themselves come only from a GPU run of ``vcorr bench gpu``.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from vcorr.pipelines.bench.correlation import unfold_reference
from vcorr.pipelines.bench.gpu import METHODS, NOT_MEASURED, gpu_markdown
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.runtime import resolve_device

README = Path(__file__).resolve().parents[1] / "README.md"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")


def test_gpu_bench_tiny_runs_every_section(tmp_path: Path, toy_train_prepared: Path) -> None:
    from vcorr.cli.main import cli

    out = tmp_path / "gpu"
    r = CliRunner().invoke(cli, ["bench", "gpu", "--device", "cpu", "--tiny", "--out", str(out),
                                 "--data", str(toy_train_prepared)], prog_name="vcorr")
    assert r.exit_code == 0, r.output + repr(r.exception)
    b = json.loads((out / "bench_gpu.json").read_text())
    assert b["tiny"] is True and b["device"] == "cpu"
    assert [c["name"] for c in b["correlation"]] == ["CorrNet-26 res2", "DCF X3D-S largest stage"]
    dcf = b["correlation"][1]
    # DCF X3D-S's largest correlation: its first DCF stage, offsets -2..2 without 0, K=5
    assert dcf["offsets"] == [-2, -1, 1, 2] and dcf["dilations"] == [2, 1, 1, 2]
    assert dcf["kernel_size"] == 5 and dcf["clip_ends"] == "zero"
    assert dcf["scale"] == pytest.approx(1 / math.sqrt(dcf["input_shape"][1]))
    for case in b["correlation"]:
        for dname in ("fp32", "bf16"):
            rows = case["results"][dname]["methods"]
            assert set(rows) == set(METHODS)
            for method in ("torch", "unfold"):   # run everywhere; Triton only on a GPU
                row = rows[method]
                assert row["status"] == "ok" and row["best_s"] > 0 and row["peak_bytes"] > 0
                # agreement with the PyTorch operator in fp32 on the same rounded inputs
                limit = 1e-5 if dname == "fp32" else 0.05
                assert row["max_rel_error_vs_torch_fp32"] < limit, (case["name"], dname, method)
            assert rows["triton"]["status"] != "ok"      # no GPU here: never a Triton figure
    assert [s["models"] for s in b["steps"]] == [["cpnet_r18", "c2d_r18"],
                                                 ["corrnet_26", "r2plus1d_26"]]
    assert all(s["time_ratio"] > 0 for s in b["steps"])
    assert b["knn"]["same_neighbours"] is True
    assert b["eval"]["views_per_video"] == 30 and 0 <= b["eval"]["overhead_share"] <= 1
    table = (out / "bench_gpu.md").read_text()
    assert table == gpu_markdown(b) and "tiny check, not a measurement" in table
    assert "GPU: CPU" in table.splitlines()[0]
    # a second run into the same folder stops (the output-folder rule)
    r = CliRunner().invoke(cli, ["bench", "gpu", "--device", "cpu", "--tiny", "--out", str(out)],
                           prog_name="vcorr")
    assert r.exit_code == 2 and "--overwrite" in r.output


def test_readme_gpu_tables_are_the_scripts_and_not_measured() -> None:
    """The README shows the script's tables, every figure "not measured", and the command."""
    text = README.read_text(encoding="utf-8")
    assert gpu_markdown(None) in text
    assert "vcorr bench gpu" in text
    lines = gpu_markdown(None).splitlines()
    headers = {lines[i - 1] for i, line in enumerate(lines) if line.startswith("|---")}
    rows = [line for line in lines if line.startswith("| ") and line not in headers]
    assert len(rows) == 10
    for row in rows:                                   # no figure at all in the table body
        assert not re.search(r"\d+(\.\d+)? ?(ms|MiB|GiB|x|%)( |,|\|)", row), row
        assert row.rstrip(" |").endswith(NOT_MEASURED)


def test_full_gpu_bench_refuses_the_cpu() -> None:
    from vcorr.pipelines.bench.gpu import run_gpu_bench

    with pytest.raises(UserError, match="--device cuda"):
        run_gpu_bench("cpu")


@no_cuda
@pytest.mark.parametrize("args", [
    ["gpu"], ["models"], ["knn"], ["correlation"], ["train", "--synthetic", "NEVER"],
    ["eval", "--synthetic", "NEVER"], ["models", "--device", "cuda:0"]])
def test_every_model_bench_refuses_cuda_without_cuda(args: list[str], tmp_path: Path) -> None:
    """One line, exit 2, nothing written (the synthetic-data folder is never made)."""
    from vcorr.cli.main import cli

    args = [a.replace("NEVER", str(tmp_path / "never")) for a in args]
    if "--device" not in args:
        args += ["--device", "cuda"]
    r = CliRunner().invoke(cli, ["bench", *args], prog_name="vcorr")
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and "CUDA is not available on this machine" in lines[0]
    assert not (tmp_path / "never").exists()


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="not a device"):
        resolve_device("gpu0")
    with pytest.raises(UserError, match="only cpu and cuda"):
        resolve_device("meta")


@pytest.mark.parametrize("kw, weighted", [
    ({"kernel_size": 3, "groups": 2, "offsets": (-1,), "dilations": (2,), "clip_ends": "self",
      "scale": 0.25}, True),                                           # CorrNet
    ({"kernel_size": 5, "groups": 1, "offsets": (-2, -1, 1, 2), "dilations": (2, 1, 1, 2),
      "clip_ends": "zero", "scale": 1 / math.sqrt(8)}, False),          # DCF long-term
    ({"kernel_size": 3, "groups": 4, "offsets": (2, -3), "dilations": (1, 3),
      "clip_ends": "self", "scale": 0.5}, True),                       # borders, shared weight
])
def test_unfold_baseline_equals_the_operator(kw: dict, weighted: bool) -> None:
    """The unfold formulation timed against the kernels computes the same function (float64,
    values and gradients), so the benchmark compares like with like."""
    from vcorr.models.ops import correlation

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    w = None
    if weighted:
        steps = 1 if kw["offsets"] == (2, -3) else 5
        w = torch.randn(8, steps, kw["kernel_size"], kw["kernel_size"], generator=g,
                        dtype=torch.float64, requires_grad=True)
    inputs = (x, w) if w is not None else (x,)
    ref = correlation(x, w, **kw)
    got = unfold_reference(x, w, **kw)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    grad = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad(got, inputs, grad), torch.autograd.grad(ref, inputs, grad)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bench_models_variants_and_amp() -> None:
    """Eager, compiled (aot_eager: tracing without the C++ compiler) and channels-last steps of
    the same models, interleaved, with speed-ups against eager; bf16 autocast on the CPU."""
    from vcorr.pipelines.bench.models import bench_models

    r = bench_models(["toy_cpnet", "toy_c2d"], frames=3, size=8, batch=2, repeats=1,
                     variants=("eager", "compile", "channels_last"), compile_backend="aot_eager",
                     amp="bf16")
    assert r["variants"] == ["eager", "compile", "channels_last"] and r["amp"] == "bf16"
    for name in r["models"]:
        v = r["results"][name]["variants"]
        assert set(v) == {"eager", "compile", "channels_last"}
        assert v["eager"]["speedup_vs_first"] == 1.0
        assert all(row["step_best_s"] > 0 and row["peak_bytes"] > 0 for row in v.values())
    with pytest.raises(UserError, match="fp16 needs --device cuda"):
        bench_models(["toy_c2d"], amp="fp16")
    with pytest.raises(UserError, match="unknown variant"):
        bench_models(["toy_c2d"], variants=("fast",))
