"""``vcorr demo``: the whole toolkit end to end on the toy dataset (CPNet poster, toy experiment).

``vcorr toy`` -> ``vcorr prepare`` -> ``vcorr train`` of the six toy models (C2D, C3D, ARTNet,
TRN, NL, CPNet; one shared schedule) -> ``vcorr eval`` (clips x crops) of each -> ``vcorr
compare`` CPNet vs C2D -> ``vcorr visualize correspondences`` of CPNet on a validation video.
Every stage is the real command line; the caller passes a ``run(args)`` that executes one (the
CLI layer runs its own commands), so this module never imports the CLI. The result is the
paper's toy table measured on this machine, printed, in ``DIR/report.md`` and ``DIR/demo.json``.
"""
from __future__ import annotations

import csv
import json
import os
import platform
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vcorr.pipelines.errors import UserError
from vcorr.pipelines.fileio import write_atomic

# (key, label, registered model) in the order of the poster's table; configs are
# examples/configs/toy_<key>.toml.
MODELS: tuple[tuple[str, str, str], ...] = (
    ("c2d", "C2D", "toy_c2d"), ("c3d", "C3D", "toy_c3d"), ("artnet", "ARTNet", "toy_artnet"),
    ("trn", "TRN", "toy_trn"), ("nl", "NL C2D", "toy_nl"), ("cpnet", "CPNet", "toy_cpnet"))
BASELINE, OURS = "c2d", "cpnet"


@dataclass(frozen=True)
class DemoPlan:
    """How much data and training the demo uses (the rest is the toy configs' schedule)."""

    videos: int      # toy videos in all (20% of them val)
    epochs: int      # training epochs of every model
    clips: int       # eval views per video: clips x crops
    crops: int


# Sized for 2 CPU cores: the full plan in about 7 minutes, --quick in about 2.5 (README).
FULL = DemoPlan(videos=2000, epochs=6, clips=2, crops=3)
QUICK = DemoPlan(videos=600, epochs=6, clips=2, crops=3)


def configs_dir() -> Path:
    """examples/configs of the source tree the package runs from (installed with -e)."""
    d = Path(__file__).resolve().parents[1] / "examples" / "configs"
    if not (d / "toy_cpnet.toml").is_file():
        raise UserError(f"{d}: toy configs not found; install vcorr from its source tree "
                        "(pip install -e .) to run the demo")
    return d


def read_json(path: Path) -> dict[str, Any]:
    """A stage's JSON result; a missing or broken file is a UserError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the stage's result ({exc})") from None


def first_correct_video(predictions_csv: Path) -> str:
    """Id of the first validation video the model got right (else the first one)."""
    with open(predictions_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise UserError(f"{predictions_csv}: no predictions")
    return next((r["id"] for r in rows if r["correct"] == "1"), rows[0]["id"])


def _table_md(rows: Sequence[dict[str, Any]], views: str) -> str:
    lines = [f"| model | train top-1 | val top-1 ({views}) | paper (poster) | train time |",
             "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {100 * r['train_top1']:.1f}% | {100 * r['val_top1']:.1f}% "
                     f"| {r['paper']} | {r['train_seconds']:.0f} s |")
    return "\n".join(lines)


class Stages:
    """Runs ``vcorr`` commands one at a time through ``run(args)``, printing each command first
    (so every stage can be rerun by hand) and recording it with its time in seconds."""

    def __init__(self, run: Callable[[list[str]], None], echo: Callable[[str], None],
                 total: int) -> None:
        self.run, self.echo, self.total = run, echo, total
        self.done: list[dict[str, Any]] = []

    def __call__(self, args: list[str]) -> None:
        cmd = "vcorr " + shlex.join(args)
        self.echo(f"\n[{len(self.done) + 1}/{self.total}] $ {cmd}")
        t = time.perf_counter()
        self.run(args)
        self.done.append({"command": cmd, "seconds": round(time.perf_counter() - t, 2)})


def new_folder(out: Path, what: str) -> None:
    """Create ``out``, which must be new or empty.

    Raises:
        UserError: ``out`` holds files (``what`` never overwrites results).
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: already exists and is not empty; give another --out "
                        f"({what} never overwrites results)")
    out.mkdir(parents=True, exist_ok=True)


