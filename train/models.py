"""Model registry: small CNNs for 48x48 gray faces. Each builder takes keyword args only."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.labels import NUM_CLASSES

REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        REGISTRY[name] = fn
        return fn

    return deco


def build_model(arch: str, **kwargs) -> nn.Module:
    if arch not in REGISTRY:
        raise EmoError(f"unknown architecture '{arch}'; choose one of: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[arch](**kwargs)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, size: int = 48) -> int:
    """Multiply-accumulates of one forward pass on a single ``1 x size x size`` image."""
    macs = 0

    def conv_hook(m, inp, out):
        nonlocal macs
        k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
        macs += out.numel() // out.shape[0] * k

    def lin_hook(m, inp, out):
        nonlocal macs
        macs += m.in_features * m.out_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 1, size, size))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return macs


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


def conv_bn(cin: int, cout: int, stride: int = 1, groups: int = 1, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(cout)
    ]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def pw_bn(cin: int, cout: int, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut (or depthwise-separable when ``sep``)."""

    def __init__(self, c: int, sep: bool = False):
        super().__init__()
        if sep:
            self.body = nn.Sequential(
                conv_bn(c, c, groups=c, act=False), pw_bn(c, c),
                conv_bn(c, c, groups=c, act=False), pw_bn(c, c, act=False),
            )
        else:
            self.body = nn.Sequential(conv_bn(c, c), conv_bn(c, c, act=False))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class EmoNet(nn.Module):
    """Edge-efficient residual CNN: a 3x3 stem, then per stage a strided 3x3 conv that halves
    the resolution and widens, followed by residual blocks; global average pooling; one fc.

    No large fully-connected layer (the seed's fc holds 99% of its weights), batch norm that the
    exporter folds into the convs, and ReLU only, which quantises well to int8.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64, 128),
        blocks: tuple[int, ...] = (1, 1, 2),
        sep: bool = False,
        dropout: float = 0.2,
        num_classes: int = NUM_CLASSES,
    ):
        super().__init__()
        widths, blocks = tuple(widths), tuple(blocks)
        if len(widths) != len(blocks) + 1:
            raise EmoError("emonet: widths needs one more entry (the stem) than blocks")
        layers: list[nn.Module] = [conv_bn(1, widths[0])]
        for i, n in enumerate(blocks):
            layers.append(conv_bn(widths[i], widths[i + 1], stride=2))
            layers.extend(ResBlock(widths[i + 1], sep=sep) for _ in range(n))
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(widths[-1], num_classes)
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        for m in self.modules():  # residual branches start near identity
            if isinstance(m, ResBlock):
                nn.init.zeros_(m.body[-1][1].weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register("seed")
def seed(**kw) -> nn.Module:
    return SeedCNN(**kw)


@register("emonet")
def emonet(**kw) -> nn.Module:
    return EmoNet(**kw)


@register("emonet-s")
def emonet_s(**kw) -> nn.Module:
    """Smaller, depthwise-separable variant for the slowest devices."""
    kw.setdefault("widths", (24, 48, 96, 192))
    kw.setdefault("blocks", (1, 2, 2))
    kw.setdefault("sep", True)
    return EmoNet(**kw)
