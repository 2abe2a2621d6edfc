"""Distillation from frozen teacher checkpoints, and the weight average (EMA) a run validates."""
from __future__ import annotations

import copy

import torch
from torch import nn

from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.preprocess import InputSpec

from .checkpoint import load_checkpoint, model_from_checkpoint


def load_teachers(paths: list[str], kd_alpha: float, spec: InputSpec, device: torch.device, replay: bool = False) -> list[nn.Module]:
    """The frozen teacher models (none when ``kd_alpha`` is 0 and no faces are replayed for them to
    teach); each must read the student's input."""
    if kd_alpha and not paths:
        raise EmoError("kd_alpha is set but no teachers are given; add teachers = [\"runs/NAME/model.pt\", ...]")
    if replay and not paths:
        raise EmoError("replay is set but no teachers are given: the replayed faces learn the teachers' soft labels; "
                       "add teachers = [\"runs/NAME/model.pt\", ...]")
    if not 0.0 <= kd_alpha <= 1.0:
        raise EmoError(f"kd_alpha must be within [0, 1], got {kd_alpha}")
    out = []
    for path in paths if kd_alpha or replay else []:
        ck = load_checkpoint(path)
        if InputSpec.from_dict(ck["input"]) != spec:
            raise EmoError(f"teacher {path} reads input {ck['input']}, the student {spec.to_dict()}; "
                           "train the student with the teacher's input size, mean and std")
        out.append(frozen(model_from_checkpoint(ck).to(device)))
    return out


def order_heldout_teachers(paths: list[str], train_fingerprint: str) -> tuple[list[str], dict]:
    """For ``kd_heldout``: ``paths`` sorted by the fold each teacher held out, and the fold record
    they share. Each must be a fold run on the student's training faces, all with the same folds,
    one per fold, so every face has exactly one teacher that never trained on it."""
    by_fold: dict = {}
    shared = None
    for path in paths:
        rec = load_checkpoint(path).get("data", {})
        fold = rec.get("fold")
        if not fold:
            raise EmoError(f"teacher {path} is not a fold run; kd_heldout needs teachers trained with folds = K "
                           "and fold = 0..K-1 (one per fold)")
        if rec.get("train_fingerprint") != train_fingerprint:
            raise EmoError(f"teacher {path} was trained on other faces than --data holds; train the fold "
                           "teachers and the student on the same data")
        key = {k: fold[k] for k in ("folds", "seed", "assignment_sha256")}
        if shared is not None and key != shared:
            raise EmoError(f"teacher {path} splits the faces into other folds ({key['folds']} folds, fold_seed "
                           f"{key['seed']}) than the first teacher ({shared['folds']}, {shared['seed']})")
        shared = key
        if fold["fold"] in by_fold:
            raise EmoError(f"teachers {by_fold[fold['fold']]} and {path} both hold out fold {fold['fold']}; "
                           "give one teacher per fold")
        by_fold[fold["fold"]] = path
    if shared is None:
        raise EmoError("kd_heldout is set but no teachers are given; list the fold runs in teachers")
    missing = sorted(set(range(shared["folds"])) - set(by_fold))
    if missing:
        raise EmoError(f"kd_heldout: no teacher holds out fold(s) {missing} of {shared['folds']}; "
                       "train them (folds = K, fold = k) and add them to teachers")
    return [by_fold[k] for k in range(shared["folds"])], shared


def frozen(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def teacher_probs(teachers: list[nn.Module], x: torch.Tensor, temperature: float, amp: bool, flip: bool = False) -> torch.Tensor:
    """Mean of the teachers' softened class probabilities for batch ``x`` (and its mirror image)."""
    views = [x, torch.flip(x, dims=[3])] if flip else [x]
    acc = 0.0
    for t in teachers:
        for v in views:
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
                acc = acc + (t(v).float() / temperature).softmax(1)
    return acc / (len(teachers) * len(views))


@torch.no_grad()
def heldout_teacher_probs(teachers: list[nn.Module], face_folds: torch.Tensor, x: torch.Tensor, temperature: float,
                          amp: bool, flip: bool = False) -> torch.Tensor:
    """Each face's softened class probabilities from the one teacher that held its fold out
    (``teachers[k]`` held out fold k; ``face_folds`` gives each face's fold)."""
    out = None
    face_folds = face_folds.to(x.device)
    assert bool((face_folds < len(teachers)).all()), "a face's fold has no teacher"
    for k, t in enumerate(teachers):
        sel = face_folds == k
        if bool(sel.any()):
            p = teacher_probs([t], x[sel], temperature, amp, flip)
            if out is None:
                out = p.new_empty((len(x), p.shape[1]))
            out[sel] = p
    assert out is not None
    return out


def make_ema(model: nn.Module) -> nn.Module:
    return frozen(copy.deepcopy(model).eval())


def ema_decay(decay: float, step: int) -> float:
    """The weight average's decay at optimizer step ``step`` (0-based): (1 + step) / (10 + step),
    capped at ``decay``. A run from scratch starts its average from random weights; a fixed 0.999
    remembers them for thousands of steps (validation of the average sat at 18-25% for the first
    five or six epochs), this ramp forgets them within the first hundred."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    for e, m in zip(ema_model.state_dict().values(), model.state_dict().values()):
        if e.dtype.is_floating_point:
            e.lerp_(m.detach().to(e.dtype), 1.0 - decay)  # e + (1 - decay)(m - e): exact where m == e
        else:
            e.copy_(m)
