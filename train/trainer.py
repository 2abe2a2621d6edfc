"""The training loop, readable top to bottom.

Data lives in memory as normalised float tensors; each step takes one global batch from a
seeded permutation, augments it on the fly with batched affine warps, and steps the optimiser.
Every epoch ends with validation and an atomic checkpoint; Ctrl-C or SIGTERM saves progress
mid-epoch, and ``--resume`` continues exactly where it stopped (the permutation, augmentation
and dropout random streams are all derived from the seed and the step, or saved).

Two objects hold everything (:mod:`.run`): :class:`Run`, what is built once (data, model,
optimiser, teachers; built and restored by :mod:`.build`), and :class:`RunState`, what changes as
the run goes and is saved in ``last.pt`` to resume it.

With ``replay`` (fine-tuning on a user's faces), each step also draws faces of a second set,
FER2013's, and the loss adds the teachers' soft labels on them, so the model learns the new faces
without forgetting the old (learning without forgetting, with rehearsal of unlabelled faces).

Under ``torchrun`` each process takes an interleaved slice of every global batch and DDP
averages the gradients, so the global batch, and so the result, matches a single process.
"""
from __future__ import annotations

import copy
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from emo.edge_runtime.degrade import summarize
from emo.edge_runtime.preprocess import normalize
from emo.edge_runtime.stopping import StopFlag

from .augment import augment, degrade, epoch_permutation, mixup, step_generator
from .build import RESUME_OVERRIDABLE, restore, resume_config, setup  # noqa: F401 (RESUME_OVERRIDABLE: imported from here too)
from .checkpoint import make_checkpoint, save_atomic
from .config import TrainConfig
from .distill import ema_decay, ema_update, heldout_teacher_probs, teacher_probs
from .evaluate import evaluate_split
from .optim import lr_factor, set_lr
from .recalibrate import batchnorm_layers, recalibrate_bn
from .run import ROBUST_KEYS, SELECT_KEYS, Run, RunState, Stop, new_running  # noqa: F401 (ROBUST_KEYS: imported from here too)
from .runlog import write_logs


def train(cfg: Optional[TrainConfig], resume: Optional[str] = None, overrides: Optional[dict] = None, log=print,
          resume_hint: str = "") -> Path:
    """Train per ``cfg``; returns the run folder.

    ``resume`` (a run folder or its last.pt) continues a stopped run with its saved config; only
    the keys in ``RESUME_OVERRIDABLE`` may be changed through ``overrides``, since anything else
    (epochs, learning rate, ...) would make the result differ from an uninterrupted run.
    ``resume_hint`` is the command a stopped run names to continue (default: ``emo-train fit --resume``).
    """
    saved = None
    if resume:
        cfg, saved = resume_config(resume, overrides or {})
    assert cfg is not None
    run = setup(cfg, resuming=saved is not None, log=log)
    state = restore(run, saved) if saved else RunState()
    stop = StopFlag()
    if run.is_main or run.world == 1:
        stop.install()
    try:
        while state.epoch < run.epochs and not run.early_stopped(state):
            t0 = time.time()
            if state.batch == 0:  # a fresh epoch: its own dropout stream and running figures
                torch.manual_seed(cfg.seed * 1_000_003 + state.epoch * 31 + run.rank)
                state.running = new_running()
            train_epoch(run, state, stop)
            end_epoch(run, state, t0)
            if stop.reason:
                raise Stop(stop.reason)
    except Stop as s:
        if run.is_main:
            save_atomic(checkpoint(run, state, run.model, resumable=True), run.dir / "last.pt")
        run.log(f"stopped by {s}; progress saved to {run.dir / 'last.pt'}. Continue with: {resume_hint or f'emo-train fit --resume {run.dir}'}")
        raise
    finally:
        stop.restore()
        if run.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    which = "kept the last epoch: val accuracy" if cfg.select == "last" else "best val accuracy"
    run.log(f"{which} {state.best['val_accuracy']:.4f} at epoch {state.best['epoch']}; checkpoint {run.dir / 'model.pt'}")
    return run.dir


