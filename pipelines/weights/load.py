"""Initial weights: put a weight file's tensors into a model exactly, or refuse.

Every tensor of the model gets a value from the file, or is set to the identity, or is one the
model may start without; anything else is a partial load, an error unless asked for
(``partial=True``, ``vcorr train --partial-init``). What happened to each tensor is the
:class:`LoadReport` (printed and saved by ``vcorr train``).

How a 2D (ImageNet) ResNet becomes a video model so that a clip of identical frames gives the
2D network's output on that frame:

* 1 x k x k convs take the 2D kernel; t x k x k convs take it repeated over t and divided by t
  (I3D, Carreira and Zisserman 2017, Sec. 2.3). With zero temporal padding this is exact only
  for frames farther from the clip's ends than the network's temporal reach.
* A factorised temporal conv becomes the identity: in :class:`vcorr.models.layers.ConvTemporalSpatial`
  (CorrNet / DCF order, t x 1 x 1 then 1 x k x k) the temporal conv is the centre tap 1 (full or
  channel-wise) and the BN between is neutral (gamma 1, beta 0, mean 0, var 1 - eps); the
  ReLU between passes its input unchanged, as that input is a ReLU output. In
  :class:`vcorr.models.layers.Conv2Plus1d` (the R(2+1)D paper's order, 1 x k x k to M channels then
  t x 1 x 1) the ReLU sees signed values, so the spatial conv gets ``[W; -W]`` and the temporal
  conv subtracts the halves (relu(a) - relu(-a) = a); exact when M >= 2 C_out.
* Plug-ins that start as the identity (CP, non-local, correlation-sum, DCF blocks: classes with
  ``identity_at_init``) keep their initial values; so does a classifier for other classes (the
  head's ``classifier`` submodules).
* A projection shortcut's BN the file does not have (PyTorchVideo's X3D) is set neutral.
* In training mode a BN uses its batch's statistics, not its running ones, so a neutral BN is the
  identity only in eval mode. Where that matters -- the BN between a ConvTemporalSpatial's convs
  (its input is a ReLU output, so standardising it and the ReLU after change the values) and a
  neutral shortcut BN -- the BN is listed in ``LoadReport.hold_bn``, and ``vcorr train`` keeps it
  on its running statistics (``train.init_bn = "hold"``), which makes the start exact in
  training mode too. The mid BN of a :class:`vcorr.models.layers.Conv2Plus1d` needs no hold: it
  standardises ``W x`` and ``-W x`` alike, the temporal conv returns the standardised ``W x``,
  and the block's next BN is invariant to that per-channel affine map.
* BatchNorm ``num_batches_tracked`` counters missing from old files are set to 0.

The 2D network's stem max-pool and res2 stride must be the model's too: a model without the
max-pool (CorrNet's Table 2 layout, torchvision's video ResNets) takes all the tensors but is
another function, so it is refused like a partial load.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from vcorr.models.artnet import SmartConv
from vcorr.models.layers import Conv2Plus1d, ConvTemporalSpatial
from vcorr.pipelines.errors import UserError
from vcorr.pipelines.fileio import write_atomic
from vcorr.pipelines.weights.convert import WeightsFile, read_weights

Tensors = dict[str, torch.Tensor]


@dataclass
class LoadReport:
    """What :func:`plan_load` did with every tensor.

    ``loaded``: copied; ``inflated``: a 2D kernel made 3D (repeated over t and divided by t,
    or t = 1); ``identity``: set to the identity (factorised temporal convs, their BNs, neutral
    shortcut BNs); ``kept``: identity-initialised plug-ins left at their initial values;
    ``new_classifier``: the model's classifier left at its initial values (other classes);
    ``skipped``: file tensors not used, with the reason; ``missing``: model tensors without a
    value, with the reason; ``layout``: why the model is not the 2D network's function (or
    ""). ``hold_bn``: BN modules set neutral that are the identity only on their running
    statistics (eval mode), so training must hold them there for an exact start. ``problems``
    are what makes the load partial.
    """

    source: str
    source_format: str
    model: str
    loaded: list[str] = field(default_factory=list)
    inflated: list[str] = field(default_factory=list)
    identity: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    new_classifier: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    layout: str = ""
    notes: list[str] = field(default_factory=list)
    partial: bool = False
    allowed_skips: set[str] = field(default_factory=set)
    hold_bn: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[tuple[str, str]]:
        """(tensor, reason) of every unexplained skip or gap, the layout first."""
        out = [("(layout)", self.layout)] if self.layout else []
        out += [(k, r) for k, r in self.skipped.items() if k not in self.allowed_skips]
        out += [(k, r) for k, r in self.missing.items() if k not in self.skipped]
        return out

    def counts(self) -> dict[str, int]:
        return {"loaded": len(self.loaded), "inflated": len(self.inflated),
                "identity": len(self.identity), "kept": len(self.kept),
                "new_classifier": len(self.new_classifier), "skipped": len(self.skipped),
                "missing": len(self.missing)}

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "source_format": self.source_format, "model": self.model,
                "partial": self.partial, "counts": self.counts(), "layout": self.layout,
                "notes": self.notes, "loaded": self.loaded, "inflated": self.inflated,
                "identity": self.identity, "kept": self.kept,
                "new_classifier": self.new_classifier, "hold_bn": self.hold_bn,
                "skipped": [{"name": k, "reason": r, "allowed": k in self.allowed_skips}
                            for k, r in self.skipped.items()],
                "missing": [{"name": k, "reason": r} for k, r in self.missing.items()]}

    def save(self, path: str | Path) -> None:
        """The report as JSON, written atomically."""
        write_atomic(path, json.dumps(self.as_dict(), indent=2) + "\n")

    def render(self, console: Any = None) -> None:
        """The report as a rich table: one row per category, its count and first names."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        table = Table(title=f"init: {self.source} -> {self.model} ({self.source_format})")
        table.add_column("tensors")
        table.add_column("count", justify="right")
        table.add_column("first")
        rows = [("loaded", self.loaded), ("inflated 2D -> 3D", self.inflated),
                ("set to identity", self.identity), ("plug-ins kept at identity", self.kept),
                ("new classifier", self.new_classifier)]
        for label, names in rows:
            table.add_row(label, str(len(names)), ", ".join(names[:3]))
        for label, items in (("skipped (file)", self.skipped), ("missing (model)", self.missing)):
            first = "; ".join(f"{k}: {r}" for k, r in list(items.items())[:2])
            table.add_row(label, str(len(items)), first)
        console.print(table)
        for note in ([f"layout: {self.layout}"] if self.layout else []) + self.notes:
            console.print(f"  note: {note}")


