"""A gated pair (``emo-train finetune --gated``): the base model and a copy plainly fine-tuned on
a user's faces, side by side in one graph, their probabilities mixed per face by a domain gate
that tells faces like the user's from FER2013's.

One network cannot both learn a new room's faces fully and keep FER2013 (a plain fine-tune reads
the user's unseen people best and forgets about 13 points of FER2013; the replayed distillation
of the default recipe keeps FER2013 and learns less: ``research/results/finetune-frontier.md``).
The pair keeps both: the base answers for faces that look like FER2013, the copy for faces that
look like the user's. The gate is a logistic regression on what the room puts in a face (a 12x12
thumbnail and the share of pixels above 15 grey levels) and on the copy's pooled features,
fitted on the user's training faces against FER2013 training faces. Its nodes are named
``/gate/...`` in ONNX, and the exporter leaves them in float (a gate quantised to 8 bits would
route faces by rounding). Twice the base's size and time per face."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.labels import NUM_CLASSES

THUMB = 12  # the thumbnail's side
LEVELS = 15  # grey levels 16, 32, ..., 240: the share of pixels at or above each
GATE_L2 = 1e-2  # the gate's L2 penalty (on standardised features)
GATE_OTHER = 4000  # FER2013 training faces the gate learns to tell apart from the user's


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

    def forward(self, x: torch.Tensor, learnt: torch.Tensor, base_logits: torch.Tensor, copy_logits: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.linear(self.features(x, learnt)))
        p = g * torch.softmax(copy_logits, 1) + (1 - g) * torch.softmax(base_logits, 1)
        return torch.log(p.clamp_min(1e-7))  # log-probabilities: softmax gives the mixed probabilities back


def learnt_width(model: nn.Module) -> int:
    """How many of the copy's features the gate reads: emonet's pooled features; another
    family's logits."""
    from .models import EmoNet

    return model.head[-1].in_features if isinstance(model, EmoNet) else NUM_CLASSES


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from .models import EmoNet

    if isinstance(model, EmoNet):
        h = model.head[:2](model.features(x))
        return h, model.head[2:](h)
    y = model(x)
    return y, y


