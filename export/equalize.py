"""Activation-range equalisation for depthwise-separable convolutions, before int8 quantisation.

A depthwise conv (with its BatchNorm) feeds a 1x1 conv with no nonlinearity between them, so
channel i of the depthwise output can be divided by any s_i > 0 if column i of the 1x1 conv's
weights is multiplied by s_i: the network computes the same function. Int8 quantises an activation
with one scale per tensor, so a depthwise output whose channels span very different ranges loses
the small ones; scaling every channel up to the largest range (measured on calibration faces)
gives each the full 8 bits, and the 1x1 conv's per-channel weight scales absorb the factors.
(Cross-layer equalisation: Nagel et al., "Data-Free Quantization Through Weight Equalization and
Bias Correction", 2019.) Plain convolutions are left alone.
"""
from __future__ import annotations

import copy

import torch
from torch import nn


def separable_pairs(model: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d | None, nn.Conv2d]]:
    """(depthwise conv, its BatchNorm or None, the 1x1 conv it feeds), found in module order:
    a depthwise conv, optionally a BatchNorm, then a 1x1 ungrouped conv with nothing between."""
    leaves = [m for m in model.modules() if not list(m.children())]
    out = []
    for i, m in enumerate(leaves):
        if not (isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels):
            continue
        j, bn = i + 1, None
        if j < len(leaves) and isinstance(leaves[j], nn.BatchNorm2d):
            bn, j = leaves[j], j + 1
        nxt = leaves[j] if j < len(leaves) else None
        if isinstance(nxt, nn.Conv2d) and nxt.groups == 1 and nxt.kernel_size == (1, 1) and nxt.in_channels == m.out_channels:
            out.append((m, bn, nxt))
    return out


@torch.no_grad()
def equalize_separable(model: nn.Module, x: torch.Tensor, batch: int = 500) -> tuple[nn.Module, int]:
    """A copy of ``model`` (eval mode) with the depthwise outputs' channel ranges equalised on
    faces ``x``, and the number of depthwise convs changed. The copy computes the same function
    (checked on ``x``; the original is returned unchanged if not)."""
    eq = copy.deepcopy(model).eval()
    pairs = separable_pairs(eq)
    if not pairs:
        return model, 0
    ranges: dict[int, torch.Tensor] = {}

    def hook(k):
        def fn(mod, inp, out):
            r = out.detach().abs().amax(dim=(0, 2, 3))
            ranges[k] = torch.maximum(ranges[k], r) if k in ranges else r
        return fn

    hooks = [(bn or dw).register_forward_hook(hook(k)) for k, (dw, bn, _) in enumerate(pairs)]
    ref = torch.cat([eq(x[i : i + batch]) for i in range(0, len(x), batch)])
    for h in hooks:
        h.remove()
    for k, (dw, bn, pw) in enumerate(pairs):
        a = ranges[k]
        s = torch.where(a > 0, a / a.max(), torch.ones_like(a)).clamp(min=1e-2)
        if bn is not None:
            bn.weight.div_(s)
            bn.bias.div_(s)
        else:
            dw.weight.div_(s.view(-1, 1, 1, 1))
            if dw.bias is not None:
                dw.bias.div_(s)
        pw.weight.mul_(s.view(1, -1, 1, 1))
    new = torch.cat([eq(x[i : i + batch]) for i in range(0, len(x), batch)])
    if not torch.allclose(new, ref, atol=1e-4 * max(1.0, float(ref.abs().max()))):
        return model, 0
    return eq, len(pairs)
