"""``vcorr weights convert``: a torchvision or PyTorchVideo Kinetics-400 checkpoint as a vcorr
checkpoint that ``vcorr eval`` evaluates and ``vcorr train --init`` starts from.

The file's layout is identified by fitting it against every known source of its library
(:data:`vcorr.pipelines.weights.sources.SOURCES`): the renamed tensors must be exactly the model's
(names and shapes). X3D-XS, -S and -M share one set of weights; the published file name or
``--model`` tells them apart (their input clips differ). The written checkpoint carries the
Kinetics-400 class list, a config whose ``data`` section is the source's input (clip length,
interval, crop, short side, mean/std) and the source's metadata.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vcorr import models
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.weights.convert import WeightsFile, read_weights
from vcorr.pipelines.weights.load import LoadReport, load_weights
from vcorr.pipelines.weights.sources import KnownSource, kinetics400_classes, sources_for

LIBRARIES = ("torchvision", "pytorchvideo")


def _expected_state(model_name: str) -> dict[str, tuple[int, ...]]:
    """Names and shapes of ``model_name``'s state dict (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = models.create_model(model_name, num_classes=400)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _fit(wf: WeightsFile, expected: dict[str, tuple[int, ...]]) -> tuple[bool, str, float]:
    """(fits exactly, first difference, share of the model's tensors that match)."""
    have = {k: tuple(v.shape) for k, v in wf.state.items()}
    need = {k: s for k, s in expected.items() if not k.endswith("num_batches_tracked")}
    have_needed = {k: s for k, s in have.items() if not k.endswith("num_batches_tracked")}
    matched = sum(1 for k, s in need.items() if have.get(k) == s)
    for k, s in need.items():
        if k not in have:
            return False, f"{k} not in the file", matched / max(1, len(need))
        if have[k] != s:
            return False, f"{k}: {have[k]} in the file, {s} in the model", matched / max(1, len(need))
    extra = sorted(set(have_needed) - set(need))
    if extra:
        return False, f"{extra[0]} not in the model", matched / max(1, len(need))
    return True, "", 1.0


def identify(wf: WeightsFile, library: str, model: str | None = None) -> KnownSource:
    """The known source whose exact layout ``wf`` has; ``model`` (a vcorr model name or the
    source's own name) or the file's published name settles layouts several sources share.

    Raises :class:`UserError` naming the file when none or (unsettled) several fit.
    """
    candidates = sources_for(library)
    fits, misses = [], []
    for s in candidates:
        ok, why, share = _fit(wf, _expected_state(s.model))
        (fits if ok else misses).append((s, why, share))
    if not fits:
        best = max(misses, key=lambda m: m[2])
        raise UserError(f"{wf.path}: matches no known {library} layout (closest: {best[0].name}, "
                        f"{best[1]}); `vcorr weights list` shows the known ones")
    fit_sources = [s for s, _, _ in fits]
    if model is not None:
        chosen = [s for s in fit_sources if model in (s.model, s.name)]
        if chosen:
            return chosen[0]
    if len(fit_sources) == 1:
        return fit_sources[0]
    by_name = [s for s in fit_sources if s.file_name == wf.path.name]
    if by_name:
        return by_name[0]
    names = ", ".join(s.model for s in fit_sources)
    raise UserError(f"{wf.path}: the weights fit {names} (one network, different input clips); "
                    "choose one with --model")


def converted_config(source: KnownSource, model_name: str) -> dict[str, Any]:
    """A vcorr config (defaults plus the source's model and input) for the checkpoint."""
    from vcorr.pipelines.train.config import load_config

    cfg = load_config(None)
    d = cfg["data"]
    d.update({"frames": source.frames, "interval": source.interval, "crop": source.crop,
              "short_side": [source.short_side, source.short_side],
              "test_short_side": source.short_side, "normalize": True,
              "mean": list(source.mean), "std": list(source.std), "sampler": "dense"})
    cfg["model"]["name"] = model_name
    return cfg


def convert_weights(path: str | Path, library: str, out: str | Path, *,
                    model: str | None = None) -> tuple[dict[str, Any], LoadReport]:
    """Convert ``path`` (a ``library`` Kinetics-400 checkpoint) into the vcorr checkpoint ``out``
    (written atomically) for ``model`` (default: the source's exact layout).

    Returns (summary, load report). Raises :class:`UserError` (one line naming the file) for an
    unknown or unreadable file, a file of another library, an ImageNet 2D ResNet, a classifier
    that is not Kinetics-400's, or a model the weights do not fill completely.
    """
    from vcorr.pipelines.train.checkpoint import save_checkpoint

    if library not in LIBRARIES:
        raise UserError(f"--from must be one of {', '.join(LIBRARIES)}, got {library!r}")
    path = Path(path)
    wf = read_weights(path)
    if wf.format == "torchvision-resnet":
        raise UserError(f"{path}: a torchvision 2D ResNet (ImageNet): start a video model from it "
                        "with `vcorr train CONFIG --init FILE` (inflated); `weights convert` "
                        "imports Kinetics-400 video checkpoints")
    if wf.library != library:
        what = "a vcorr checkpoint or state dict" if wf.library == "vcorr" else f"a {wf.library} checkpoint"
        raise UserError(f"{path}: {what}, not a {library} checkpoint (--from {library})")
    classes = kinetics400_classes()
    if wf.classes != classes:
        w = wf.state.get("head.fc.weight")
        n = "no" if w is None else str(w.shape[0])
        raise UserError(f"{path}: the classifier has {n} outputs, not Kinetics-400's 400")
    source = identify(wf, library, model)
    target = model or source.model
    try:
        models.get_model_entry(target)
    except KeyError as exc:
        raise UserError(str(exc)) from None
    net = models.create_model(target, num_classes=len(classes)).eval()
    report = load_weights(net, wf, classes=classes, model_name=target,
                          hint=f"weights convert writes complete models only: convert to "
                               f"{source.model} and start {target} from that checkpoint with "
                               "`vcorr train --init` (model.args can adapt its layout)")
    cfg = converted_config(source, target)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {**source.as_dict(), "file": str(path)}
    save_checkpoint(out, {"model": net.state_dict(), "config": cfg, "classes": classes,
                          "model_name": target, "source": meta, "init_report": report.as_dict()})
    params = sum(p.numel() for p in net.parameters())
    summary = {"out": str(out), "model": target, "source": source.name, "library": library,
               "params": params, "top1": source.top1, "clip": source.clip,
               "fps": source.fps, "counts": report.counts()}
    return summary, report
