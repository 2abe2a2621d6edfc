"""Evaluating a model on a labelled split: logits in batches, optional flip TTA, the report."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from emo.edge_runtime.dataset import Split
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.metrics import classification_report
from emo.edge_runtime.preprocess import InputSpec, normalize


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, device: torch.device, tta: bool = False, batch: int = 512) -> torch.Tensor:
    """Logits for normalised faces ``x`` (eval mode); with ``tta``, the log of the probabilities
    averaged over each face and its mirror image."""
    model.eval()
    outs = []
    for i in range(0, len(x), batch):
        xb = x[i : i + batch].to(device)
        logits = model(xb).float()
        if tta:
            logits = (logits.softmax(1) + model(torch.flip(xb, dims=[3])).float().softmax(1)).log()
        outs.append(logits.cpu())
    return torch.cat(outs) if outs else torch.zeros(0, len(LABELS))


def evaluate_split(model: nn.Module, split: Split, spec: InputSpec, device: torch.device, tta: bool = False) -> tuple[dict, float]:
    """The classification report of ``model`` on ``split`` and its mean cross-entropy (NaN with ``tta``)."""
    x = torch.from_numpy(normalize(split.images, spec))
    logits = predict_logits(model, x, device, tta)
    loss = float(F.cross_entropy(logits, torch.from_numpy(split.labels))) if not tta else float("nan")
    return classification_report(split.labels, logits.argmax(1).numpy()), loss
