"""The network of a gated pair (``emo-train finetune --gated``, :mod:`emo.train.gated`): a base
model and a copy fine-tuned on a user's faces in one graph, their probabilities mixed per face by
a domain gate, a logistic regression on what a room puts in a face (a 12x12 thumbnail, the share
of pixels at or above 15 grey levels) and on the copy's pooled features. The gate's nodes are
named ``/gate/...`` in ONNX, and the exporter leaves them in float (a gate quantised to 8 bits
would route faces by rounding). ``build_model("gated", base=..., copy=...)`` builds one."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emo.edge_runtime.errors import EmoError

THUMB = 12  # the thumbnail's side
LEVELS = 15  # grey levels 16, 32, ..., 240: the share of pixels at or above each


class DomainGate(nn.Module):
    """``sigmoid(linear([thumbnail, grey-level shares, learnt features]))``: the weight of the
    copy's answer for each face. ``mean``/``std`` undo the input's normalisation."""

    def __init__(self, learnt: int, size: int = 48, mean: float = 0.5, std: float = 0.25):
        super().__init__()
        if size % THUMB:
            raise EmoError(f"gated: the input size ({size}) must be a multiple of {THUMB}")
        self.pool, self.mean, self.std = size // THUMB, float(mean), float(std)
        self.register_buffer("levels", torch.arange(1, LEVELS + 1, dtype=torch.float32) * 16 / 255 - 0.5 / 255)
        self.linear = nn.Linear(THUMB * THUMB + LEVELS + learnt, 1)

    def features(self, x: torch.Tensor, learnt: torch.Tensor) -> torch.Tensor:
        px = x * self.std + self.mean  # the face in [0, 1]
        thumb = F.avg_pool2d(px, self.pool).flatten(1)
        shares = (px.flatten(1).unsqueeze(2) >= self.levels).float().mean(1)
        return torch.cat([thumb, shares, learnt], 1)

    def weigh(self, x: torch.Tensor, learnt: torch.Tensor) -> torch.Tensor:
        """The copy's weight per face, ``(N, 1)``."""
        return torch.sigmoid(self.linear(self.features(x, learnt)))

    def forward(self, x: torch.Tensor, learnt: torch.Tensor, base_logits: torch.Tensor, copy_logits: torch.Tensor) -> torch.Tensor:
        g = self.weigh(x, learnt)
        p = g * torch.softmax(copy_logits, 1) + (1 - g) * torch.softmax(base_logits, 1)
        return torch.log(p.clamp_min(1e-7))  # log-probabilities: softmax gives the mixed probabilities back


class GatedPair(nn.Module):
    """``base`` and ``copy`` (built networks) and their gate; the output is the log of the mixed
    probabilities. ``pooled``: the gate reads the copy's pooled features (emonet: ``features``,
    then ``head[:2]``; ``learnt`` of them), else its logits. Built by ``build_model("gated", ...)``."""

    def __init__(self, base: nn.Module, copy: nn.Module, pooled: bool, learnt: int, size: int = 48, mean: float = 0.5,
                 std: float = 0.25):
        super().__init__()
        self.base, self.copy, self.pooled = base, copy, bool(pooled)
        self.gate = DomainGate(learnt, size, mean, std)

    def copy_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """What the gate reads of the copy, and the copy's logits."""
        if self.pooled:
            h = self.copy.head[:2](self.copy.features(x))
            return h, self.copy.head[2:](h)
        y = self.copy(x)
        return y, y

    def gate_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate.features(x, self.copy_outputs(x)[0])

    def routed(self, x: torch.Tensor) -> torch.Tensor:
        """The gate's weight of the copy, per face."""
        return self.gate.weigh(x, self.copy_outputs(x)[0])[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        learnt, copy_logits = self.copy_outputs(x)
        return self.gate(x, learnt, self.base(x), copy_logits)
