"""The paper's 32x32 nets: plain CNN, ResNet-18 (CIFAR stem), pre-activation ResNetC-20/32,
MobileNetV2, ShuffleNetV2 and ResNeXt-29, written in the usual CIFAR form (stride-1 stem)."""

from __future__ import annotations

import torch
from torch import nn

from ._base import Classifier, conv_bn, init_weights
from ._registry import register_model


class PlainCNN(Classifier):
    """3 conv (32/64/128, BN, max-pool) + FC-500 + dropout: the paper's 'CNN' student."""

    taps = {"conv1": "features.1", "conv2": "features.3", "conv3": "features.5"}  # each after its max-pool

    def __init__(self, *, num_classes, in_chans=3, hidden=500, dropout=0.5):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(in_chans, 32), nn.MaxPool2d(2), conv_bn(32, 64), nn.MaxPool2d(2),
            conv_bn(64, 128), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Linear(128 * 16, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        )
        self.head = nn.Linear(hidden, num_classes)
        init_weights(self)

    def forward_features(self, x):
        return self.features(x)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, stride=stride), conv_bn(cout, cout, relu=False))
        self.short = nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, 1, stride, relu=False)

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


class PreActBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(inplace=True))
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.conv2 = nn.Sequential(nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.Conv2d(cout, cout, 3, 1, 1, bias=False))
        self.short = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x):
        out = self.pre(x)
        short = x if self.short is None else self.short(out)
        return self.conv2(self.conv1(out)) + short


class ResNeXtBlock(nn.Module):
    def __init__(self, cin, cout, stride, cardinality, width):
        super().__init__()
        mid = cardinality * width
        self.body = nn.Sequential(conv_bn(cin, mid, 1), conv_bn(mid, mid, 3, stride, groups=cardinality),
                                  conv_bn(mid, cout, 1, relu=False))
        self.short = nn.Identity() if stride == 1 and cin == cout else conv_bn(cin, cout, 1, stride, relu=False)

    def forward(self, x):
        return torch.relu(self.body(x) + self.short(x))


class StagedNet(Classifier):
    """A stem, stages of blocks (first block of a stage may downsample), optional final
    BN-ReLU (pre-activation nets), global average pooling, linear head. Taps: ``stage1``... at
    the output of each stage (each block for MobileNetV2)."""

    def __init__(self, *, stem, stages, out_ch, num_classes, final=None):
        super().__init__()
        self.stem, self.stages = stem, nn.Sequential(*stages)
        self.taps = {f"stage{i + 1}": f"stages.{i}" for i in range(len(stages))}
        self.final = final or nn.Identity()
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(out_ch, num_classes)
        init_weights(self)

    def forward_features(self, x):
        return self.pool(self.final(self.stages(self.stem(x))))


def _stages(block, cin, widths, depths, strides, **kw):
    stages = []
    for w, d, s in zip(widths, depths, strides):
        stages.append(nn.Sequential(*[block(cin if i == 0 else w, w, s if i == 0 else 1, **kw) for i in range(d)]))
        cin = w
    return stages


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        mid = cin * expand
        layers = [conv_bn(cin, mid, 1)] if expand != 1 else []
        layers += [conv_bn(mid, mid, 3, stride, groups=mid), conv_bn(mid, cout, 1, relu=False)]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.body(x) if self.residual else self.body(x)


def channel_shuffle(x, groups=2):
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.stride = stride
        half = cout // 2
        bin_ = cin if stride == 2 else cin // 2
        self.branch = nn.Sequential(conv_bn(bin_, half, 1), conv_bn(half, half, 3, stride, groups=half, relu=False),
                                    conv_bn(half, half, 1))
        self.left = (nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin, relu=False), conv_bn(cin, half, 1))
                     if stride == 2 else None)

    def forward(self, x):
        if self.stride == 1:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat([x1, self.branch(x2)], 1)
        else:
            out = torch.cat([self.left(x), self.branch(x)], 1)
        return channel_shuffle(out)


@register_model("cnn", doc="the paper's plain 5-layer CNN student (3 conv + 2 FC)")
def cnn(*, num_classes, in_chans=3, **kw):
    return PlainCNN(num_classes=num_classes, in_chans=in_chans, **kw)


@register_model("resnet18", doc="ResNet-18 with the CIFAR stem (3x3 conv, no max-pool)")
def resnet18(*, num_classes, in_chans=3):
    stages = _stages(BasicBlock, 64, (64, 128, 256, 512), (2, 2, 2, 2), (1, 2, 2, 2))
    return StagedNet(stem=conv_bn(in_chans, 64), stages=stages, out_ch=512, num_classes=num_classes)


def _preact_resnet(depth, num_classes, in_chans):
    n = (depth - 2) // 6
    stages = _stages(PreActBlock, 16, (16, 32, 64), (n, n, n), (1, 2, 2))
    stem = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
    final = nn.Sequential(nn.BatchNorm2d(64), nn.ReLU(inplace=True))
    return StagedNet(stem=stem, stages=stages, out_ch=64, num_classes=num_classes, final=final)


@register_model("resnetc20", doc="pre-activation CIFAR ResNet-20 (16/32/64), 'ResNetC-20'")
def resnetc20(*, num_classes, in_chans=3):
    return _preact_resnet(20, num_classes, in_chans)


@register_model("resnetc32", doc="pre-activation CIFAR ResNet-32 (16/32/64), 'ResNetC-32'")
def resnetc32(*, num_classes, in_chans=3):
    return _preact_resnet(32, num_classes, in_chans)


@register_model("resnext29", doc="CIFAR ResNeXt-29 (default 8x64d; cardinality=, width= to shrink)")
def resnext29(*, num_classes, in_chans=3, cardinality=8, width=64):
    stages = []
    cin = 64
    for i, (cout, stride) in enumerate(((256, 1), (512, 2), (1024, 2))):
        w = width * 2**i
        stages.append(nn.Sequential(*[ResNeXtBlock(cin if j == 0 else cout, cout, stride if j == 0 else 1,
                                                   cardinality, w) for j in range(3)]))
        cin = cout
    return StagedNet(stem=conv_bn(in_chans, 64), stages=stages, out_ch=1024, num_classes=num_classes)


@register_model("mobilenetv2", doc="MobileNetV2 for 32x32 inputs (stride-1 stem)")
def mobilenetv2(*, num_classes, in_chans=3):
    cfg = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    blocks, cin = [], 32
    for t, c, n, s in cfg:
        for i in range(n):
            blocks.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    return StagedNet(stem=conv_bn(in_chans, 32), stages=blocks, out_ch=1280, num_classes=num_classes,
                     final=conv_bn(320, 1280, 1))


@register_model("shufflenetv2", doc="ShuffleNetV2 1x for 32x32 inputs (stride-1 stem, no max-pool)")
def shufflenetv2(*, num_classes, in_chans=3):
    stages = _stages(ShuffleUnit, 24, (116, 232, 464), (4, 8, 4), (2, 2, 2))
    return StagedNet(stem=conv_bn(in_chans, 24), stages=stages, out_ch=1024, num_classes=num_classes,
                     final=conv_bn(464, 1024, 1))