# --- tensor transforms ---------------------------------------------------------------------------

def inflate(weight: torch.Tensor, shape: Sequence[int]) -> torch.Tensor | None:
    """A 2D conv weight (O, I, kh, kw) -- or a 3D one with t = 1 -- as a 3D one of ``shape``
    (O, I, t, kh, kw): repeated over t and divided by t (I3D). None when they do not match.
    Shape: (O, I, kh, kw) -> (O, I, t, kh, kw)."""
    if weight.dim() == 5 and weight.shape[2] == 1:
        weight = weight[:, :, 0]
    shape = tuple(shape)
    if weight.dim() != 4 or len(shape) != 5 or tuple(weight.shape) != shape[:2] + shape[3:]:
        return None
    t = shape[2]
    return weight.unsqueeze(2).repeat(1, 1, t, 1, 1) / t


def identity_temporal(conv: nn.Conv3d) -> torch.Tensor:
    """Weight of a t x 1 x 1 conv (full or channel-wise, in == out) that passes its input:
    centre tap 1 on the channel diagonal, 0 elsewhere."""
    w = torch.zeros_like(conv.weight)
    c = conv.weight.shape[2] // 2
    if conv.groups == conv.in_channels == conv.out_channels:
        w[:, 0, c] = 1.0
    elif conv.groups == 1 and conv.in_channels == conv.out_channels:
        idx = torch.arange(conv.out_channels)
        w[idx, idx, c] = 1.0
    else:
        raise ValueError(f"cannot make a {tuple(conv.weight.shape)} conv with groups="
                         f"{conv.groups} the identity")
    return w.reshape(conv.weight.shape)


