"""Building blocks of the model families: 3x3 and 1x1 conv-BN(-ReLU), and the residual block."""
from __future__ import annotations

import torch
from torch import nn


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
