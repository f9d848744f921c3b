"""``vcorr bench``: speed and memory benchmarks, printed as tables and optionally saved as JSON.

Each benchmark lives in its own module and is registered in ``_BENCHES``.
"""
from __future__ import annotations

import importlib

import click


class _BenchGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_BenchGroup)
def bench() -> None:
    """Measure speed and memory of vcorr's components.

    \b
    Examples:
      vcorr bench prepare my_videos/ --workers 2 --json bench_prepare.json
      vcorr bench loader data/toy_h5 --json bench_loader.json
      vcorr bench shards /tmp/many_shards
      vcorr bench knn --json bench_knn.json
      vcorr bench models --json bench_models.json
      vcorr bench train data/k400_12 --model c2d_r18
      vcorr bench eval data/k400_12 --model c2d_r18 --clips 25 --crops 10
    """


_BENCHES: list[tuple[str, str]] = [
    ("vcorr_cli.bench_data", "loader"),
    ("vcorr_cli.bench_data", "prepare_bench"),
    ("vcorr_cli.bench_data", "shards"),
    ("vcorr_cli.bench_models", "knn"),
    ("vcorr_cli.bench_models", "models"),
    ("vcorr_cli.bench_corr", "correlation"),
    ("vcorr_cli.bench_train", "train"),
    ("vcorr_cli.bench_eval", "eval"),
]

for _module, _name in _BENCHES:
    bench.add_command(getattr(importlib.import_module(_module), _name))