def neutral_bn(bn: nn.modules.batchnorm._BatchNorm, prefix: str) -> Tensors:
    """State of a BN that is the identity in eval mode: gamma 1, beta 0, mean 0, var 1 - eps."""
    out = {f"{prefix}.weight": torch.ones_like(bn.weight), f"{prefix}.bias": torch.zeros_like(bn.bias),
           f"{prefix}.running_mean": torch.zeros_like(bn.running_mean),
           f"{prefix}.running_var": torch.full_like(bn.running_var, 1.0 - bn.eps)}
    if bn.num_batches_tracked is not None:
        out[f"{prefix}.num_batches_tracked"] = torch.zeros_like(bn.num_batches_tracked)
    return out


# --- the 2D-counterpart check --------------------------------------------------------------------

def layout_vs_2d_resnet(model: nn.Module) -> str:
    """"" when the model computes, frame by frame, what a torchvision 2D ResNet does with
    the same tensors: a 1x7x7 (or t x 7 x 7) stride-2 stem conv, a 3x3 stride-2 stem max-pool
    and no spatial stride in res2. Otherwise the reason."""
    stem = getattr(model, "stem", None)
    if stem is None or not hasattr(model, "res2"):
        return "not a ResNet with a stem and res2..res5"
    convs = [m for m in stem.modules() if isinstance(m, nn.Conv3d)]
    if convs and tuple(convs[0].stride[1:]) != (2, 2):
        return (f"the stem conv strides {tuple(convs[0].stride[1:])} in space; the 2D ResNet's "
                "conv1 strides 2, so its weights would see the frame at another scale")
    pools = [m for m in stem.modules() if isinstance(m, nn.MaxPool3d)]
    if not pools:
        return ("the stem has no max-pool (res2 strides instead); the 2D ResNet max-pools after "
                "conv1, so its weights would compute another function")
    strided = [n for n, m in model.res2[0].named_modules() if isinstance(m, nn.Conv3d)
               and tuple(m.stride[1:]) != (1, 1)]
    if strided:
        return f"res2 strides in space ({strided[0]}); the 2D ResNet's res2 does not"
    return ""


# --- the plan --------------------------------------------------------------------------------------

def _owner(modules: dict[str, nn.Module], key: str, test) -> tuple[str, nn.Module] | None:
    """The outermost module on ``key``'s path for which ``test(module)`` holds."""
    parts = key.split(".")[:-1]
    for i in range(1, len(parts) + 1):
        name = ".".join(parts[:i])
        m = modules.get(name)
        if m is not None and test(m):
            return name, m
    return None


def _classifier_prefixes(model: nn.Module) -> tuple[str, ...]:
    head = getattr(model, "head", None)
    names = getattr(head, "classifier", ()) if head is not None else ()
    return tuple(f"head.{n}." for n in names)


def _shape(t: torch.Tensor) -> str:
    return "x".join(map(str, t.shape)) or "scalar"


