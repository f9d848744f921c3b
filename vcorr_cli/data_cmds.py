"""``vcorr toy``, ``vcorr prepare`` and ``vcorr inspect``: parse options, call pipelines.data."""
from __future__ import annotations

import json

import click

from vcorr.pipelines.errors import UserError


_SQUARE_ONLY = ("frames", "canvas", "square", "min_step", "max_step", "wrap", "margin")
_MOTION_ONLY = ("test_fraction", "fps", "seconds", "size", "qp", "workers", "no_progress")


@click.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--kind", type=click.Choice(["square", "motion"]), default="square",
              show_default=True, help="square: the CPNet poster's moving square; motion: the "
              "motion benchmark's scenes (7 time-reversal pairs of classes and 2 controls).")
@click.option("--videos", type=int, default=None,
              help="Number of videos [default: 2000 square, 3200 motion].")
@click.option("--val-fraction", type=float, default=None,
              help="Share of the val split [default: 0.2 square, 0.1 motion].")
@click.option("--seed", default=0, show_default=True, help="Random seed (output is "
              "deterministic for a seed).")
@click.option("--frames", type=int, default=None, help="[square] Frames per video [default: 3].")
@click.option("--canvas", type=int, default=None,
              help="[square] Frame size in pixels [default: 32].")
@click.option("--square", type=int, default=None,
              help="[square] Square size in pixels [default: 2].")
@click.option("--min-step", type=int, default=None,
              help="[square] Smallest move per frame [default: 7].")
@click.option("--max-step", type=int, default=None,
              help="[square] Largest move per frame [default: 9].")
@click.option("--wrap/--no-wrap", default=None,
              help="[square] Wrap around the borders (for long clips) instead of staying "
                   "inside [default: no-wrap].")
@click.option("--margin", type=int, default=None,
              help="[square] Pixels kept free between the square and every border (without "
                   "--wrap), so a two-layer 3x3 net cannot read the direction from a border "
                   "[default: 3].")
@click.option("--test-fraction", type=float, default=None,
              help="[motion] Share of the test split [default: 0.4].")
@click.option("--fps", type=float, default=None,
              help="[motion] Frames per second [default: 25].")
@click.option("--seconds", type=float, default=None,
              help="[motion] Video length [default: 2].")
@click.option("--size", type=int, default=None,
              help="[motion] Frame width and height in pixels, even [default: 128].")
@click.option("--qp", type=int, default=None,
              help="[motion] H.264 constant quantizer, 0-51 (higher: stronger artefacts) "
                   "[default: 26].")
@click.option("--workers", type=int, default=None,
              help="[motion] Processes rendering and encoding [default: 1].")
@click.option("--no-progress", is_flag=True, default=None,
              help="[motion] Hide the progress bar.")
def toy(out: str, kind: str, **kw) -> None:
    """Write a synthetic dataset to OUT: the CPNet moving square or the motion benchmark.

    --kind square (default): a white square on a black canvas moves 7-9 pixels per frame up,
    down, left or right (the four labels); lossless videos. --kind motion: textured scenes
    whose target moves left/right, up/down (slow and fast), approaches/recedes, rotates
    clockwise/counter-clockwise or is covered/uncovered; each class's pair partner is its exact
    time reversal, so frame order is the only cue (see README). Both write OUT/videos/*.mp4,
    OUT/annotations.csv (format 'list') and OUT/classes.txt; motion also OUT/motion.json.
    Options marked [square] or [motion] belong to that kind only.

    \b
    Examples:
      vcorr toy data/toy
      vcorr toy data/toy_long --frames 8 --wrap --videos 500
      vcorr prepare --format list --annotations data/toy/annotations.csv \\
          --labels data/toy/classes.txt --root data/toy --out data/toy_h5 --short-side 0 \\
          --codec raw
      vcorr toy data/motion --kind motion --workers 2
      vcorr prepare --format list --annotations data/motion/annotations.csv \\
          --labels data/motion/classes.txt --root data/motion --out data/motion64 \\
          --short-side 64 --every 2
    """
    other = _MOTION_ONLY if kind == "square" else _SQUARE_ONLY
    wrong = [name for name in other if kw[name] is not None]
    if wrong:
        flags = ", ".join("--" + name.replace("_", "-") for name in wrong)
        raise UserError(f"{flags} {'is an option' if len(wrong) == 1 else 'are options'} of "
                        f"--kind {'motion' if kind == 'square' else 'square'}, not of --kind "
                        f"{kind}")
    given = {k: v for k, v in kw.items() if v is not None and k not in other}
    if kind == "square":
        from vcorr.pipelines.data.toy import ToyOptions, make_toy

        summary = make_toy(out, ToyOptions(**given))
        click.echo(f"wrote {summary['videos']} videos ({summary['train']} train, "
                   f"{summary['val']} val) to {summary['out']}")
        return
    from vcorr.pipelines.data.motion import MotionOptions, make_motion

    given["progress"] = not given.pop("no_progress", False)
    summary = make_motion(out, MotionOptions(**given))
    click.echo(f"wrote {summary['videos']} videos ({summary['train']} train, {summary['val']} "
               f"val, {summary['test']} test; {len(summary['classes'])} classes, "
               f"{summary['frames']} frames of {summary['size']}x{summary['size']} at "
               f"{summary['fps']:g} fps) to {summary['out']}")


def _parse_part(value: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise UserError(f"--part must look like I/N (e.g. 0/4), got {value!r}") from None
    return i, n


@click.command()
@click.option("--format", "fmt", required=True,
              type=click.Choice(["list", "kinetics", "ssv2", "ssv1", "jester", "ucf101",
                                 "diving48", "folders", "mmaction", "mmaction-rawframes",
                                 "slowfast", "hmdb51"]),
              help="Annotation format of the dataset (folders: a folder per class under "
                   "--root, no --annotations).")
@click.option("--annotations", multiple=True, type=click.Path(),
              help="Annotation file; repeat for several (e.g. train and validation). "
                   "Required, except for --format folders; hmdb51 also takes the folder of "
                   "its split files.")
@click.option("--labels", type=click.Path(), default=None,
              help="Class list (ssv2 labels JSON, jester/ssv1 labels CSV, ucf101 "
                   "classInd.txt, diving48 vocab JSON, or one class per line; for integer "
                   "labels line 1 is label 0).")
@click.option("--root", required=True, type=click.Path(), help="Folder of the videos.")
@click.option("--val-fraction", type=float, default=None,
              help="[folders] Share of each class put in the val split when --root has no "
                   "split folders [default: 0.2].")
@click.option("--seed", type=int, default=None,
              help="[folders] Seed of that split [default: 0]; the split depends only on "
                   "the seed and the videos' paths.")
@click.option("--label-base", type=click.Choice(["0", "1"]), default=None,
              help="[mmaction, mmaction-rawframes, slowfast] The label of the first class: "
                   "0 or 1. Without --labels the classes are named by number.")
@click.option("--split-index", type=click.Choice(["1", "2", "3"]), default=None,
              help="[hmdb51] Which official split to prepare.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--every", default=1, show_default=True,
              help="Keep frames 0, N, 2N, ... (--every 12 is 1/12 of the frame rate).")
@click.option("--fps", type=float, default=None, help="Keep the frames nearest to k/FPS s.")
@click.option("--short-side", default=128, show_default=True,
              help="Resize so the short side is S pixels (aspect kept); 0 keeps the size.")
@click.option("--codec", type=click.Choice(["jpeg", "raw"]), default="jpeg", show_default=True,
              help="How frames are stored: JPEG files (--quality) or uncompressed (exact, "
                   "about 10x larger).")
@click.option("--quality", default=90, show_default=True, help="JPEG quality.")
@click.option("--videos-per-shard", default=1000, show_default=True,
              help="Videos per HDF5 shard file (the unit of resuming and of --part).")
@click.option("--min-frames", default=1, show_default=True,
              help="Videos with fewer frames after downsampling are failures.")
@click.option("--folder-fps", default=12.0, show_default=True,
              help="Frame rate of frame-folder videos (Jester and SSv1 were extracted at 12).")
@click.option("--strict", is_flag=True,
              help="Videos that decode only in part (damaged, truncated) are failures "
                   "instead of warnings.")
@click.option("--workers", default=1, show_default=True, help="Decoding processes.")
@click.option("--part", default="0/1", show_default=True,
              help="Prepare only part I of N (0-based), e.g. one task of a SLURM array.")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def prepare(fmt: str, annotations: tuple[str, ...], part: str, no_progress: bool,
            label_base: str | None, split_index: str | None, **kw) -> None:
    """Decode videos, downsample, resize and write HDF5 shards plus an index.

    Writes OUT/shards/<split>-NNNNN.h5, OUT/index.csv, OUT/classes.txt, OUT/failures.csv,
    OUT/warnings.csv, OUT/prepare.log and OUT/prepare.json. Reruns skip finished shards
    (resumable); bad videos are recorded in failures.csv and the run goes on, but a run that
    prepares no video at all exits with code 2 and the most common failure reasons. Videos are read
    upright (display rotation), --fps selects frames by presentation time (variable frame
    rates too), and a video that decodes only in part keeps the frames that decode and is
    listed in warnings.csv (a failure with --strict). Decoder messages go to prepare.log.

    \b
    Examples:
      vcorr prepare --format list --annotations data/toy/annotations.csv \\
          --labels data/toy/classes.txt --root data/toy --out data/toy_h5 --short-side 0 \\
          --codec raw
      vcorr prepare --format kinetics --annotations kinetics400/train.csv \\
          --annotations kinetics400/validate.csv --root kinetics400/videos \\
          --out data/k400_12 --every 12 --workers 16
      vcorr prepare --format ssv2 --annotations something-something-v2-train.json \\
          --annotations something-something-v2-validation.json \\
          --labels something-something-v2-labels.json --root 20bn-something-something-v2 \\
          --out data/ssv2 --every 2 --part $SLURM_ARRAY_TASK_ID/8
      vcorr prepare --format folders --root my_clips --out data/mine --val-fraction 0.2
      vcorr prepare --format mmaction --annotations kinetics400_train_list_videos.txt \\
          --labels label_map_k400.txt --root kinetics400/videos_train --out data/k400
    """
    from vcorr.pipelines.data.prepare import PrepareOptions, prepare as run

    opt = PrepareOptions(format=fmt, annotations=list(annotations), part=_parse_part(part),
                         progress=not no_progress,
                         label_base=None if label_base is None else int(label_base),
                         split_index=None if split_index is None else int(split_index), **kw)
    r = run(opt)
    splits = ", ".join(f"{k} {v}" for k, v in r.per_split.items()) or "none"
    reasons = ", ".join(f"{v} x {k}" for k, v in list(r.failure_reasons.items())[:3])
    click.echo(f"prepared {_n(r.videos, 'video')} ({splits}) into {r.out}; "
               f"{_n(r.failures, 'failure')} ({reasons + '; ' if reasons else ''}see "
               f"failures.csv); {_n(r.warnings, 'warning')} (see warnings.csv); shards written "
               f"{r.shards_written}, skipped {r.shards_skipped}; {r.seconds:.1f} s")
    if r.shards_pending:
        click.echo(f"{len(r.shards_pending)} shards of other parts are not finished yet; the "
                   "index is rebuilt by whichever part finishes last")
    for line in r.class_checks:
        click.echo(f"warning: {r.out}: {line}", err=True)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


@click.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--verify", is_flag=True, help="Open every shard and decode sample frames.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
def inspect(out: str, verify: bool, as_json: bool) -> None:
    """Summarise a prepared dataset: videos per split and class, frames, bytes, failures.

    \b
    Examples:
      vcorr inspect data/toy_h5
      vcorr inspect data/toy_h5 --verify --json > summary.json
    """
    from vcorr.pipelines.data.inspect import summarize

    s = summarize(out, verify=verify, progress=verify and not as_json)
    if as_json:
        click.echo(json.dumps(s, indent=2))
    else:
        _print_summary(s)
    if verify and s["verify_errors"]:
        raise SystemExit(1)


def _print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    t = Table(title=f"{s['out']} ({s['dataset'] or 'dataset'}, {s['num_classes']} classes)")
    for col in ("split", "videos", "frames", "MiB", "shards", "classes seen"):
        t.add_column(col, justify="right" if col != "split" else "left")
    for name, sp in s["splits"].items():
        t.add_row(name, str(sp["videos"]), str(sp["frames"]), f"{sp['bytes'] / 2**20:.1f}",
                  str(sp["shards"]), str(len(s["per_class"].get(name, {}))))
    t.add_row("all", str(s["videos"]), str(s["frames"]), f"{s['bytes'] / 2**20:.1f}", "", "",
              style="bold")
    console.print(t)
    if s["num_classes"] <= 50:
        ct = Table(title="videos per class")
        ct.add_column("class")
        for name in s["splits"]:
            ct.add_column(name, justify="right")
        labels = sorted({c for d in s["per_class"].values() for c in d}
                        | set(s["classes_without_videos"]))
        for c in labels:
            ct.add_row(c, *(str(s["per_class"].get(n, {}).get(c, 0)) for n in s["splits"]))
        console.print(ct)
    if s["classes_without_videos"]:
        empty = s["classes_without_videos"]
        console.print(f"classes with no video (the model still has an output for each): "
                      f"{len(empty)}: {', '.join(empty[:10])}" + (", ..." if len(empty) > 10
                                                                    else ""))
    for line in s["class_checks"]:
        console.print(f"warning: {line}")
    console.print(f"failures: {s['failures']}" + (
        " (" + ", ".join(f"{k}: {v}" for k, v in s["failure_reasons"].items()) + ")"
        if s["failures"] else ""))
    console.print(f"warnings: {s['warnings']}" + (
        " (stored from the frames that decoded; see warnings.csv), e.g. "
        + "; ".join(s["warning_examples"]) if s["warnings"] else ""))
    if "verify_errors" in s:
        errs = s["verify_errors"]
        console.print("verify: " + ("all videos decode" if not errs else
                                    f"{len(errs)} videos FAILED, first: {errs[0]}"))
