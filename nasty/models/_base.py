"""The contract every model in the zoo keeps: penultimate features, then a linear head."""

from __future__ import annotations

import torch
from torch import nn


class Classifier(nn.Module):
    """``forward(x) == head(forward_features(x))``; ``num_features`` is the feature width.

    Subclasses build ``self.head`` (an ``nn.Linear``) and implement ``forward_features``,
    which returns pooled, flat penultimate features ``(B, num_features)``. ``taps`` names
    intermediate depths, shallow to deep (name -> submodule path): :meth:`forward_taps` returns
    their outputs beside the logits, for auxiliary heads (the skeptical student). Reading them
    adds nothing to the plain forward.
    """

    head: nn.Linear
    taps: dict[str, str] = {}

    def forward_taps(self, x: torch.Tensor, names) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits, {name: output of that tap})`` from one forward; the hooks go afterwards."""
        from ..errors import ModelError

        unknown = [n for n in names if n not in self.taps]
        if unknown:
            raise ModelError(f"{type(self).__name__} has no tap {unknown[0]!r}; it has {', '.join(self.taps) or 'none'}")
        seen: dict[str, torch.Tensor] = {}
        handles = [self.get_submodule(self.taps[n]).register_forward_hook(
            lambda module, inputs, output, n=n: seen.__setitem__(n, output)) for n in names]
        try:
            logits = self(x)
        finally:
            for h in handles:
                h.remove()
        return logits, seen

    @property
    def num_features(self) -> int:
        return self.head.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    """Conv (no bias, 'same' padding) + BatchNorm (+ ReLU)."""
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU(inplace=True)) if relu else nn.Sequential(*layers)


def init_weights(model: nn.Module) -> nn.Module:
    """Kaiming-normal convolutions, unit BatchNorm, small linear layers (the usual CIFAR init)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model