def plan_load(model: nn.Module, wf: WeightsFile, *, classes: Sequence[str] | None = None,
              model_name: str = "") -> tuple[Tensors, LoadReport]:
    """The state to load into ``model`` from ``wf`` and the report; changes nothing.

    ``classes``: the class names the model's classifier is for (the dataset's), compared with
    ``wf.classes``: equal lists load the classifier, the same names in another order load it
    with its rows reordered, other classes leave a new classifier.
    """
    target = model.state_dict()
    modules = dict(model.named_modules())
    source = dict(wf.state)
    report = LoadReport(str(wf.path), wf.format, model_name or type(model).__name__)
    new: Tensors = {}

    def put(key: str, value: torch.Tensor, how: list[str]) -> None:
        new[key] = value.to(target[key].dtype)
        how.append(key)

    # The classifier: loaded only for the same classes (or the same shape if unknown).
    cls_prefixes = _classifier_prefixes(model)
    cls_target = [k for k in target if k.startswith(cls_prefixes)] if cls_prefixes else []
    cls_source = [k for k in source if k.startswith(cls_prefixes + ("head.fc.",))]
    take_cls, reason, perm = False, "", None
    if cls_target and all(k in source and source[k].shape == target[k].shape for k in cls_target):
        if wf.classes is None or classes is None or list(wf.classes) == list(classes):
            take_cls = True
            if wf.classes is None and classes is not None:
                report.notes.append("classifier loaded by shape: the file names no classes")
        elif sorted(wf.classes) == sorted(classes) and cls_prefixes == ("head.fc.",):
            take_cls = True
            perm = torch.tensor([list(wf.classes).index(c) for c in classes])
            report.notes.append("classifier rows reordered to the model's class order")
        else:
            reason = (f"classifier for other classes ({len(wf.classes)} in the file, "
                      f"{len(classes)} in the model)")
    elif cls_source:
        shapes = {k: _shape(source[k]) for k in cls_source}
        reason = (f"classifier of another shape or head ({', '.join(f'{k} {s}' for k, s in list(shapes.items())[:1])})")
    for key in cls_source:
        if take_cls and key in target:
            value = source.pop(key)
            if perm is not None:
                value = value[perm]
            put(key, value, report.loaded)
        else:
            source.pop(key)
            report.skipped[key] = reason or "classifier of the file: the model's head differs"
            report.allowed_skips.add(key)

    for key, value in source.items():
        if key in target:
            _put_conv(key, key, value, target, put, report)
            continue
        parent, _, leaf = key.rpartition(".")
        m = modules.get(parent)
        if isinstance(m, ConvTemporalSpatial) and leaf == "weight":
            _into_temporal_spatial(m, parent, key, value, put, report, modules)
        elif isinstance(m, Conv2Plus1d) and leaf == "weight":
            _into_2plus1d(m, parent, key, value, put, report)
        elif (isinstance(m, nn.Sequential) and len(m) == 2 and isinstance(m[0], nn.MaxPool3d)
              and leaf == "weight" and f"{parent}.1.weight" in target):
            _put_conv(f"{parent}.1.weight", key, value, target, put, report)
        elif _owner(modules, key, lambda mod: isinstance(mod, SmartConv)) or isinstance(m, SmartConv):
            report.skipped[key] = "the model has a SMART unit (ARTNet) here, which no single conv maps onto"
        else:
            report.skipped[key] = "no such tensor in the model"

    # Projection-shortcut BNs the file lacks (PyTorchVideo X3D): neutral, exact.
    for name, m in modules.items():
        if (name.endswith(".shortcut.1") and isinstance(m, nn.BatchNorm3d)
                and f"{name[:-2]}.0.weight" in new and f"{name}.weight" not in new
                and not any(k.startswith(name + ".") for k in wf.state)):
            for k, v in neutral_bn(m, name).items():
                put(k, v, report.identity)
            report.hold_bn.append(name)

    counters = 0
    for key in target:
        if key in new:
            continue
        if key.endswith(".num_batches_tracked"):
            new[key] = torch.zeros_like(target[key])
            counters += 1
            continue
        plugin = _owner(modules, key, lambda mod: getattr(mod, "identity_at_init", False))
        if plugin is not None:
            report.kept.append(key)
        elif cls_prefixes and key.startswith(cls_prefixes):
            report.new_classifier.append(key)
        elif key in report.skipped:
            report.missing[key] = f"the file's {key} was not used ({report.skipped[key]})"
        else:
            report.missing[key] = "not in the file"
    if counters:
        report.notes.append(f"{counters} BatchNorm counters (num_batches_tracked) absent from "
                            "the file, set to 0")
    if wf.format == "torchvision-resnet":
        report.layout = layout_vs_2d_resnet(model)
    return new, report


def _shape_reason(value: torch.Tensor, want: torch.Tensor) -> str:
    text = f"shape {_shape(value)} in the file, {_shape(want)} in the model"
    if (value.dim() == want.dim() == 5 and value.shape[:2] == want.shape[:2]
            and value.shape[3:] == want.shape[3:]):
        text += f" (temporal kernel {value.shape[2]} vs {want.shape[2]})"
    return text


def _put_conv(dst: str, src: str, value: torch.Tensor, target: Tensors, put,
              report: LoadReport) -> None:
    """Model tensor ``dst`` from file tensor ``src``: copied, inflated, or skipped (why)."""
    want = target[dst]
    if value.shape == want.shape:
        put(dst, value, report.loaded)
    elif (inflated := inflate(value, want.shape)) is not None:
        put(dst, inflated, report.inflated)
    else:
        report.skipped[src] = _shape_reason(value, want) + (f" (as {dst})" if dst != src else "")


