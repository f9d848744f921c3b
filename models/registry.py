"""Model registry: every variant is a name, a builder and a few lines of default arguments.

>>> model = create_model("cpnet_r18", num_classes=174, k=12)
>>> list_models("cpnet_*")

Builders take plain keyword arguments (models never read configuration files); overrides given
to :func:`create_model` replace the registered defaults.
"""
from __future__ import annotations

import copy
import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import nn


class UnknownModelError(KeyError, ValueError):
    """A model name that is not registered (the message lists close matches)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class ModelEntry:
    """A registered variant.

    ``input_shape`` is the default clip (C, T, H, W); ``paper_params_m`` the paper's parameter
    count in the CPNet paper's unit (2^20 parameters) where a table gives one.
    """

    name: str
    builder: Callable[..., nn.Module]
    defaults: Mapping[str, Any]
    paper: str
    input_shape: tuple[int, int, int, int]
    num_classes: int
    paper_params_m: float | None = None
    description: str = ""
    tags: tuple[str, ...] = field(default=())


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, builder: Callable[..., nn.Module], *, paper: str,
                   input_shape: tuple[int, int, int, int], num_classes: int,
                   paper_params_m: float | None = None, description: str = "",
                   tags: tuple[str, ...] = (), **defaults: Any) -> ModelEntry:
    """Register ``name``; ``defaults`` are keyword arguments of ``builder``."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _check_kwargs(name, builder, defaults)
    entry = ModelEntry(name, builder, dict(defaults), paper, tuple(input_shape), num_classes,
                       paper_params_m, description, tuple(tags))
    _REGISTRY[name] = entry
    return entry


def _check_kwargs(name: str, builder: Callable[..., nn.Module], kwargs: Mapping[str, Any]) -> None:
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise TypeError(f"{name}: unknown argument(s) {', '.join(unknown)}; "
                        f"accepted: {', '.join(p for p in params if p != 'num_classes')}")


def get_model_entry(name: str) -> ModelEntry:
    """The :class:`ModelEntry` of ``name``; :class:`UnknownModelError` if not registered."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `vcorr models`"
        raise UnknownModelError(f"unknown model {name!r}{hint}") from None


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style ``pattern``, in registration order."""
    return [n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern)]


def create_model(name: str, num_classes: int | None = None, **overrides: Any) -> nn.Module:
    """Build a registered model; ``num_classes`` and ``overrides`` replace the defaults."""
    entry = get_model_entry(name)
    _check_kwargs(name, entry.builder, overrides)
    kwargs = copy.deepcopy(dict(entry.defaults))
    kwargs.update(overrides)
    kwargs["num_classes"] = entry.num_classes if num_classes is None else num_classes
    return entry.builder(**kwargs)
