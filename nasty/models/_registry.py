"""One registry, one ``create_model``. Names: our zoo, ``tv:<name>``, ``timm:<name>``."""

from __future__ import annotations

from typing import Callable

from torch import nn

from ..errors import ModelError

_MODELS: dict[str, tuple[Callable[..., nn.Module], str]] = {}


def register_model(name: str, *, doc: str = ""):
    """Decorator: ``@register_model("resnet18")`` on ``fn(*, num_classes, in_chans, **kw)``."""

    def deco(fn):
        if name in _MODELS:
            raise ValueError(f"model '{name}' registered twice")
        _MODELS[name] = (fn, doc or next(iter((fn.__doc__ or "").strip().splitlines()), ""))
        return fn

    return deco


def list_models() -> dict[str, str]:
    """Registered names with a one-line description (``tv:*`` and ``timm:*`` not listed)."""
    return {k: v[1] for k, v in sorted(_MODELS.items())}


def create_model(name: str, *, num_classes: int, in_chans: int = 3, **kwargs) -> nn.Module:
    """Build a classifier with ``forward_features`` (penultimate, flat) and ``forward_head``."""
    if name.startswith("tv:"):
        from ._external import torchvision_model

        return torchvision_model(name[3:], num_classes=num_classes, in_chans=in_chans, **kwargs)
    if name.startswith("timm:"):
        from ._external import timm_model

        return timm_model(name[5:], num_classes=num_classes, in_chans=in_chans, **kwargs)
    if name not in _MODELS:
        raise ModelError(f"unknown architecture '{name}'; choose one of: {', '.join(sorted(_MODELS))}, "
                         f"tv:<torchvision name> or timm:<timm name>")
    return _MODELS[name][0](num_classes=num_classes, in_chans=in_chans, **kwargs)
