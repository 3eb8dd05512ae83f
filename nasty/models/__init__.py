"""Model zoo: ``create_model(name, num_classes=..., in_chans=...)``.

Every model is a :class:`Classifier`-like module: ``forward_features(x)`` gives pooled
penultimate features ``(B, D)``, ``forward_head(f)`` the logits, ``num_features`` is ``D``.
"""

from . import cifar, small  # noqa: F401  (registers the models)
from ._base import Classifier
from ._registry import create_model, list_models, register_model

__all__ = ["Classifier", "create_model", "list_models", "register_model"]
