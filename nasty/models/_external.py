"""``tv:<name>`` (torchvision) and ``timm:<name>`` (timm, if installed) behind our contract."""

from __future__ import annotations

from torch import nn

from ..errors import ModelError
from ._base import Classifier


def _set_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent, _, leaf = dotted.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


class TorchvisionClassifier(Classifier):
    """A torchvision model whose last ``nn.Linear`` became ``self.head``.

    ``remap_state_dict`` accepts the model's original torchvision key names, so a released
    torchvision state dict loads as it is.
    """

    def __init__(self, body: nn.Module, head_name: str):
        super().__init__()
        self.head = body.get_submodule(head_name)
        _set_module(body, head_name, nn.Identity())
        self.body, self.head_name = body, head_name

    def forward_features(self, x):
        return self.body(x).flatten(1)

    def remap_state_dict(self, sd: dict) -> dict:
        if any(k.startswith(("body.", "head.")) for k in sd):
            return sd
        prefix = self.head_name + "."
        return {("head." + k[len(prefix):]) if k.startswith(prefix) else "body." + k: v for k, v in sd.items()}


def torchvision_model(name: str, *, num_classes: int, in_chans: int = 3, **kw) -> Classifier:
    import torchvision.models as tvm

    if name not in tvm.list_models():
        raise ModelError(f"unknown torchvision model 'tv:{name}'; see torchvision.models.list_models()")
    kw.setdefault("weights", None)
    if name.startswith(("googlenet", "inception")):
        kw.setdefault("aux_logits", False)
        kw.setdefault("init_weights", True)
    body = tvm.get_model(name, num_classes=num_classes, **kw)
    linears = [n for n, m in body.named_modules() if isinstance(m, nn.Linear) and m.out_features == num_classes]
    if not linears:
        raise ModelError(f"tv:{name} has no final nn.Linear classifier; it cannot be used here")
    if in_chans != 3:
        first = next(n for n, m in body.named_modules() if isinstance(m, nn.Conv2d))
        c = body.get_submodule(first)
        _set_module(body, first, nn.Conv2d(in_chans, c.out_channels, c.kernel_size, c.stride, c.padding,
                                           c.dilation, c.groups, c.bias is not None))
    return TorchvisionClassifier(body, linears[-1])


class TimmClassifier(Classifier):
    """A timm model; features are its pre-logits (``forward_head(..., pre_logits=True)``)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    @property
    def num_features(self) -> int:
        return self.body.num_features

    def forward_features(self, x):
        return self.body.forward_head(self.body.forward_features(x), pre_logits=True).flatten(1)

    def forward_head(self, features):
        return self.body.get_classifier()(features)

    def forward(self, x):
        return self.body(x)

    def remap_state_dict(self, sd: dict) -> dict:
        return sd if any(k.startswith("body.") for k in sd) else {"body." + k: v for k, v in sd.items()}


def timm_model(name: str, *, num_classes: int, in_chans: int = 3, **kw) -> Classifier:
    try:
        import timm
    except ImportError:
        raise ModelError("timm models need timm: pip install -e '.[timm]' in a checkout of nasty "
                         "(or pip install timm)") from None
    if not timm.list_models(name) and name not in timm.list_models():
        raise ModelError(f"unknown timm model 'timm:{name}'; see timm.list_models()")
    return TimmClassifier(timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_chans, **kw))
