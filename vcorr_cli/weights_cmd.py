"""``vcorr weights``: the known pretrained sources, and importing Kinetics checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import click


@click.group()
def weights() -> None:
    """Pretrained weights: list the known sources, convert Kinetics checkpoints.

    \b
    ImageNet ResNets need no conversion: `vcorr train CONFIG --init resnet50.pth` inflates
    them into any model with that ResNet inside (exactly, or it refuses).
    \b
    Examples:
      vcorr weights list
      vcorr weights convert X3D_S.pyth --from pytorchvideo --out ckpt/x3d_s_k400.pt
      vcorr weights convert r2plus1d_18-91a641e6.pth --from torchvision --out ckpt/r2p1d18.pt
      vcorr eval ckpt/x3d_s_k400.pt --data data/k400
    """


@weights.command(name="list")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list instead of a table.")
def list_cmd(as_json: bool) -> None:
    """The known sources: vcorr model, where the file is published, the source's own top-1
    and its input clip (frames x interval, crop, frame rate); then the published models whose
    layout cannot be imported, and why.

    \b
    Examples:
      vcorr weights list
      vcorr weights list --json > sources.json
    """
    from rich.console import Console
    from rich.table import Table

    from vcorr.pipelines.weights import NOT_IMPORTED, SOURCES

    if as_json:
        click.echo(json.dumps({"sources": [s.as_dict() for s in SOURCES],
                               "not_imported": NOT_IMPORTED}, indent=2))
        return
    table = Table(title="Known pretrained weights (accuracy as published by the source)")
    for col, justify in (("source", "left"), ("library", "left"), ("vcorr model", "left"),
                         ("dataset", "left"), ("top-1 %", "right"), ("input clip", "left"),
                         ("file", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "file", overflow="fold")
    for s in SOURCES:
        table.add_row(s.name, s.library, s.model or "(--init: inflated)", s.dataset,
                      f"{s.top1:g}", s.clip, s.url)
    console = Console(width=max(Console().width, 150))  # one line per source where possible
    console.print(table)
    console.print("Not importable (layouts the video ResNet / X3D builders do not express):")
    for name, why in NOT_IMPORTED.items():
        console.print(f"  {name}: {why}")


@weights.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--from", "library", required=True, type=click.Choice(["torchvision", "pytorchvideo"]),
              help="The library that published FILE.")
@click.option("--model", default=None,
              help="vcorr model to write [default: the source's exact layout, e.g. ptv_x3d_s]; "
                   "also picks among layouts that share weights (X3D-XS/S/M).")
@click.option("--out", "out", required=True, type=click.Path(path_type=Path),
              help="The vcorr checkpoint to write (atomically).")
def convert(file: Path, library: str, model: str | None, out: Path) -> None:
    """Convert a torchvision or PyTorchVideo Kinetics-400 checkpoint FILE into a vcorr
    checkpoint with the Kinetics-400 class list and the source's input settings.

    The result evaluates with `vcorr eval CKPT --data K400` (a folder prepared at the source's
    frame rate, see `vcorr weights list`) and fine-tunes with `vcorr train CONFIG --init CKPT`
    (a new classifier where the classes differ).

    \b
    Examples:
      vcorr weights convert X3D_S.pyth --from pytorchvideo --out ckpt/x3d_s_k400.pt
      vcorr weights convert weights.pth --from pytorchvideo --model ptv_x3d_m --out x3d_m.pt
      vcorr weights convert r3d_18-b3b3357e.pth --from torchvision --out ckpt/r3d18.pt
    """
    from rich.console import Console

    from vcorr.pipelines.weights.export import convert_weights

    summary, report = convert_weights(file, library, out, model=model)
    console = Console()
    report.render(console)
    console.print(f"wrote {summary['out']}: {summary['model']} ({summary['params'] / 1e6:.2f} M "
                  f"parameters) from {library} {summary['source']}, published Kinetics-400 top-1 "
                  f"{summary['top1']:g}%, input {summary['clip']} (prepare the data with "
                  f"--fps {summary['fps']:g})")


@weights.command()
def classes() -> None:
    """Print the Kinetics-400 class names in the order of the torchvision and PyTorchVideo
    classifiers (one per line), for `vcorr prepare --labels`.

    \b
    Examples:
      vcorr weights classes > k400_classes.txt
      vcorr prepare --format kinetics --annotations train.csv --annotations validate.csv \\
          --labels k400_classes.txt --root kinetics400 --out data/k400 --fps 30
    """
    from vcorr.pipelines.weights import kinetics400_classes

    click.echo("\n".join(kinetics400_classes()))
