"""Optimiser and learning-rate schedule of a run."""
from __future__ import annotations

import math

import torch
from torch import nn

from emo.edge_runtime.errors import EmoError

from .config import TrainConfig


def lr_factor(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
    """Multiplier of ``cfg.lr`` at optimiser step ``step`` of ``total``: a linear warm-up over
    ``warmup_epochs`` (not for ``constant``), then cosine to 0 or linear to 1% (``onecycle``)."""
    warm = int(cfg.warmup_epochs * steps_per_epoch) if cfg.schedule != "constant" else 0
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    p = min(1.0, (step - warm) / max(1, total - warm))
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * p))
    if cfg.schedule == "onecycle":  # linear decay to 1% after warm-up
        return max(0.01, 1 - p)
    raise EmoError(f"unknown schedule '{cfg.schedule}'; use constant, cosine or onecycle")


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":  # no decay on biases and BatchNorm parameters
        decay = [p for p in model.parameters() if p.ndim > 1]
        no_decay = [p for p in model.parameters() if p.ndim <= 1]
        return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    raise EmoError(f"unknown optimizer '{cfg.optimizer}'; use adam, adamw or sgd")


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr
