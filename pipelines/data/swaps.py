"""Label-swap maps: which classes trade places when a video is mirrored left-right.

A horizontal flip turns "Pushing something from left to right" into "... from right to left".
Training with ``data.flip = "swap"`` flips a clip and gives it the mirrored class; testing with
mirrored views (``--crops 10``) maps a flipped view's scores back the same way. A map is a list
of class-name pairs, resolved against a class list at run time, so it holds for any class order
(a dataset's own, a subset, a checkpoint's).

Built-in maps (:data:`SWAP_PAIRS`), audited class by class against the official label lists
(``class_lists/``: Something-Something v2's 174 labels in the order of
``something-something-v2-labels.json``, Jester's 27 in the order of ``jester-v1-labels.csv``):

* ``ssv2`` and ``ssv1`` (the same 174 templates): pulling and pushing something left to right /
  right to left, turning the camera left / right. No other class names a horizontal direction
  or a sense of rotation; upwards/downwards and towards/away survive a horizontal flip. This is
  also the CPNet authors' map (indices 86/87, 93/94, 166/167).
* ``jester``: swiping left / right, sliding two fingers left / right, and turning the hand
  clockwise / counterclockwise (a mirror image turns the other way). Rolling the hand forward /
  backward turns about the left-right axis, which a horizontal flip keeps.
* ``jester-authors``: the CPNet authors' Jester map, the two left/right pairs only (their
  alphabetical indices 11/12 and 16/17), for exact reproduction of their runs.

A user's map is a CSV file of two columns, one pair of class names per row (quote a name that
holds a comma; lines starting with ``#`` are comments).
"""
from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from vcorr.pipelines.errors import UserError

CLASS_LISTS = Path(__file__).with_name("class_lists")

Pairs = list[tuple[str, str]]

_SSV = [("Pulling something from left to right", "Pulling something from right to left"),
        ("Pushing something from left to right", "Pushing something from right to left"),
        ("Turning the camera left while filming something",
         "Turning the camera right while filming something")]
_JESTER_LR = [("Swiping Left", "Swiping Right"),
              ("Sliding Two Fingers Left", "Sliding Two Fingers Right")]

SWAP_PAIRS: dict[str, Pairs] = {
    "ssv2": _SSV,
    "ssv1": _SSV,
    "jester": _JESTER_LR + [("Turning Hand Clockwise", "Turning Hand Counterclockwise")],
    "jester-authors": _JESTER_LR,
}
# The map a prepared dataset gets when ``data.swap_map`` is empty (its ``prepare.json`` format).
DEFAULT_MAP = {"ssv2": "ssv2", "ssv1": "ssv1", "jester": "jester"}


def official_classes(dataset: str) -> list[str]:
    """The official class list of ``dataset`` (``ssv2`` or ``jester``), in its label file's
    order. Raises KeyError for another name."""
    path = CLASS_LISTS / f"{dataset}_classes.txt"
    if not path.is_file():
        raise KeyError(dataset)
    return path.read_text(encoding="utf-8").splitlines()


def read_swap_file(path: str | Path) -> Pairs:
    """Pairs of class names from a CSV file of two columns.

    Raises:
        UserError: the file is missing or unreadable, or a row does not have two names.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the label-swap map ({e.__class__.__name__}: "
                        f"{e})") from None
    pairs: Pairs = []
    for n, row in enumerate(csv.reader(text.splitlines()), start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        names = [c.strip() for c in row]
        if len(names) != 2 or not all(names):
            raise UserError(f"{path}: line {n}: a label-swap row is two class names "
                            f"(\"A\",\"B\"), got {row!r}")
        pairs.append((names[0], names[1]))
    if not pairs:
        raise UserError(f"{path}: no class pairs in the label-swap map")
    return pairs


def swap_pairs(spec: str, dataset: str = "") -> tuple[Pairs, str]:
    """The pairs of ``spec`` and where they come from.

    ``spec``: ``""`` (the built-in map of ``dataset``, none for other datasets), a name in
    :data:`SWAP_PAIRS`, or the path of a CSV file (:func:`read_swap_file`).

    Raises:
        UserError: ``spec`` is neither a known name nor a readable file.
    """
    if not spec:
        name = DEFAULT_MAP.get(dataset, "")
        return (list(SWAP_PAIRS[name]), f"built-in map {name!r}") if name else ([], "")
    if spec in SWAP_PAIRS:
        return list(SWAP_PAIRS[spec]), f"built-in map {spec!r}"
    if not Path(spec).is_file():
        raise UserError(f"{spec}: not a built-in label-swap map ({', '.join(SWAP_PAIRS)}) "
                        "and no such file")
    return read_swap_file(spec), str(spec)


def swap_index_map(pairs: Sequence[Sequence[str]], classes: Sequence[str],
                   source: str = "label-swap map") -> dict[int, int]:
    """Class index -> mirrored class index, both ways, for ``classes``.

    Raises:
        UserError: a name is not in ``classes`` (a typo, or a class this dataset lacks, so
        its mirror has no label), a pair names one class twice, or a class is in two pairs.
    """
    index = {c: i for i, c in enumerate(classes)}
    out: dict[int, int] = {}
    for a, b in pairs:
        for name in (a, b):
            if name not in index:
                import difflib

                near = difflib.get_close_matches(name, list(classes), n=1, cutoff=0.6)
                raise UserError(f"{source}: class {name!r} is not one of the {len(classes)} "
                                "classes" + (f" (did you mean {near[0]!r}?)" if near else "")
                                + "; a mirrored video needs its mirrored class")
        if a == b:
            raise UserError(f"{source}: the pair ({a!r}, {b!r}) names one class twice")
        for name in (a, b):
            if index[name] in out:
                raise UserError(f"{source}: class {name!r} is in two pairs")
        out[index[a]], out[index[b]] = index[b], index[a]
    return out


def training_swap_pairs(spec: str, dataset: str, classes: Sequence[str], flip: str,
                        where: str) -> Pairs:
    """The pairs a training run uses and records in its checkpoints (for mirrored test views).

    An explicit ``spec`` must resolve on ``classes``; so must the dataset's built-in map when
    training flips with swaps (``flip = "swap"``). Otherwise a built-in map that does not fit
    the classes (a subset of a dataset) is not recorded.

    Raises:
        UserError: see :func:`swap_pairs` and :func:`swap_index_map`; ``flip = "swap"`` with no
        map at all.
    """
    pairs, source = swap_pairs(spec, dataset)
    if flip == "swap" and not pairs:
        raise UserError(f"{where}: data.flip = \"swap\" needs a label-swap map and dataset "
                        f"{dataset or '(list)'!r} has no built-in one; set data.swap_map to a "
                        "CSV file of mirrored class pairs, or use data.flip = \"off\" / \"on\"")
    try:
        swap_index_map(pairs, classes, f"{where}: {source}")
    except UserError:
        if spec or flip == "swap":
            raise
        return []
    return pairs


def checkpoint_swap_map(ckpt: dict, override: str = "", dataset: str = "",
                        where: str = "") -> tuple[dict[int, int], list[list[str]]]:
    """The map that brings a mirrored test view's scores back to the checkpoint's classes,
    and its pairs: ``override`` (``--swap-map``: a built-in name or a CSV file), else the
    pairs the training run recorded (``swap_pairs``), else -- a checkpoint from before they
    were recorded -- the built-in map of ``dataset`` (the training data's) when it fits.

    Raises:
        UserError: ``override`` is unknown, unreadable or names a class the model lacks.
    """
    classes = list(ckpt["classes"])
    if override:
        pairs, source = swap_pairs(override)
        return swap_index_map(pairs, classes, f"--swap-map {source}"), [list(p) for p in pairs]
    if "swap_pairs" in ckpt:
        pairs = [tuple(p) for p in ckpt["swap_pairs"]]
        return swap_index_map(pairs, classes, f"{where}: swap_pairs"), [list(p) for p in pairs]
    pairs, _ = swap_pairs("", dataset)
    try:
        return swap_index_map(pairs, classes), [list(p) for p in pairs]
    except UserError:
        return {}, []
