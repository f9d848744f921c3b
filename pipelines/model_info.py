"""The model table behind ``vcorr models``: parameters, multiply-adds and default input of every
registered model.

Models are built on PyTorch's ``meta`` device, so nothing is allocated or initialised and a
forward pass only propagates shapes; :class:`torch.utils.flop_counter.FlopCounterMode` counts the
FLOPs of matmuls and convolutions (2 per multiply-add). We report multiply-adds (``gmacs`` =
FLOPs / 2 / 1e9), the unit of the CPNet, CorrNet and DCF papers. Element-wise work (BN, ReLU,
softmax, top-k) is not counted. For CPNet the k-NN distance matmul (N^2 C per module) is counted.

A module may state its own count: a method ``macs(*inputs) -> int`` (multiply-adds of one call).
The counter's FLOPs inside such a module are then replaced by ``2 * macs``. The correlation
operator of CorrNet/DCF uses this: it is a custom autograd kernel whose element-wise products
the counter does not see (CorrNet Table 1 / DCF Eq. 2: C * K^2 * (offsets) * T * H * W).
Such modules must not be nested in one another.
"""
from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from vcorr import models
from vcorr.pipelines.errors import UserError

MIB = 2 ** 20  # the CPNet paper's "M" (parameters / 2^20)


def count_gmacs(model: torch.nn.Module, input_shape: tuple[int, ...]) -> float:
    """Multiply-adds (in 1e9) of one forward pass on a (1, *input_shape) clip (eval mode)."""
    device = next(model.parameters()).device
    x = torch.empty((1, *input_shape), device=device)
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    extra, handles = _analytic_counts(model, counter)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return (counter.get_total_flops() + extra[0]) / 2 / 1e9


def _analytic_counts(model: torch.nn.Module, counter: FlopCounterMode) -> tuple[list[int], list]:
    """Hooks that swap the FLOPs counted inside modules with a ``macs`` method for 2 * macs."""
    extra, entered = [0], []

    def before(module: torch.nn.Module, inputs: tuple) -> None:
        entered.append(counter.get_total_flops())

    def after(module: torch.nn.Module, inputs: tuple, output: Any) -> None:
        seen = counter.get_total_flops() - entered.pop()
        extra[0] += 2 * int(module.macs(*inputs)) - seen

    handles = []
    for module in model.modules():
        if callable(getattr(module, "macs", None)):
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
    return extra, handles


def model_row(name: str, *, flops: bool = True) -> dict[str, Any]:
    """One table row: name, paper, params (int and in 1e6 / 2^20), GMACs, default input."""
    entry = models.get_model_entry(name)
    start = time.perf_counter()
    with torch.device("meta"):
        model = models.create_model(name)
    params = sum(p.numel() for p in model.parameters())
    row: dict[str, Any] = {
        "name": name,
        "paper": entry.paper,
        "params": int(params),
        "params_1e6": params / 1e6,
        "params_2p20": params / MIB,
        "paper_params_2p20": entry.paper_params_m,
        "gmacs": count_gmacs(model, entry.input_shape) if flops else None,
        "input_shape": list(entry.input_shape),
        "frames": entry.input_shape[1],
        "num_classes": entry.num_classes,
    }
    row["seconds"] = time.perf_counter() - start
    return row


def model_table(pattern: str = "*", *, flops: bool = True) -> list[dict[str, Any]]:
    """Rows of :func:`model_row` for every registered model matching ``pattern``."""
    names = models.list_models(pattern)
    if not names:
        raise UserError(f"no registered model matches {pattern!r}; try `vcorr models` for the list")
    return [model_row(n, flops=flops) for n in names]


def render_model_table(rows: list[dict[str, Any]], console: Any) -> None:
    """Print ``rows`` as a rich table on ``console``. On a console narrower than the table
    with its ``paper`` column (80 columns: a pipe, a log file), the papers are listed under
    the table instead, so that no column is squeezed into one letter per line."""
    from rich import box
    from rich.table import Table

    caption = ("M = 10^6 parameters; M2 = 2^20 parameters (the CPNet paper's unit); GMACs = "
               "10^9 multiply-adds (FLOPs/2, matmuls, convs, correlations) of one clip at the "
               "default input C x T x H x W")

    def build(with_paper: bool) -> Table:
        table = Table(title="vcorr models", box=box.SIMPLE_HEAD, pad_edge=False, padding=(0, 1),
                      collapse_padding=True,
                      caption=caption if with_paper else None)
        table.add_column("name", no_wrap=True)
        for col in ("M", "M2", "paper M2", "GMACs"):
            table.add_column(col, justify="right", no_wrap=True)
        table.add_column("input", no_wrap=True)
        table.add_column("classes", justify="right", no_wrap=True)
        if with_paper:
            table.add_column("paper", no_wrap=True)
        for r in rows:
            cells = [r["name"], f"{r['params_1e6']:.2f}", f"{r['params_2p20']:.2f}",
                     "" if r["paper_params_2p20"] is None else f"{r['paper_params_2p20']:.2f}",
                     "-" if r["gmacs"] is None else f"{r['gmacs']:.2f}",
                     "x".join(map(str, r["input_shape"])), str(r["num_classes"])]
            table.add_row(*cells, *([r["paper"]] if with_paper else []))
        return table

    full = build(True)
    # measured unbounded: console.measure() alone caps the width at the console's
    natural = console.measure(full, options=console.options.update(max_width=10**6)).maximum
    if natural <= console.width:
        console.print(full)
        return
    console.print(build(False))
    console.print(caption)
    console.print("papers:")
    for r in rows:
        console.print(f"  {r['name']}: {r['paper']}")