def train_epoch(run: Run, state: RunState, stop: StopFlag) -> None:
    """The remaining batches of epoch ``state.epoch``; raises :class:`Stop` after a signal."""
    cfg = run.cfg
    perm = epoch_permutation(len(run.y_train), cfg.seed, state.epoch)
    n_batches = min(run.steps_per_epoch, run.total_steps - state.epoch * run.steps_per_epoch)
    from tqdm import tqdm

    bar = tqdm(total=n_batches, initial=state.batch, desc=f"epoch {state.epoch + 1}/{run.epochs}", unit="batch",
               dynamic_ncols=True, file=sys.stderr, disable=not (run.is_main and cfg.progress and sys.stderr.isatty()))
    run.ddp_model.train()
    if cfg.bn_frozen:  # normalise with the statistics the run started from, and leave them as they are
        for layer in batchnorm_layers(run.model):
            layer.eval()
    try:
        for b in range(state.batch, n_batches):
            idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
            loss, correct, seen = train_step(run, idx, step_generator(cfg.seed, state.epoch, b), state.step)
            state.step, state.batch = state.step + 1, b + 1
            r = state.running
            r["loss"], r["correct"], r["seen"] = r["loss"] + loss * seen, r["correct"] + correct, r["seen"] + seen
            bar.update(1)
            bar.set_postfix(loss=f"{r['loss'] / r['seen']:.3f}", acc=f"{r['correct'] / r['seen']:.3f}")
            if stop.reason:
                raise Stop(stop.reason)
    finally:
        bar.close()


def train_step(run: Run, idx: torch.Tensor, g: torch.Generator, step: int) -> tuple[float, float, int]:
    """One optimiser step on the faces ``idx``; returns (mean loss, correct, faces) of this process."""
    cfg = run.cfg
    xb, yb = run.x_train[idx], run.y_train[idx]
    if cfg.augment:
        xb = augment(xb, cfg, g)
    clean = xb
    if cfg.degrade > 0:
        xb = degrade(xb, cfg, g)
    lam, partner = 1.0, None
    if cfg.mixup > 0:
        xb, lam, partner = mixup(xb, cfg.mixup, g)
    if run.world > 1:  # this rank's interleaved slice of the global batch; mixup partners were chosen
        xb, yb, partner = xb[run.rank :: run.world], yb[run.rank :: run.world], None  # on it: plain labels
        clean = clean[run.rank :: run.world]
    xb, yb = xb.to(run.device, non_blocking=True), yb.to(run.device, non_blocking=True)
    teacher_x = clean.to(run.device, non_blocking=True) if cfg.kd_clean else xb
    xr = replay_batch(run, g) if run.replay is not None else None
    set_lr(run.opt, cfg.lr * lr_factor(cfg, step, run.total_steps, run.steps_per_epoch))
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=run.use_amp):
        out = run.ddp_model(xb if xr is None else torch.cat([xb, xr]))  # one pass: BatchNorm sees both
    logits = out[: len(xb)].float()
    folds = run.face_folds[idx][run.rank :: run.world] if run.face_folds is not None else None
    loss = compute_loss(run, logits, teacher_x, yb, lam, partner, folds)
    if xr is not None:
        loss = loss + cfg.replay_alpha * cfg.kd_temperature**2 * distill_loss(run, out[len(xb) :].float(), xr)
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    run.opt.step()
    if run.ema_model is not None:
        ema_update(run.ema_model, run.model, ema_decay(cfg.ema, step))
    return float(loss.detach()), float((logits.argmax(1) == yb).sum()), len(yb)