def _into_temporal_spatial(m: ConvTemporalSpatial, parent: str, key: str, value: torch.Tensor,
                           put, report: LoadReport, modules: dict[str, nn.Module]) -> None:
    """A k x k conv into t x 1 x 1 -> BN -> ReLU -> 1 x k x k: spatial <- 2D, temporal identity."""
    spatial, temporal, bn = m[3], m[0], m[1]
    inflated = inflate(value, spatial.weight.shape)
    if inflated is None:
        report.skipped[key] = f"{_shape_reason(value, spatial.weight)} (as {parent}.3.weight)"
        return
    put(f"{parent}.3.weight", inflated, report.inflated)
    put(f"{parent}.0.weight", identity_temporal(temporal), report.identity)
    for k, v in neutral_bn(bn, f"{parent}.1").items():
        put(k, v, report.identity)
    report.hold_bn.append(f"{parent}.1")


def _into_2plus1d(m: Conv2Plus1d, parent: str, key: str, value: torch.Tensor, put,
                  report: LoadReport) -> None:
    """A k x k conv (O, I) into 1 x k x k (M) -> BN -> ReLU -> t x 1 x 1 (O): the spatial conv
    makes [W x; -W x; 0], the temporal centre tap returns relu(W x) - relu(-W x) = W x."""
    spatial, bn, temporal = m[0], m[1], m[3]
    mid, out = spatial.out_channels, temporal.out_channels
    w2d = value[:, :, 0] if value.dim() == 5 and value.shape[2] == 1 else value
    if w2d.dim() != 4 or tuple(w2d.shape) != (out, spatial.in_channels) + tuple(spatial.kernel_size[1:]):
        report.skipped[key] = (f"shape {_shape(value)} in the file does not fit the (2+1)D conv "
                               f"{parent} ({spatial.in_channels} -> {mid} -> {out})")
        return
    if mid < 2 * out:
        report.skipped[key] = (f"(2+1)D conv {parent} has mid width {mid} < 2 x {out}: the ReLU "
                               "between its convs cannot pass a signed 2D response exactly")
        return
    ws = torch.zeros_like(spatial.weight)
    ws[:out, :, 0] = w2d
    ws[out:2 * out, :, 0] = -w2d
    wt = torch.zeros_like(temporal.weight)
    idx, c = torch.arange(out), temporal.weight.shape[2] // 2
    wt[idx, idx, c] = 1.0
    wt[idx, idx + out, c] = -1.0
    put(f"{parent}.0.weight", ws, report.inflated)
    put(f"{parent}.3.weight", wt, report.identity)
    for k, v in neutral_bn(bn, f"{parent}.1").items():
        put(k, v, report.identity)


# --- entry point -------------------------------------------------------------------------------------

def describe_problems(report: LoadReport, limit: int = 3) -> str:
    """The first ``limit`` problems as one line."""
    probs = report.problems
    shown = "; ".join(f"{k}: {r}" if k != "(layout)" else f"layout: {r}" for k, r in probs[:limit])
    more = f" (and {len(probs) - limit} more)" if len(probs) > limit else ""
    return shown + more


PARTIAL_HINT = "pass --partial-init to start with these at their initial values"


def load_weights(model: nn.Module, path: str | Path | WeightsFile, *,
                 classes: Sequence[str] | None = None, partial: bool = False,
                 model_name: str = "", hint: str = PARTIAL_HINT) -> LoadReport:
    """Initialise ``model`` from ``path`` (a vcorr checkpoint, a state dict in vcorr names, or
    torchvision / PyTorchVideo weights; :func:`vcorr.pipelines.weights.convert.read_weights`).

    Raises :class:`UserError` (one line naming the file, the first tensors and why) when the
    load would be partial -- a model tensor without a value, a file tensor not used beyond the
    classifier, or a 2D ResNet into a model of another layout -- unless ``partial`` is set;
    then the tensors without a value keep their initial values. The model is unchanged when
    it raises. ``classes``: see :func:`plan_load`; ``hint`` ends the error message.
    """
    wf = path if isinstance(path, WeightsFile) else read_weights(path)
    new, report = plan_load(model, wf, classes=classes, model_name=model_name)
    report.partial = partial
    if not new or not (report.loaded or report.inflated):
        raise UserError(f"{wf.path}: no tensor matches the model {report.model} (names or shapes "
                        f"differ; {describe_problems(report)})")
    if report.problems and not partial:
        raise UserError(f"{wf.path}: partial load into {report.model}: {describe_problems(report)}; "
                        f"{hint}")
    model.load_state_dict(new, strict=False)
    return report
