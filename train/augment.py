"""Data augmentation on normalised batches, every random draw from one seeded generator.

The trainer derives a generator per step from the seed, the epoch and the batch index
(:func:`step_generator`) and the batch order per epoch from the seed and the epoch
(:func:`epoch_permutation`), so an interrupted run that resumes draws exactly what an
uninterrupted one would.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from emo.edge_runtime.degrade import random_degrade

from .config import TrainConfig


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 100_003 + step) % (2**63))


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def augment(x: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    """Random affine (rotation, scale, shift, flip), brightness/contrast and erasing, batched.

    ``x`` is a normalised batch (B, 1, H, W); ``cfg`` gives the strengths (``rotate``, ``scale``,
    ``shift``, ``flip``, ``brightness``, ``contrast``, ``random_erasing``, and ``std`` to express
    brightness in pixel units). All randomness comes from ``g``.
    """
    b = x.shape[0]
    u = lambda *s: torch.rand(*s, generator=g) * 2 - 1  # noqa: E731  uniform in [-1, 1]
    ang = u(b) * math.radians(cfg.rotate)
    sc = 1 + u(b) * cfg.scale
    t = u(b, 2) * cfg.shift * 2  # affine_grid coordinates span 2 per image side
    flip = torch.where(torch.rand(b, generator=g) < (0.5 if cfg.flip else 0.0), -1.0, 1.0)
    cos, sin = torch.cos(ang) / sc, torch.sin(ang) / sc
    theta = torch.stack([torch.stack([cos * flip, -sin, t[:, 0]], 1), torch.stack([sin * flip, cos, t[:, 1]], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # brightness / contrast in pixel space [0, 1], expressed on the normalised values
    c = (1 + u(b) * cfg.contrast).view(b, 1, 1, 1).to(x.device)
    br = (u(b) * cfg.brightness / cfg.std).view(b, 1, 1, 1).to(x.device)
    m = x.mean(dim=(2, 3), keepdim=True)
    x = (x - m) * c + m + br
    if cfg.random_erasing > 0:
        h, w = x.shape[2:]
        on = torch.rand(b, generator=g) < cfg.random_erasing
        area = 0.02 + torch.rand(b, generator=g) * 0.13
        ar = torch.exp(u(b) * math.log(3.0))
        eh = (torch.sqrt(area * ar) * h).clamp(1, h - 1).long()
        ew = (torch.sqrt(area / ar) * w).clamp(1, w - 1).long()
        y0 = (torch.rand(b, generator=g) * (h - eh)).long()
        x0 = (torch.rand(b, generator=g) * (w - ew)).long()
        for i in torch.nonzero(on).flatten().tolist():
            x[i, :, y0[i] : y0[i] + eh[i], x0[i] : x0[i] + ew[i]] = 0.0
    return x


def degrade(x: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    """Each face of a normalised batch, with probability ``cfg.degrade``, as a random camera would
    spoil it (:func:`emo.edge_runtime.degrade.random_degrade`: distance down to ``degrade_min_px``,
    blur, noise, lighting, JPEG), worked on the uint8 pixels the runtime would see."""
    rng = np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=g)))
    pick = np.flatnonzero(rng.random(len(x)) < cfg.degrade)
    if not len(pick):
        return x
    pix = np.clip(np.rint((x[pick, 0].numpy() * cfg.std + cfg.mean) * 255.0), 0, 255).astype(np.uint8)
    spoiled = np.stack([random_degrade(im, rng, cfg.degrade_min_px) for im in pix]).astype(np.float32)
    out = x.clone()
    out[torch.from_numpy(pick), 0] = torch.from_numpy((spoiled / 255.0 - cfg.mean) / cfg.std)
    return out


def mixup(x: torch.Tensor, alpha: float, g: torch.Generator) -> tuple[torch.Tensor, float, torch.Tensor]:
    """Blend each face with a partner from the same batch: returns the blended batch, the weight
    ``lam`` ~ Beta(alpha, alpha) of the original faces, and the partner indices."""
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=g))).beta(alpha, alpha))
    partner = torch.randperm(len(x), generator=g)
    return lam * x + (1 - lam) * x[partner], lam, partner
