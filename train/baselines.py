"""Other model families, beside emonet (:mod:`.models`): the seed CNN the project started from, a
VGG-style CNN for the large rung's ensemble, and mini-Xception as a reference point. They are
registered, with the others, in :mod:`.models`."""
from __future__ import annotations

import torch
from torch import nn

from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.labels import NUM_CLASSES

from .layers import conv_bn


class SeedCNN(nn.Module):
    """The original design: conv5x5x32, pool, conv3x3x64, pool, fc256 + dropout, fc7."""

    def __init__(self, dropout: float = 0.5, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * 12 * 12, 256), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(256, num_classes),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, std=0.02, a=-0.04, b=0.04)
                nn.init.trunc_normal_(m.bias, std=0.02, a=-0.04, b=0.04)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class EmoVGG(nn.Module):
    """A plain VGG-style CNN, a different family from emonet for the large rung's ensemble: per
    stage ``convs`` 3x3 conv-BN-ReLU layers and a 2x2 max-pool (48 -> 3 px over four stages), then
    a fully-connected head over the flattened map, which keeps where on the face a feature was
    (emonet averages it away), fc ``fc`` with dropout, fc 7."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), convs: int = 2, fc: int = 256,
                 dropout: float = 0.5, num_classes: int = NUM_CLASSES, size: int = 48):
        super().__init__()
        if convs < 1 or not widths or size % 2 ** len(widths):
            raise EmoError(f"vgg: needs convs >= 1 and an input size ({size}) divisible by 2^{len(widths)} (one pool per width)")
        layers: list[nn.Module] = []
        cin = 1
        for w in widths:
            for _ in range(convs):
                layers.append(conv_bn(cin, w))
                cin = w
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = size // 2 ** len(widths)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin * side * side, fc), nn.ReLU(inplace=True),
            nn.Dropout(dropout), nn.Linear(fc, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class MiniXception(nn.Module):
    """The classic mini-Xception for FER2013 (Arriaga, Valdenegro-Toro and Plöger, "Real-time
    Convolutional Neural Networks for Emotion and Gender Classification", 2017), rebuilt here from
    the paper's description as a reference point for the model ladder: two plain 3x3 convs with 8
    filters (no padding), four modules of two depthwise-separable 3x3 convs (16, 32, 64, 128
    filters) and a 3x3 max-pool with a strided 1x1 shortcut, then a 3x3 conv to one map per class
    and global average pooling. About 58k parameters."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), num_classes: int = NUM_CLASSES):
        super().__init__()

        def sep(cin: int, cout: int, act: bool) -> list[nn.Module]:
            layers = [nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.Conv2d(cin, cout, 1, bias=False),
                      nn.BatchNorm2d(cout)]
            return layers + [nn.ReLU(inplace=True)] if act else layers

        self.stem = nn.Sequential(
            nn.Conv2d(1, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        )
        self.shortcuts = nn.ModuleList()
        self.bodies = nn.ModuleList()
        cin = 8
        for w in widths:
            self.shortcuts.append(nn.Sequential(nn.Conv2d(cin, w, 1, stride=2, bias=False), nn.BatchNorm2d(w)))
            self.bodies.append(nn.Sequential(*sep(cin, w, True), *sep(w, w, False), nn.MaxPool2d(3, 2, padding=1)))
            cin = w
        self.head = nn.Sequential(nn.Conv2d(cin, num_classes, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for short, body in zip(self.shortcuts, self.bodies):
            x = short(x) + body(x)
        return self.head(x)
