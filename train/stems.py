"""The network of a hardened model (``emo-train harden``, :mod:`emo.train.harden`): a trained emonet
whose first blocks (the stem) get a twin trained on spoiled faces, and a quality gate that sends
each face through the stem that suits it.

A camera spoils a face in the first layers' terms: blur and a small face take the fine edges away,
noise and JPEG add false ones. The twin stem learns to turn a spoiled face into what the original
stem makes of the clean one, while the rest of the network stays as it was; so clean faces keep
the original's answers exactly and spoiled ones get a stem made for them. The gate is a logistic
regression on measures of sharpness, noise and blockiness, a 12x12 thumbnail and the original
stem's pooled output; its nodes are named ``/gate/...`` in ONNX and stay in float in the int8
model. The two stems' outputs are mixed by the gate's weight and the rest of the network runs once,
so the cost is one more stem per face. ``build_model("dual-stem", base=..., split=...)`` builds one.

With ``adapter=R`` the spoiled path also gets weights of its own after the split: a small branch
(conv of R channels, BatchNorm, ReLU, 1x1 conv) beside the next conv block, added before its ReLU
and weighted by the gate. It starts at zero, so a fresh one changes nothing, and where the gate
gives the twin no weight the network is the base's exactly. The branch costs a fraction of a
full twin of that block (whose weights the base's shares)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from emo.edge_runtime.errors import EmoError

THUMB = 12  # the thumbnail's side
MEASURES = 12  # the log-measures of QualityGate.measures


class QualityGate(nn.Module):
    """``sigmoid(linear([log-measures, thumbnail, pooled stem output]))``: the weight of the twin
    stem for each face. ``mean``/``std`` undo the input's normalisation."""

    def __init__(self, learnt: int, size: int = 48, mean: float = 0.5, std: float = 0.25):
        super().__init__()
        if size % THUMB:
            raise EmoError(f"dual-stem: the input size ({size}) must be a multiple of {THUMB}")
        self.pool, self.mean, self.std = size // THUMB, float(mean), float(std)
        self.register_buffer("laplace", torch.tensor([[[[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]]]))
        self.linear = nn.Linear(MEASURES + THUMB * THUMB + learnt, 1)

    def measures(self, px: torch.Tensor) -> torch.Tensor:
        """Sharpness (Laplacian, gradients, second differences), noise (the finest Haar
        coefficient, what a 3x3 mean leaves), JPEG's 8-pixel block edges, and the face's spread."""
        lap = F.conv2d(px, self.laplace)
        dx, dy = (px[..., :, 1:] - px[..., :, :-1]).abs(), (px[..., 1:, :] - px[..., :-1, :]).abs()
        cols, rows = dx.mean((1, 2)), dy.mean((1, 3))  # (N, W-1), (N, H-1)
        haar = px[..., ::2, ::2] - px[..., 1::2, ::2] - px[..., ::2, 1::2] + px[..., 1::2, 1::2]
        rest = px - F.avg_pool2d(px, 3, stride=1, padding=1, count_include_pad=False)
        d2x = (px[..., :, 2:] - 2 * px[..., :, 1:-1] + px[..., :, :-2]).abs()
        q = torch.stack([lap.abs().mean((1, 2, 3)), lap.pow(2).mean((1, 2, 3)).sqrt(), cols.mean(1), rows.mean(1),
                         haar.abs().mean((1, 2, 3)), rest.abs().mean((1, 2, 3)), rest.pow(2).mean((1, 2, 3)).sqrt(),
                         cols[:, 7::8].mean(1), rows[:, 7::8].mean(1), d2x.mean((1, 2, 3)), px.std((1, 2, 3)),
                         px.mean((1, 2, 3))], 1)
        return torch.log(q + 1e-4)

    def features(self, x: torch.Tensor, learnt: torch.Tensor) -> torch.Tensor:
        # the face in [0, 1]: the runtime's faces are, and training's brightness and contrast jitter can push a
        # dark face below 0, where the log of its measures (its mean) would be NaN and poison the whole batch
        px = (x * self.std + self.mean).clamp(0.0, 1.0)
        return torch.cat([self.measures(px), F.avg_pool2d(px, self.pool).flatten(1), learnt], 1)

    def forward(self, x: torch.Tensor, learnt: torch.Tensor) -> torch.Tensor:
        """The twin stem's weight per face, ``(N, 1, 1, 1)`` (called as a module, so that its ONNX
        nodes are named ``/gate/...``)."""
        return torch.sigmoid(self.linear(self.features(x, learnt)))[:, :, None, None]


class DualStem(nn.Module):
    """``net`` (an emonet) with a twin of ``net.features[:split]`` and the gate that mixes the two
    stems' outputs per face; the rest of ``net`` runs once on the mix. Output: logits."""

    def __init__(self, net: nn.Module, split: int, size: int = 48, mean: float = 0.5, std: float = 0.25, adapter: int = 0):
        super().__init__()
        if not hasattr(net, "features") or not 0 < split < len(net.features):
            raise EmoError(f"dual-stem: split must name one of the base's blocks, 1..{len(getattr(net, 'features', [])) - 1}, "
                           f"not {split}")
        self.net, self.split = net, int(split)
        self.twin = copy.deepcopy(net.features[:split])
        self.adapter = _branch(net.features[split], int(adapter), split) if adapter else None
        with torch.no_grad():  # a copy in eval mode: a probe must not move the stem's BatchNorm statistics
            width = copy.deepcopy(self.twin).eval()(torch.zeros(1, 1, size, size)).shape[1]
        self.gate = QualityGate(width, size, mean, std)

    def stems(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.net.features[: self.split](x), self.twin(x)

    def rest(self, h: torch.Tensor, g: torch.Tensor | float | None = None) -> torch.Tensor:
        """The network after the split on the stem output ``h``; with an adapter, its branch is
        added to the next block with the twin's weight ``g`` (none when ``g`` is None)."""
        if self.adapter is None or g is None:
            return self.net.head(self.net.features[self.split :](h))
        conv, bn, act = self.net.features[self.split]
        h2 = act(bn(conv(h)) + g * self.adapter(h))
        return self.net.head(self.net.features[self.split + 1 :](h2))

    def twin_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The network with the twin stem (and adapter) alone (what `emo-train harden` trains)."""
        return self.rest(self.twin(x), 1.0)

    def trainable(self) -> nn.ModuleDict:
        """What `emo-train harden` trains: the twin stem, and the adapter if there is one."""
        return nn.ModuleDict({"twin": self.twin, **({"adapter": self.adapter} if self.adapter is not None else {})})

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """The original stem's output, averaged over the face: what the gate learns from."""
        return self.net.features[: self.split](x).mean((2, 3))

    def gate_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate.features(x, self.pooled(x))

    def routed(self, x: torch.Tensor) -> torch.Tensor:
        """The gate's weight of the twin stem, per face."""
        return self.gate(x, self.pooled(x))[:, 0, 0, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, t = self.stems(x)
        g = self.gate(x, h.mean((2, 3)))
        return self.rest(h + g * (t - h), g)


def _branch(block: nn.Module, width: int, split: int) -> nn.Sequential:
    """The adapter beside ``block`` (a conv-BatchNorm-ReLU block): a conv like its own but ``width``
    channels wide, BatchNorm, ReLU and a 1x1 conv to its channels, zero at the start."""
    if not (isinstance(block, nn.Sequential) and len(block) == 3 and isinstance(block[0], nn.Conv2d)
            and isinstance(block[1], nn.BatchNorm2d) and isinstance(block[2], nn.ReLU)):
        raise EmoError(f"dual-stem: an adapter goes beside a conv-BatchNorm-ReLU block, and block {split} (after the split) "
                       "is not one; pick another split (emonet: 3 or 5) or no adapter")
    if width < 1:
        raise EmoError(f"dual-stem: the adapter's width must be a positive number of channels, not {width}")
    c = block[0]
    out = nn.Conv2d(width, c.out_channels, 1)
    nn.init.zeros_(out.weight)
    nn.init.zeros_(out.bias)
    return nn.Sequential(nn.Conv2d(c.in_channels, width, c.kernel_size, c.stride, c.padding, bias=False),
                         nn.BatchNorm2d(width), nn.ReLU(), out)