class GatedPair(nn.Module):
    """``base`` and ``copy`` (``{"arch": ..., "arch_args": {...}}``) and their gate; the output is
    the log of the mixed probabilities."""

    def __init__(self, base: dict, copy: dict, size: int = 48, mean: float = 0.5, std: float = 0.25, num_classes: int = NUM_CLASSES):
        super().__init__()
        from .models import build_model

        for role, m in (("base", base), ("copy", copy)):
            if not isinstance(m, dict) or "arch" not in m or m["arch"] in ("ensemble", "gated"):
                raise EmoError(f"gated: {role} is {{'arch': NAME, 'arch_args': {{...}}}} of a single model, not {m!r}")
        self.base = build_model(base["arch"], **{"num_classes": num_classes, **(base.get("arch_args") or {})})
        self.copy = build_model(copy["arch"], **{"num_classes": num_classes, **(copy.get("arch_args") or {})})
        self.gate = DomainGate(learnt_width(self.copy), size, mean, std)

    def gate_inputs(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate.features(x, features_and_logits(self.copy, x)[0])

    def routed(self, x: torch.Tensor) -> torch.Tensor:
        """The gate's weight of the copy, per face."""
        return torch.sigmoid(self.gate.linear(self.gate_inputs(x)))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        learnt, copy_logits = features_and_logits(self.copy, x)
        return self.gate(x, learnt, self.base(x), copy_logits)


@torch.no_grad()
def _batched(fn: Callable, x: np.ndarray, batch: int = 512) -> torch.Tensor:
    return torch.cat([fn(torch.from_numpy(x[i : i + batch])) for i in range(0, len(x), batch)])


def fit_gate(model: GatedPair, mine: np.ndarray, other: np.ndarray, l2: float = GATE_L2) -> dict:
    """Fit the gate: the user's faces ``mine`` (1) against ``other`` (0), normalised model inputs;
    classes balanced, features standardised (folded into the linear layer afterwards), L2 ``l2``,
    LBFGS. Returns how the gate routes its own training faces."""
    model.eval()
    x = torch.cat([_batched(model.gate_inputs, mine), _batched(model.gate_inputs, other)])
    y = torch.cat([torch.ones(len(mine)), torch.zeros(len(other))])
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xn = (x - mu) / sd
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")
    balance = torch.tensor(len(other) / max(1, len(mine)))

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(xn @ w + b, y, pos_weight=balance) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        model.gate.linear.weight.copy_((w / sd)[None])
        model.gate.linear.bias.copy_(b - (w * mu / sd).sum())
        g = torch.sigmoid(xn @ w + b)
    return {"mine": int(len(mine)), "other": int(len(other)), "mine_to_copy": round(float(g[: len(mine)].mean()), 4),
            "other_to_copy": round(float(g[len(mine):].mean()), 4)}


def build_gated(base_ck: dict, copy_ck: dict, mine: np.ndarray, fer: str, seed: int, log: Callable) -> tuple[dict, GatedPair]:
    """The gated pair's checkpoint from the base and the fine-tuned copy, its gate fitted on the
    user's training faces ``mine`` (48x48 uint8) against ``GATE_OTHER`` FER2013 training faces of
    ``fer``."""
    from emo.edge_runtime.dataset import load_split
    from emo.edge_runtime.preprocess import InputSpec, normalize

    from .checkpoint import make_checkpoint, model_from_checkpoint

    spec = InputSpec.from_dict(base_ck["input"])
    args = {"base": {"arch": base_ck["arch"], "arch_args": base_ck["arch_args"]},
            "copy": {"arch": copy_ck["arch"], "arch_args": copy_ck["arch_args"]}, "size": spec.size, "mean": spec.mean, "std": spec.std}
    model = GatedPair(**args)
    model.base.load_state_dict(model_from_checkpoint(base_ck).state_dict())
    model.copy.load_state_dict(model_from_checkpoint(copy_ck).state_dict())
    pool = load_split(fer, "train", spec.size)
    pick = np.random.default_rng(seed).choice(len(pool.labels), min(GATE_OTHER, len(pool.labels)), replace=False)
    log(f"fitting the gate: your {len(mine)} training faces against {len(pick)} FER2013 training faces of {pool.report.source}")
    stats = fit_gate(model, normalize(mine, spec), normalize(pool.images[np.sort(pick)], spec))
    stats["fer"] = str(Path(fer).resolve())  # the export calibrates int8 on these too: the base answers for faces like them
    log(f"  on those faces the gate gives your copy {stats['mine_to_copy'] * 100:.1f}% of the weight on yours and "
        f"{stats['other_to_copy'] * 100:.1f}% on FER2013's")
    ck = make_checkpoint(model.eval(), "gated", args, base_ck["input"], copy_ck.get("config") or {}, copy_ck.get("data") or {},
                         copy_ck.get("metrics") or {}, gate=stats)
    return ck, model


# ---------------------------------------------------------------- emo-train finetune --gated
def gated_config(cfg, base_ck: dict, replay: str, overrides: dict) -> str:
    """--gated: the copy learns your faces' labels alone (no replay, no teacher); FER2013 is
    still needed, for the gate. Returns the line saying so."""
    if not replay:
        raise EmoError("--gated tells your faces from FER2013's and needs FER2013's training faces; pass --replay PATH "
                       "(a FER2013 folder or fer2013.csv)")
    cfg.replay, cfg.teachers = "", []
    if "kd_alpha" not in overrides:
        cfg.kd_alpha = 0.0
    return (f"gated: a copy of the base learns your faces' labels; a gate fitted on your faces against FER2013's ({replay}) "
            "sends faces like yours to the copy and the rest to the base")


def pair_up(run_dir: Path, base_ck: dict, copy_ck: dict, mine: np.ndarray, fer: str, seed: int, log: Callable) -> dict:
    """--gated: the trainer's model.pt (the copy) moves to copy.pt, and model.pt becomes the pair
    (rebuilt from copy.pt when a rerun finds the pair already there)."""
    from .checkpoint import load_checkpoint, save_atomic

    if copy_ck["arch"] != "gated":
        save_atomic(copy_ck, run_dir / "copy.pt")
    copy_ck = load_checkpoint(run_dir / "copy.pt")
    ck, _ = build_gated(base_ck, copy_ck, mine, fer, seed, log)
    save_atomic(ck, run_dir / "model.pt")
    return ck
