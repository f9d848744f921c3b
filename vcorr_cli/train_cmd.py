"""``vcorr train``: parse options, load the config, call :func:`vcorr.pipelines.train.train`."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("config", type=click.Path(path_type=Path), required=False)
@click.option("--data", type=click.Path(path_type=Path),
              help="Prepared dataset folder (sets data.root).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              help="Run folder for checkpoints, metrics and the resolved config "
                   "[default: runs/<config name>].")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Override a config value, e.g. --set optim.lr=0.1 --set phases.1.frames=16 "
                   "(repeatable; values are TOML: 8, 0.1, true, [128, 160], \"x\").")
@click.option("--resume", is_flag=True,
              help="Continue the run in --out from its last.pt (CONFIG may be left out).")
@click.option("--extend", type=click.IntRange(min=1), default=None, metavar="EPOCHS",
              help="With --resume: append a phase of EPOCHS epochs to the run (finished or "
                   "not): the last phase's clips, batch and BN mode under the config's "
                   "schedule, restarted (warmup included); recorded in the run.")
@click.option("--extend-lr", type=click.FloatRange(min=0, min_open=True), default=None,
              help="The learning rate of the --extend phase [default: the last phase's].")
@click.option("--init", "init", type=click.Path(path_type=Path),
              help="Start from these weights: a vcorr checkpoint, a state dict, torchvision 2D "
                   "ResNet weights (inflated to the video model), or a torchvision / "
                   "PyTorchVideo Kinetics checkpoint. A partial load is an error; the report "
                   "goes to RUN_DIR/init_report.json.")
@click.option("--partial-init", is_flag=True,
              help="Allow --init to leave model tensors at their initial values (or to skip "
                   "file tensors) beyond a new classifier and identity-initialised plug-ins.")
@click.option("--overwrite", is_flag=True,
              help="Start a new run in --out even if it holds one: the old run is moved aside "
                   "to RUN_DIR.old-N, never mixed with the new one.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Force a device [default: CUDA when present].")
@click.option("--no-progress", is_flag=True, help="No progress bar or progress lines.")
def train(config: Path | None, data: Path | None, out_dir: Path | None, sets: tuple[str, ...],
          resume: bool, extend: int | None, extend_lr: float | None, init: Path | None,
          partial_init: bool, overwrite: bool,
          device: str | None,
          no_progress: bool) -> None:
    """Train a registered model as described by CONFIG (TOML).

    Writes RUN_DIR/config.toml (resolved), metrics.jsonl (one record per logged step and per
    validation), last.pt and best.pt (atomic), summary.json. Under torchrun every process
    trains one shard of each batch (DistributedDataParallel: nccl on GPUs, gloo on CPUs).

    A folder that holds a run is not trained over: continue it with --resume (keys that do
    not change the experiment, such as data.root, data.workers or train.val_every, may
    change), or give another --out, or --overwrite. The config is checked against the data
    before the first step; a start that fails leaves nothing behind. Ctrl-C or SIGTERM (SLURM)
    at any moment keeps last.pt at the last completed step, from which --resume continues
    exactly.

    \b
    Examples:
      vcorr train examples/configs/toy_cpnet.toml --data data/toy_h5 --out runs/toy_cpnet
      vcorr train cfg.toml --data data/k400 --set optim.lr=0.02 --set data.workers=8
      vcorr train --out runs/toy_cpnet --resume
      vcorr train cfg.toml --data data/ssv1 --init resnet50-0676ba61.pth
      vcorr train --out runs/toy_cpnet --resume --set data.workers=8
      vcorr train --out runs/toy_cpnet --resume --extend 10 --extend-lr 0.001
      vcorr train examples/configs/toy_cpnet.toml --data data/toy_h5 --out runs/toy_cpnet --overwrite
      torchrun --nproc_per_node 8 -m vcorr.cli train cfg.toml --data /data/k400 --out runs/k
    """
    import os
    import signal
    import threading

    def stop(signum: int, frame: object) -> None:
        raise _Stopped(signum)

    on_main_thread = threading.current_thread() is threading.main_thread()
    if on_main_thread:
        # Before the run's own handling starts (imports, config, checks), SIGTERM stops like
        # Ctrl-C: one "interrupted" line, not a silent kill.
        signal.signal(signal.SIGTERM, stop)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun, rank 0 reports
    if out_dir is None and config is not None:
        out_dir = Path("runs") / config.stem
    try:
        summary = _run(config, data, out_dir, sets, resume, extend, extend_lr, init,
                       partial_init, overwrite, device, no_progress)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        if main:
            name = signal.Signals(signum).name
            if out_dir is not None and (out_dir / "last.pt").is_file():
                click.echo(f"interrupted ({name}): {out_dir / 'last.pt'} holds the state after "
                           f"the last completed step; continue with: vcorr train --out "
                           f"{out_dir} --resume", err=True)
            else:
                click.echo(f"interrupted ({name}) before the first checkpoint; nothing to "
                           "resume", err=True)
        raise SystemExit(128 + int(signum)) from None
    if main:
        best = summary["best_val_top1"]
        click.echo(f"done: {out_dir} (best val top-1 "
                   f"{'-' if best is None else f'{100 * best:.1f}%'}, "
                   f"{summary.get('run_seconds', summary['seconds']):.0f} s in all)")
    if on_main_thread:
        # Everything is written: a stop signal from here on ends the process at once, without
        # a traceback from Python's exit handlers.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: os._exit(128 + signum))


class _Stopped(KeyboardInterrupt):
    """SIGTERM before the trainer's own signal handling: stops like Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__("SIGTERM")
        self.signum = signum


def _run(config: Path | None, data: Path | None, out_dir: Path | None, sets: tuple[str, ...],
         resume: bool, extend: int | None, extend_lr: float | None, init: Path | None,
         partial_init: bool, overwrite: bool, device: str | None, no_progress: bool) -> dict:
    """Load the config (the run's own for a resume without CONFIG) and train."""
    from vcorr.pipelines.errors import UserError
    from vcorr.pipelines.train import load_config, train as run_train
    from vcorr.pipelines.train.checkpoint import load_checkpoint

    if (extend is not None or extend_lr is not None) and not resume:
        raise UserError("--extend continues a run: give it with --resume and the run's --out")
    if config is None and not resume:
        raise UserError("give a CONFIG file (or --resume with --out RUN_DIR)")
    if out_dir is None:
        raise UserError("--resume needs --out RUN_DIR")
    sets_list = list(sets)
    if data is not None:
        sets_list.insert(0, f"data.root={_toml_string(str(data))}")
    if config is None:
        # Resume with the run's own config (plus any explicit --set).
        saved = out_dir / "config.toml"
        if not saved.is_file():
            load_checkpoint(out_dir / "last.pt")  # a clear error if there is no run there
            raise UserError(f"{saved}: the run's config is missing")
        config = saved
    cfg = load_config(config, sets_list)
    return run_train(cfg, out_dir, resume=resume, init=init, init_partial=partial_init,
                     progress=not no_progress, device=device, overwrite=overwrite,
                     extend=extend, extend_lr=extend_lr)


def _toml_string(text: str) -> str:
    import json

    return json.dumps(text)