def compute_loss(run: Run, logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, lam: float,
                 partner: Optional[torch.Tensor], face_folds: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Label-smoothed cross-entropy (mixed with the mixup partners' labels), blended with the
    distillation loss when there are teachers, plus the explicit L2 penalty. ``xb`` is what the
    teachers see: the student's batch, or with ``kd_clean`` the same faces before degradation."""
    cfg = run.cfg
    ce = lambda y: F.cross_entropy(logits, y, weight=run.class_weights, label_smoothing=cfg.label_smoothing)  # noqa: E731
    loss = ce(yb)
    if partner is not None:
        loss = lam * loss + (1 - lam) * ce(yb[partner.to(run.device)])
    if run.teachers and cfg.kd_alpha:
        if face_folds is not None:
            tp = heldout_teacher_probs(run.teachers, face_folds, xb, cfg.kd_temperature, run.use_amp, cfg.kd_flip)
            kd = F.kl_div((logits / cfg.kd_temperature).log_softmax(1), tp, reduction="batchmean")
        else:
            kd = distill_loss(run, logits, xb)
        loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * cfg.kd_temperature**2 * kd
    if cfg.l2:
        loss = loss + cfg.l2 * 0.5 * sum((p * p).sum() for p in run.model.parameters())
    return loss


def distill_loss(run: Run, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """KL divergence of the student's ``logits`` from the teachers' probabilities on faces ``x``,
    both softened by ``kd_temperature`` (callers scale it by the temperature squared)."""
    t = run.cfg.kd_temperature
    tp = teacher_probs(run.teachers, x, t, run.use_amp, run.cfg.kd_flip)
    return F.kl_div((logits / t).log_softmax(1), tp, reduction="batchmean")


def replay_batch(run: Run, g: torch.Generator) -> torch.Tensor:
    """``replay_batch`` replayed faces drawn (with ``g``, after the data's own draws), normalised and
    augmented as the data is; under torchrun, this process's slice of them."""
    cfg = run.cfg
    pick = torch.randint(0, len(run.replay), (cfg.replay_batch,), generator=g).numpy()
    xr = torch.from_numpy(normalize(run.replay[pick], run.spec))
    if cfg.augment:
        xr = augment(xr, cfg, g)
    return xr[run.rank :: run.world].to(run.device, non_blocking=True)


def end_epoch(run: Run, state: RunState, t0: float) -> None:
    """Validate, record the epoch, write model.pt (when best), last.pt and the logs."""
    cfg = run.cfg
    model = validated_model(run)
    rep, vloss = evaluate_split(model, run.val, run.spec, run.device)
    r = state.running
    row = {"epoch": state.epoch + 1, "step": state.step, "lr": run.opt.param_groups[0]["lr"],
           "train_loss": round(r["loss"] / max(1, r["seen"]), 5), "train_accuracy": round(r["correct"] / max(1, r["seen"]), 5),
           "val_loss": round(vloss, 5), "val_accuracy": rep["accuracy"], "val_macro_f1": rep["macro_f1"],
           "seconds": round(time.time() - t0, 1)}
    if cfg.tta:
        row["val_accuracy_tta"] = evaluate_split(model, run.val, run.spec, run.device, tta=True)[0]["accuracy"]
    if run.val_degraded:
        row.update(robust_row(model, run, rep["accuracy"]))
    improved = state.record(row, rep, SELECT_KEYS[cfg.select])
    if run.is_main:
        if improved:
            save_atomic(checkpoint(run, state, model, resumable=False), run.dir / "model.pt")
        save_atomic(checkpoint(run, state, run.model, resumable=True), run.dir / "last.pt")
        write_logs(run.dir, state.history, state.best, state.best_report, cfg.plots)
    robust = (f" degraded mean {row['val_degraded_mean']:.4f} worst {row['val_degraded_worst']:.4f}"
              if "val_robust" in row else "")
    run.log(f"epoch {row['epoch']}/{run.epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
            f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}{robust}{' *' if improved else ''} | {row['seconds']:.0f}s")
    if run.early_stopped(state):
        run.log(f"early stop: no val improvement for {cfg.patience} epochs "
                f"(best {state.best['val_accuracy']:.4f} at epoch {state.best['epoch']})")


def robust_row(model: nn.Module, run: Run, clean: float) -> dict:
    """Validation accuracy under the robustness benchmark's conditions: their mean, the worst, and
    ``val_robust``, the mean of clean and degraded-mean accuracy (what ``select = "robust"`` keeps)."""
    acc = {name: evaluate_split(model, sp, run.spec, run.device)[0]["accuracy"] for name, sp in run.val_degraded.items()}
    s = summarize(acc, list(acc))
    return {"val_degraded_mean": round(s["mean"], 5), "val_degraded_worst": round(s["worst"], 5),
            "val_robust": round((clean + s["mean"]) / 2, 5)}


def validated_model(run: Run) -> nn.Module:
    """The weights an epoch is judged and saved by: the weight average when ``ema`` is on, and
    a copy with recalibrated BatchNorm statistics when ``bn_recalibrate`` is (training carries
    on with its own statistics)."""
    model = run.ema_model if run.ema_model is not None else run.model
    if run.cfg.bn_recalibrate:
        model = copy.deepcopy(model)
        recalibrate_bn(model, run.x_train, seed=run.cfg.seed)
    return model


def checkpoint(run: Run, state: RunState, weights: nn.Module, resumable: bool) -> dict:
    """model.pt holds ``weights`` (the validated ones); last.pt (``resumable``) the raw weights
    plus the optimiser, the random state and the run state needed to resume."""
    cfg, extra = run.cfg, {}
    if resumable:
        ts = state.to_dict()
        if run.ema_model is not None:
            ts["ema"] = {k: v.detach().cpu().clone() for k, v in run.ema_model.state_dict().items()}
        extra = {"optimizer": run.opt.state_dict(), "torch_rng": torch.get_rng_state(), "trainer_state": ts}
    metrics = {"best": state.best, "history": state.history, "model": run.arch_info}
    return make_checkpoint(weights, cfg.arch, cfg.arch_args, run.spec.to_dict(), asdict(cfg), run.data_record, metrics, **extra)
