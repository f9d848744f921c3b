"""``vcorr models``: the table of registered models (parameters, multiply-adds, default input)."""
from __future__ import annotations

import json

import click


@click.command()
@click.argument("pattern", default="*")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
@click.option("--no-flops", is_flag=True, help="Skip counting multiply-adds (faster).")
def models(pattern: str, as_json: bool, no_flops: bool) -> None:
    """List the registered models matching PATTERN (shell wildcards, default: all).

    Parameters are shown in 10^6 and in 2^20 (the unit of the CPNet paper's tables); GMACs are
    10^9 multiply-adds (FLOPs / 2) of one clip at the model's default input, counted with
    torch.utils.flop_counter (matmuls and convolutions). --json prints a list of objects with
    name, params, gmacs, input_shape [C, T, H, W] and more.

    \b
    Examples:
      vcorr models
      vcorr models 'cpnet_*'
      vcorr models --json --no-flops > models.json
    """
    from rich.console import Console

    from vcorr.pipelines.model_info import model_table, render_model_table

    rows = model_table(pattern, flops=not no_flops)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        render_model_table(rows, Console())
