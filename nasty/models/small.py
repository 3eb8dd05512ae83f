"""Small nets sized for 8x8 digits (they also run on MNIST-sized inputs)."""

from __future__ import annotations

from torch import nn

from ._base import Classifier, conv_bn, init_weights
from ._registry import register_model


class SmallCNN(Classifier):
    taps = {"conv1": "features.0", "conv2": "features.2", "conv3": "features.3"}  # conv2: after its max-pool

    def __init__(self, *, num_classes: int, in_chans: int = 1, widths=(32, 64, 128)):
        super().__init__()
        a, b, c = widths
        self.features = nn.Sequential(
            conv_bn(in_chans, a), conv_bn(a, b), nn.MaxPool2d(2), conv_bn(b, c),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(c, num_classes)
        init_weights(self)

    def forward_features(self, x):
        return self.features(x)


class TinyCNN(Classifier):
    taps = {"conv1": "features.1", "conv2": "features.2"}  # conv1: after its max-pool

    def __init__(self, *, num_classes: int, in_chans: int = 1, widths=(16, 32)):
        super().__init__()
        a, b = widths
        self.features = nn.Sequential(
            conv_bn(in_chans, a), nn.MaxPool2d(2), conv_bn(a, b), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(b, num_classes)
        init_weights(self)

    def forward_features(self, x):
        return self.features(x)


class MLP(Classifier):
    """Two hidden layers on the image average-pooled to ``grid`` x ``grid``."""

    taps = {"hidden1": "features.3", "hidden2": "features.5"}

    def __init__(self, *, num_classes: int, in_chans: int = 1, hidden: int = 128, grid: int = 8):
        super().__init__()
        self.features = nn.Sequential(
            nn.AdaptiveAvgPool2d(grid), nn.Flatten(),
            nn.Linear(in_chans * grid * grid, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        )
        self.head = nn.Linear(hidden, num_classes)

    def forward_features(self, x):
        return self.features(x)


@register_model("small-cnn", doc="3-conv BN CNN (32/64/128), the digits teacher (~94k params)")
def small_cnn(*, num_classes, in_chans=1, **kw):
    return SmallCNN(num_classes=num_classes, in_chans=in_chans, **kw)


@register_model("tiny-cnn", doc="2-conv BN CNN (16/32), a digits student (~5k params)")
def tiny_cnn(*, num_classes, in_chans=1, **kw):
    return TinyCNN(num_classes=num_classes, in_chans=in_chans, **kw)


@register_model("mlp", doc="2-hidden-layer MLP on the image pooled to 8x8, a digits student")
def mlp(*, num_classes, in_chans=1, **kw):
    return MLP(num_classes=num_classes, in_chans=in_chans, **kw)


@register_model("wide-cnn", doc="small-cnn at twice the width (64/128/256), a larger digits teacher (~370k params)")
def wide_cnn(*, num_classes, in_chans=1, **kw):
    return SmallCNN(num_classes=num_classes, in_chans=in_chans, widths=(64, 128, 256), **kw)