def run_demo(out: str | Path, plan: DemoPlan, run: Callable[[list[str]], None],
             echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run every stage into ``out`` (which must not hold files yet); returns demo.json's dict.

    ``run(args)`` executes ``vcorr *args`` and raises on failure.
    """
    out = Path(out)
    configs = configs_dir()
    new_folder(out, "the demo")
    start = time.perf_counter()
    stage = Stages(run, echo, total=2 + 2 * len(MODELS) + 2)
    stages = stage.done

    toy, data, runs, evals = out / "toy", out / "toy_h5", out / "runs", out / "eval"
    stage(["toy", str(toy), "--videos", str(plan.videos), "--seed", "0"])
    # raw codec: JPEG's 8x8 grid would tell a network where the square is (pipelines.data.toy).
    stage(["prepare", "--format", "list", "--annotations", str(toy / "annotations.csv"),
           "--labels", str(toy / "classes.txt"), "--root", str(toy), "--out", str(data),
           "--short-side", "0", "--codec", "raw", "--workers", "1"])
    from vcorr.pipelines.train.monitor import tensorboard_note_once

    with tensorboard_note_once():  # six trainings, one note that TensorBoard is off
        for key, _, _ in MODELS:
            # One validation, after the last epoch: the table's val column is `vcorr eval`'s.
            stage(["train", str(configs / f"toy_{key}.toml"), "--data", str(data),
                   "--out", str(runs / key), "--set", f"optim.epochs={plan.epochs}",
                   "--set", f"train.val_every={plan.epochs}"])
    for key, _, _ in MODELS:
        # last.pt, not best.pt: picking the best epoch on val would flatter the val numbers.
        stage(["eval", str(runs / key / "last.pt"), "--data", str(data), "--clips",
               str(plan.clips), "--crops", str(plan.crops), "--workers", "1",
               "--out", str(evals / key), "--no-progress"])
    compare_dir = out / "compare"
    stage(["compare", str(evals / OURS), "--baseline", str(evals / BASELINE),
           "--out", str(compare_dir)])
    video_id = first_correct_video(evals / OURS / "predictions.csv")
    figures = out / "figures"
    stage(["visualize", "correspondences", "--checkpoint", str(runs / OURS / "last.pt"),
           "--data", str(data), "--id", video_id, "--out", str(figures)])

    rows = []
    for key, label, model in MODELS:
        s = read_json(runs / key / "summary.json")
        m = read_json(evals / key / "metrics.json")
        rows.append({"key": key, "label": label, "model": model,
                     "train_top1": s["last_train"]["top1"], "val_top1": m["top1"],
                     "val_top1_1view": s["last_val"]["top1"], "num_val": m["num_videos"],
                     "train_seconds": s["seconds"],
                     "paper": "fits (100%)" if key == OURS else "chance (25%)"})
    artefacts = {
        "toy videos": toy / "videos", "annotations": toy / "annotations.csv",
        "prepared data": data, **{f"run {k}": runs / k for k, _, _ in MODELS},
        **{f"eval {k}": evals / k / "metrics.json" for k, _, _ in MODELS},
        "compare": compare_dir / "gains.md", "compare plot": compare_dir / "gains.png",
        "correspondences": figures / "correspondences.png",
    }
    missing = [str(p) for p in artefacts.values() if not p.exists()]
    if missing:
        raise UserError(f"{out}: stages finished but these outputs are missing: {', '.join(missing)}")
    result = {"plan": asdict(plan), "rows": rows, "stages": stages,
              "visualized_video": video_id,
              "artefacts": {k: str(v) for k, v in artefacts.items()},
              "seconds": round(time.perf_counter() - start, 1),
              "machine": machine()}
    write_atomic(out / "report.md", report_md(out, result))
    write_atomic(out / "demo.json", json.dumps(result, indent=2) + "\n")
    result["artefacts"]["report"] = str(out / "report.md")
    result["artefacts"]["demo.json"] = str(out / "demo.json")
    return result


def machine() -> dict[str, Any]:
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "torch": torch.__version__}


def report_md(out: Path, r: dict[str, Any]) -> str:
    """The demo's report: the toy table, the figures, how each number was made."""
    from vcorr.pipelines.data.toy import ToyOptions

    p = r["plan"]
    views = f"{p['clips']} clips x {p['crops']} crops"
    rel = {k: os.path.relpath(v, out) for k, v in r["artefacts"].items()}
    m = r["machine"]
    stages = "\n".join(f"{s['command']}    # {s['seconds']:.1f} s" for s in r["stages"])
    n_val = r["rows"][0]["num_val"]
    toy = ToyOptions()   # the demo's `vcorr toy` passes only --videos and --seed
    return f"""# vcorr demo: the CPNet toy experiment on this machine

A {toy.square}x{toy.square} white square moves {toy.min_step}-{toy.max_step} px per frame up, \
down, left or right on a {toy.canvas}x{toy.canvas} canvas
({toy.frames} frames, kept {toy.margin} px off the borders); the direction is the label. \
{p['videos'] - n_val} train /
{n_val} val videos, every model trained {p['epochs']} epochs with the same schedule
(examples/configs/toy_*.toml: AdamW, cosine, batch 16). The CPNet poster reports that the
baselines stay at chance, because two 3x3 convs cannot see a 7-9 px step and non-local
attention has no positions, while CPNet fits the toy.

{_table_md(r['rows'], views)}

Train top-1 is the running accuracy of the last epoch; val top-1 is `vcorr eval` of last.pt
({views} per video, softmax averaged; on 3-frame 32x32 videos all views coincide).
Chance is 25%: a model that cannot tell the directions apart predicts one class.

## CPNet versus C2D, per class (`vcorr compare`)

![per-class gains]({rel['compare plot']})

## What CPNet's module matched (`vcorr visualize correspondences`, video {r['visualized_video']})

![correspondences]({rel['correspondences']})

## Artefacts

{chr(10).join(f'- {k}: `{v}`' for k, v in rel.items())}

## Commands run ({r['seconds']:.0f} s in all)

```
{stages}
```

Machine: {m['cpus']} CPUs ({m['processor']}), {m['torch_threads']} torch threads,
Python {m['python']}, torch {m['torch']}.
"""
