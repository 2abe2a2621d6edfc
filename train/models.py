"""Model registry: small CNNs for 48x48 gray faces. Each builder takes keyword args only.

Here: the registry, parameter and MAC counts, emonet (the ladder's family) and the ensemble;
the other families are in :mod:`.baselines`, the shared conv blocks in :mod:`.layers`."""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.labels import NUM_CLASSES

from .baselines import EmoVGG, MiniXception, SeedCNN
from .layers import ResBlock, conv_bn
from .pairing import GatedPair
from .stems import DualStem

REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    def deco(fn):
        REGISTRY[name] = fn
        return fn

    return deco


def build_model(arch: str, **kwargs) -> nn.Module:
    if arch == "gated":  # made from trained models by `emo-train finetune --gated`, not a trainable family
        return gated_pair(**kwargs)
    if arch == "dual-stem":  # made from a trained emonet by `emo-train harden`
        return dual_stem(**kwargs)
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


class EmoNet(nn.Module):
    """Edge-efficient residual CNN: a 3x3 stem, then per stage a strided 3x3 conv that halves
    the resolution and widens, followed by residual blocks; global average pooling; one fc.

    No large fully-connected layer (the seed's fc holds 99% of its weights), batch norm that the
    exporter folds into the convs, and ReLU only, which quantises well to int8.

    ``stem_stride=2`` halves the resolution in the stem (the full-resolution stem is most of a
    small model's int8 latency); ``stem_blocks`` residual blocks follow the stem (with the first
    stage's ``sep``); ``sep`` is one flag or one per stage.
    """

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64, 128),
        blocks: tuple[int, ...] = (1, 1, 2),
        sep: bool | tuple[bool, ...] = False,
        dropout: float = 0.2,
        num_classes: int = NUM_CLASSES,
        stem_stride: int = 1,
        stem_blocks: int = 0,
    ):
        super().__init__()
        widths, blocks = tuple(widths), tuple(blocks)
        if len(widths) != len(blocks) + 1:
            raise EmoError("emonet: widths needs one more entry (the stem) than blocks")
        seps = tuple(sep) if isinstance(sep, (list, tuple)) else (bool(sep),) * len(blocks)
        if len(seps) != len(blocks):
            raise EmoError("emonet: sep is one flag, or one per stage (as many as blocks)")
        layers: list[nn.Module] = [conv_bn(1, widths[0], stride=stem_stride)]
        layers.extend(ResBlock(widths[0], sep=seps[0]) for _ in range(stem_blocks))
        self.roles: list[tuple] = [("stem",)] + [("block", 0, j) for j in range(stem_blocks)]
        for i, n in enumerate(blocks):
            layers.append(conv_bn(widths[i], widths[i + 1], stride=2))
            layers.extend(ResBlock(widths[i + 1], sep=seps[i]) for _ in range(n))
            self.roles += [("down", i + 1)] + [("block", i + 1, j) for j in range(n)]
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


def grow_state_dict(small: nn.Module, big: nn.Module) -> dict | None:
    """``big``'s state dict with ``small``'s weights in place, when ``big`` is ``small`` with more
    residual blocks per stage (same widths, strides and block types); None
    otherwise. Each stage's blocks keep their order and the new ones follow them, keeping their
    initialisation: a residual branch whose last BatchNorm scale is zero, so the grown network
    starts out computing exactly what the small one did."""
    if not (isinstance(small, EmoNet) and isinstance(big, EmoNet)):
        return None
    where = {role: i for i, role in enumerate(big.roles)}
    out = big.state_dict()
    for k, v in small.state_dict().items():
        if not k.startswith("features."):
            if k not in out or out[k].shape != v.shape:
                return None
            out[k] = v
            continue
        _, idx, rest = k.split(".", 2)
        role = small.roles[int(idx)]
        nk = f"features.{where[role]}.{rest}" if role in where else None
        if nk not in out or out[nk].shape != v.shape or type(small.features[int(idx)]) is not type(big.features[where[role]]):
            return None
        out[nk] = v
    return out


@register("vgg")
def vgg(**kw) -> nn.Module:
    return EmoVGG(**kw)


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


