"""A gated pair (``emo-train finetune --gated``): the base model and a copy plainly fine-tuned on
a user's faces, side by side in one graph, their probabilities mixed per face by a domain gate
that tells faces like the user's from FER2013's.

One network cannot both learn a new room's faces fully and keep FER2013 (a plain fine-tune reads
the user's unseen people best and forgets about 13 points of FER2013; the replayed distillation
of the default recipe keeps FER2013 and learns less: ``research/results/finetune-frontier.md``).
The pair keeps both: the base answers for faces that look like FER2013, the copy for faces that
look like the user's. The gate is a logistic regression on what the room puts in a face (a 12x12
thumbnail and the share of pixels above 15 grey levels) and on the copy's pooled features,
fitted here on the user's training faces against FER2013 training faces (:func:`fit_gate`); the
network is :mod:`emo.train.pairing`. Twice the base's size and time per face. Also finetune's
steps for it: :func:`gated_config`, :func:`pair_up`."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from emo.edge_runtime.dataset import load_split
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.preprocess import InputSpec, normalize

from .checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_atomic
from .models import build_model
from .pairing import GatedPair

GATE_L2 = 1e-2  # the gate's L2 penalty (on standardised features)
GATE_OTHER = 4000  # FER2013 training faces the gate learns to tell apart from the user's


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


def build_gated(base_ck: dict, copy_ck: dict, mine: np.ndarray, fer: str, seed: int, log: Callable) -> dict:
    """The gated pair's checkpoint from the base and the fine-tuned copy, its gate fitted on the
    user's training faces ``mine`` (48x48 uint8) against ``GATE_OTHER`` FER2013 training faces of
    ``fer``."""
    spec = InputSpec.from_dict(base_ck["input"])
    args = {"base": {"arch": base_ck["arch"], "arch_args": base_ck["arch_args"]},
            "copy": {"arch": copy_ck["arch"], "arch_args": copy_ck["arch_args"]}, "size": spec.size, "mean": spec.mean, "std": spec.std}
    model = build_model("gated", **args)
    model.base.load_state_dict(model_from_checkpoint(base_ck).state_dict())
    model.copy.load_state_dict(model_from_checkpoint(copy_ck).state_dict())
    pool = load_split(fer, "train", spec.size)
    pick = np.random.default_rng(seed).choice(len(pool.labels), min(GATE_OTHER, len(pool.labels)), replace=False)
    log(f"fitting the gate: your {len(mine)} training faces against {len(pick)} FER2013 training faces of {pool.report.source}")
    stats = fit_gate(model, normalize(mine, spec), normalize(pool.images[np.sort(pick)], spec))
    stats["fer"] = str(Path(fer).resolve())  # the export calibrates int8 on these too: the base answers for faces like them
    log(f"  on those faces the gate gives your copy {stats['mine_to_copy'] * 100:.1f}% of the weight on yours and "
        f"{stats['other_to_copy'] * 100:.1f}% on FER2013's")
    return make_checkpoint(model.eval(), "gated", args, base_ck["input"], copy_ck.get("config") or {}, copy_ck.get("data") or {},
                           copy_ck.get("metrics") or {}, gate=stats)


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
    if copy_ck["arch"] != "gated":
        save_atomic(copy_ck, run_dir / "copy.pt")
    copy_ck = load_checkpoint(run_dir / "copy.pt")
    ck = build_gated(base_ck, copy_ck, mine, fer, seed, log)
    save_atomic(ck, run_dir / "model.pt")
    return ck
