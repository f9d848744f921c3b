"""The ``vcorr`` command group.

Subcommands live in sibling modules and are registered in ``_COMMANDS``; each one only parses
its options and calls a function in ``vcorr.pipelines``. A :class:`vcorr.pipelines.UserError` raised anywhere
becomes one line on stderr and exit code 2.
"""
from __future__ import annotations

import importlib
import sys

import click

from vcorr.pipelines.errors import UserError

# (module, attribute) of each subcommand, in the order ``vcorr --help`` lists them.
_COMMANDS: list[tuple[str, str]] = [
    ("vcorr.cli.data_cmds", "toy"),
    ("vcorr.cli.data_cmds", "prepare"),
    ("vcorr.cli.data_cmds", "inspect"),
    ("vcorr.cli.models_cmd", "models"),
    ("vcorr.cli.weights_cmd", "weights"),
    ("vcorr.cli.train_cmd", "train"),
    ("vcorr.cli.eval_cmds", "eval"),
    ("vcorr.cli.eval_cmds", "compare"),
    ("vcorr.cli.predict_cmds", "predict"),
    ("vcorr.cli.predict_cmds", "extract"),
    ("vcorr.cli.runs_cmd", "runs"),
    ("vcorr.cli.visualize_cmds", "visualize"),
    ("vcorr.cli.bench_cmds", "bench"),
    ("vcorr.cli.demo_cmd", "demo"),
]


class _Group(click.Group):
    """Keeps subcommands in registration order and maps UserError to exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="vcorr")
def cli() -> None:
    """vcorr: video action recognition with correspondence and correlation models.

    \b
    Typical use:
      vcorr demo                   # everything below on the toy dataset, with a report
      vcorr toy data/toy
      vcorr prepare --format list --annotations data/toy/annotations.csv \\
                    --labels data/toy/classes.txt --root data/toy --out data/toy_h5 \\
                    --short-side 0 --codec raw
      vcorr inspect data/toy_h5 --verify
    """


for _module, _name in _COMMANDS:
    cli.add_command(getattr(importlib.import_module(_module), _name))


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="vcorr")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