@register("mini-xception")
def mini_xception(**kw) -> nn.Module:
    return MiniXception(**kw)


class Ensemble(nn.Module):
    """Several emo models in one graph, for the large rung: each sees the same face and their
    logits are averaged (one ONNX file, one onnxruntime call). ``members`` lists each model's
    ``{"arch": ..., "arch_args": {...}}``; `emo-train ensemble` builds one from checkpoints.
    ``flip``: each member also sees the mirrored face and both logits enter the average (twice
    the compute; the graph does it, so every runtime gets it)."""

    def __init__(self, members: list, num_classes: int = NUM_CLASSES, flip: bool = False):
        super().__init__()
        if not members:
            raise EmoError("ensemble: members is empty; name at least two checkpoints")
        built = []
        for m in members:
            if not isinstance(m, dict) or "arch" not in m or m["arch"] == "ensemble":
                raise EmoError(f"ensemble: each member is {{'arch': NAME, 'arch_args': {{...}}}} of a single model, not {m!r}")
            built.append(build_model(m["arch"], **{"num_classes": num_classes, **(m.get("arch_args") or {})}))
        self.members = nn.ModuleList(built)
        self.flip = bool(flip)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.flip:
            n = x.shape[0]
            both = torch.cat([x, torch.flip(x, dims=[3])])  # one call per member for the face and its mirror
            return torch.stack([y[:n] + y[n:] for y in (m(both) for m in self.members)]).sum(0) / (2 * len(self.members))
        return torch.stack([m(x) for m in self.members]).mean(0)


@register("ensemble")
def ensemble(**kw) -> nn.Module:
    kw.setdefault("members", [{"arch": "emonet-s"}, {"arch": "mini-xception"}])
    return Ensemble(**kw)


def gated_pair(base: dict | None = None, copy: dict | None = None, size: int = 48, mean: float = 0.5, std: float = 0.25,
               num_classes: int = NUM_CLASSES) -> GatedPair:
    """The gated pair of ``base`` and ``copy`` (each ``{"arch": ..., "arch_args": {...}}`` of a single
    network); the gate reads an emonet copy's pooled features, another family's logits."""
    if base is None or copy is None:
        raise EmoError("a gated pair is made from a trained model by `emo-train finetune DATA --gated`, not trained by "
                       "emo-train fit; pick another arch")
    built = []
    for role, m in (("base", base), ("copy", copy)):
        if not isinstance(m, dict) or "arch" not in m or m["arch"] in ("ensemble", "gated"):
            raise EmoError(f"gated: {role} is {{'arch': NAME, 'arch_args': {{...}}}} of a single model, not {m!r}")
        built.append(build_model(m["arch"], **{"num_classes": num_classes, **(m.get("arch_args") or {})}))
    pooled = isinstance(built[1], EmoNet)
    return GatedPair(built[0], built[1], pooled, built[1].head[-1].in_features if pooled else num_classes, size, mean, std)


def dual_stem(base: dict | None = None, split: int = 5, size: int = 48, mean: float = 0.5, std: float = 0.25,
              num_classes: int = NUM_CLASSES, adapter: int = 0) -> DualStem:
    """An emonet ``base`` (``{"arch": ..., "arch_args": {...}}``) with a twin of its first ``split``
    blocks for spoiled faces, the quality gate between them and, with ``adapter``, a gated branch
    of that many channels beside the next block (:mod:`emo.train.stems`)."""
    if base is None:
        raise EmoError("a dual-stem model is made from a trained emonet by `emo-train harden CKPT`, not trained by "
                       "emo-train fit; pick another arch")
    if not isinstance(base, dict) or "arch" not in base or base["arch"] in ("ensemble", "gated", "dual-stem"):
        raise EmoError(f"dual-stem: base is {{'arch': NAME, 'arch_args': {{...}}}} of a single emonet, not {base!r}")
    net = build_model(base["arch"], **{"num_classes": num_classes, **(base.get("arch_args") or {})})
    if not isinstance(net, EmoNet):
        raise EmoError(f"dual-stem: the base must be an emonet, not {base['arch']}")
    return DualStem(net, split, size, mean, std, adapter)
