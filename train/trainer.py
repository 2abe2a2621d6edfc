"""The training loop, readable top to bottom.

Data lives in memory as normalised float tensors; each step takes one global batch from a
seeded permutation, augments it on the fly with batched affine warps, and steps the optimiser.
Every epoch ends with validation and an atomic checkpoint; Ctrl-C or SIGTERM saves progress
mid-epoch, and ``--resume`` continues exactly where it stopped (the permutation, augmentation
and dropout random streams are all derived from the seed and the step, or saved).

Two objects hold everything: :class:`Run`, what is built once (data, model, optimiser, teachers),
and :class:`RunState`, what changes as the run goes and is saved in ``last.pt`` to resume it.

With ``replay`` (fine-tuning on a user's faces), each step also draws faces of a second set,
FER2013's, and the loss adds the teachers' soft labels on them, so the model learns the new faces
without forgetting the old (learning without forgetting, with rehearsal of unlabelled faces).

Under ``torchrun`` each process takes an interleaved slice of every global batch and DDP
averages the gradients, so the global batch, and so the result, matches a single process.
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emo.edge_runtime.dataset import Split, load_split, stratified_split
from emo.edge_runtime.degrade import CONDITIONS, degrade_images, summarize
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.preprocess import InputSpec, normalize
from emo.edge_runtime.stopping import StopFlag

from .augment import augment, degrade, epoch_permutation, mixup, step_generator
from .checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_atomic
from .config import TrainConfig
from .data import assignment_sha256, fold_assignment, fold_record, group_splits, train_val_splits
from .distill import ema_decay, ema_update, heldout_teacher_probs, load_teachers, make_ema, order_heldout_teachers, teacher_probs
from .evaluate import evaluate_split
from .models import build_model, count_macs, count_params, grow_state_dict
from .optim import lr_factor, make_optimizer, set_lr
from .recalibrate import batchnorm_layers, recalibrate_bn
from .runlog import write_logs

ROBUST_KEYS = ("val_degraded_mean", "val_degraded_worst", "val_robust")
SELECT_KEYS = {"accuracy": "val_accuracy", "robust": "val_robust", "last": ""}  # "": every epoch replaces the one before
RESUME_OVERRIDABLE = ("patience", "progress", "plots", "threads", "device", "data")


class Stop(Exception):
    """Raised at a step boundary after SIGINT/SIGTERM, once progress is saved."""


def _new_running() -> dict:
    return {"loss": 0.0, "correct": 0.0, "seen": 0}


@dataclass
class RunState:
    """Everything that changes while a run trains; ``last.pt`` saves it to resume from."""

    epoch: int = 0  # the epoch in progress (0-based); == epochs when the run is done
    batch: int = 0  # batches of that epoch already trained
    step: int = 0  # optimiser steps in all
    history: list = field(default_factory=list)  # one row per finished epoch
    best: dict = field(default_factory=lambda: {"val_accuracy": -1.0, "epoch": -1})
    bad_epochs: int = 0  # epochs since the best one
    running: dict = field(default_factory=_new_running)  # this epoch's training loss and accuracy so far
    best_report: Optional[dict] = None  # the classification report of the best epoch

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RunState":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def record(self, row: dict, report: dict, key: str = "val_accuracy") -> bool:
        """Add a finished epoch's row; True when it is the best so far by ``row[key]`` (or, with no
        ``key``, always: the last epoch is kept)."""
        self.history.append(row)
        improved = row[key] > self.best.get(key, -1.0) if key else True
        if improved:
            self.best = {"val_accuracy": row["val_accuracy"], "epoch": row["epoch"], "step": row["step"],
                         "val_macro_f1": row["val_macro_f1"]}
            self.best.update({k: row[k] for k in (*ROBUST_KEYS, "val_accuracy_tta") if k in row})
            self.bad_epochs, self.best_report = 0, report
        else:
            self.bad_epochs += 1
        self.epoch, self.batch = self.epoch + 1, 0
        return improved


@dataclass
class Run:
    """What a run builds once: its settings, data, model, optimiser and teachers."""

    cfg: TrainConfig
    dir: Path
    log: Callable
    world: int
    rank: int
    device: torch.device
    use_amp: bool
    spec: InputSpec
    x_train: torch.Tensor
    y_train: torch.Tensor
    val: Split
    val_degraded: dict  # val_degrade: the validation faces under each benchmark condition
    replay: Optional[np.ndarray]  # replay: uint8 faces (N, H, W) the teachers teach beside the data
    data_record: dict  # where the data came from and its fingerprints, saved in every checkpoint
    arch_info: dict  # parameters and MACs, saved in every checkpoint
    model: nn.Module
    ddp_model: nn.Module  # the model, or its DDP wrapper under torchrun
    opt: torch.optim.Optimizer
    ema_model: Optional[nn.Module]
    teachers: list
    face_folds: Optional[torch.Tensor]  # kd_heldout: each training face's fold, which picks its teacher
    class_weights: Optional[torch.Tensor]
    steps_per_epoch: int
    total_steps: int
    epochs: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def early_stopped(self, state: RunState) -> bool:
        return bool(self.cfg.patience) and state.bad_epochs >= self.cfg.patience


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
                state.running = _new_running()
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


# ---------------------------------------------------------------- building and restoring a run
def resume_config(resume: str, overrides: dict) -> tuple[TrainConfig, dict]:
    """The saved config of a stopped run (with the allowed ``overrides``) and its last.pt."""
    rp = Path(resume)
    last = rp / "last.pt" if rp.is_dir() else rp
    saved = load_checkpoint(last)
    if "trainer_state" not in saved:
        raise EmoError(f"{last} holds no training state to resume from; resume from runs/NAME/last.pt")
    bad = sorted(k for k in overrides if k not in RESUME_OVERRIDABLE)
    if bad:
        raise EmoError(f"--resume continues the saved recipe; these settings cannot change: {', '.join(bad)}")
    cfg = TrainConfig.from_dict({**saved["config"], **overrides})
    cfg.out = str(last.parent.parent)
    return cfg, saved


def dist_info() -> tuple[int, int, int]:
    """(world size, rank, local rank) as torchrun sets them; (1, 0, 0) for a plain process."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EmoError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    return torch.device(name)


def setup(cfg: TrainConfig, resuming: bool, log: Callable) -> Run:
    """Check the settings, load the data, build the model, optimiser, teachers and run folder."""
    world, rank, local_rank = dist_info()
    log = log if rank == 0 else (lambda *a, **k: None)
    if not cfg.data:
        raise EmoError("no training data given; pass --data ROOT (FER2013 folders) or --data fer2013.csv")
    if cfg.batch_size % world:
        raise EmoError(f"batch size {cfg.batch_size} must be divisible by the number of processes ({world})")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = start_device(cfg.device, world, local_rank)
    check_robust_settings(cfg)
    check_replay_settings(cfg)
    train_split, val_split, data_record = run_data(cfg, log)
    spec = cfg.input_spec
    keep, teacher_paths, face_folds = folds_of_run(cfg, train_split, data_record, log)
    x_train = torch.from_numpy(normalize(train_split.images[keep], spec))
    y_train = torch.from_numpy(train_split.labels[keep])
    if cfg.repeat > 1:  # few faces: one epoch passes over them several times (each pass in its own order)
        x_train, y_train = x_train.repeat(cfg.repeat, 1, 1, 1), y_train.repeat(cfg.repeat)
        face_folds = face_folds.repeat(cfg.repeat) if face_folds is not None else None
    replay = replay_faces(cfg, data_record)
    model, arch_info = build_student(cfg, resuming, log)
    model.to(device)
    teachers = load_teachers(teacher_paths, cfg.kd_alpha, spec, device, replay=replay is not None)
    if teachers and cfg.kd_alpha:
        log(f"distilling from {len(teachers)} teacher(s) with weight {cfg.kd_alpha}, temperature {cfg.kd_temperature}"
            f"{', each face taught by the teacher that held it out' if face_folds is not None else ''}")
    if replay is not None:
        log(f"replaying {len(replay)} faces of {cfg.replay}, {cfg.replay_batch} per step, taught by {len(teachers)} "
            f"teacher(s) with weight {cfg.replay_alpha}")
    if cfg.bn_recalibrate and not batchnorm_layers(model):
        raise EmoError(f"bn_recalibrate is set but {cfg.arch} has no BatchNorm layers; drop bn_recalibrate")
    steps_per_epoch = max(1, len(y_train) // cfg.batch_size)  # drop the last partial batch
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    ddp_model = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return Run(cfg=cfg, dir=make_run_dir(cfg, rank == 0), log=log, world=world, rank=rank, device=device,
               use_amp=(cfg.amp and device.type == "cuda") or (cfg.cpu_amp and device.type == "cpu"),
               spec=spec, x_train=x_train, y_train=y_train, val=val_split, val_degraded=degraded_splits(cfg, val_split), replay=replay,
               data_record=data_record, arch_info=arch_info,
               model=model, ddp_model=ddp_model, opt=make_optimizer(model, cfg),
               ema_model=make_ema(model) if cfg.ema else None, teachers=teachers, face_folds=face_folds,
               class_weights=class_weights(y_train).to(device) if cfg.class_weights else None,
               steps_per_epoch=steps_per_epoch, total_steps=total, epochs=math.ceil(total / steps_per_epoch))


def run_data(cfg: TrainConfig, log: Callable) -> tuple[Split, Split, dict]:
    """The training and validation faces (FER2013's splits, a stratified fraction, or with
    ``val_by_group`` whole groups of a user's faces) and the record every checkpoint keeps of them."""
    record: dict = {"source": str(Path(cfg.data).resolve())}
    if cfg.val_by_group:
        train_split, val_split, record["groups"] = group_splits(cfg.data, cfg.input_size, cfg.val_fraction, cfg.seed, cfg.groups_csv)
    else:
        train_split, val_split = train_val_splits(cfg.data, cfg.input_size, cfg.limit_per_class or None, cfg.val_fraction, cfg.seed)
    for line in train_split.report.lines() + val_split.report.lines():
        log(line)
    record.update({"train_fingerprint": train_split.fingerprint(), "val_fingerprint": val_split.fingerprint(),
                   "train_report": train_split.report.to_dict(), "val_report": val_split.report.to_dict()})
    return train_split, val_split, record


def replay_faces(cfg: TrainConfig, data_record: dict) -> Optional[np.ndarray]:
    """The faces replayed beside the data (``replay``'s train split, or a stratified sample of
    ``replay_size`` of them fixed by the seed), as uint8; None without ``replay``."""
    if not cfg.replay:
        return None
    faces = load_split(cfg.replay, "train", cfg.input_size)
    if cfg.replay_size and cfg.replay_size < len(faces.labels):
        faces = stratified_split(faces, cfg.replay_size / len(faces.labels), cfg.seed)[1]
    data_record["replay"] = {"source": str(Path(cfg.replay).resolve()), "faces": int(len(faces.labels)),
                             "fingerprint": faces.fingerprint()}
    return faces.images


def check_replay_settings(cfg: TrainConfig) -> None:
    if cfg.repeat < 1:
        raise EmoError(f"repeat must be 1 or more, got {cfg.repeat}")
    if cfg.groups_csv and not cfg.val_by_group:
        raise EmoError("groups_csv names the groups of a split by group; set val_by_group = true too")
    if cfg.replay and cfg.replay_batch < 1:
        raise EmoError(f"replay_batch must be 1 or more when replay is set, got {cfg.replay_batch}")
    if cfg.replay_alpha < 0:
        raise EmoError(f"replay_alpha is a loss weight, 0 or more; got {cfg.replay_alpha}")


def check_robust_settings(cfg: TrainConfig) -> None:
    if cfg.select not in SELECT_KEYS:
        raise EmoError(f"select must be one of {', '.join(SELECT_KEYS)}, got '{cfg.select}'")
    if cfg.select == "robust" and not cfg.val_degrade:
        raise EmoError("select = \"robust\" needs val_degrade = true (the degraded validation it selects by)")
    if not 0.0 <= cfg.degrade <= 1.0:
        raise EmoError(f"degrade is a probability per face, within [0, 1]; got {cfg.degrade}")
    if cfg.kd_clean and not (cfg.degrade and cfg.kd_alpha):
        raise EmoError("kd_clean shows the teachers the faces before degradation; set degrade (e.g. 0.5) and kd_alpha too")
    if cfg.kd_clean and cfg.mixup:
        raise EmoError("kd_clean cannot be used with mixup: the clean faces the teachers see are not the mixed ones")


def degraded_splits(cfg: TrainConfig, val: Split) -> dict:
    """The validation faces under each benchmark condition (none unless ``val_degrade``)."""
    if not cfg.val_degrade:
        return {}
    return {name: Split(degrade_images(val.images, name), val.labels, val.report) for name in CONDITIONS}


def folds_of_run(cfg: TrainConfig, train_split: Split, data_record: dict, log: Callable
                 ) -> tuple[np.ndarray, list, Optional[torch.Tensor]]:
    """Which training faces the run trains on, its teachers' paths, and (for ``kd_heldout``) each
    face's fold. A fold run (``folds``, ``fold``) leaves its fold out and records the split in
    ``data_record``; a held-out student trains on every face, each taught by the teacher that
    never saw it."""
    keep = np.ones(len(train_split.labels), dtype=bool)
    if cfg.fold and not cfg.folds:
        raise EmoError(f"fold = {cfg.fold} is set but folds is not; set folds (e.g. folds = 5) to hold a fold out")
    if cfg.kd_heldout:
        if cfg.folds:
            raise EmoError("a kd_heldout student trains on every face; drop folds/fold (they are for its teachers)")
        if cfg.mixup:
            raise EmoError("kd_heldout cannot be used with mixup: a mixed face would be taught by a teacher that saw its partner")
        if not cfg.kd_alpha:
            raise EmoError("kd_heldout is set but kd_alpha is 0; set kd_alpha (e.g. 0.5)")
        paths, shared = order_heldout_teachers(list(cfg.teachers), data_record["train_fingerprint"])
        f = fold_assignment(train_split.images, train_split.labels, shared["folds"], shared["seed"])
        if assignment_sha256(f) != shared["assignment_sha256"]:
            raise EmoError("the teachers' folds do not match the folds of --data's faces; train the fold teachers "
                           "and the student on the same data")
        return keep, paths, torch.from_numpy(f)
    if cfg.folds:
        if not 0 <= cfg.fold < cfg.folds:
            raise EmoError(f"fold must be within 0..{cfg.folds - 1} (folds = {cfg.folds}), got {cfg.fold}")
        f = fold_assignment(train_split.images, train_split.labels, cfg.folds, cfg.fold_seed)  # once: np.unique over all faces
        rec = fold_record(f, cfg.folds, cfg.fold, cfg.fold_seed)
        keep = f != cfg.fold
        data_record["fold"] = rec
        log(f"fold {cfg.fold} of {cfg.folds}: training on {int(keep.sum())} faces, {rec['held_out']} held out "
            "(for a kd_heldout student)")
    return keep, list(cfg.teachers), None


def start_device(name: str, world: int, local_rank: int) -> torch.device:
    device = pick_device(name, local_rank)
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def build_student(cfg: TrainConfig, resuming: bool, log: Callable) -> tuple[nn.Module, dict]:
    """The model, seeded, and its size; starting from ``init_from``'s weights for a new fine-tuning run."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, **cfg.arch_args)
    info = {"params": count_params(model), "macs": count_macs(model, cfg.input_size)}
    log(f"model {cfg.arch} {cfg.arch_args or ''}: {info['params']:,} parameters, {info['macs'] / 1e6:.1f}M MACs per face")
    if cfg.init_from and not resuming:
        init = load_checkpoint(cfg.init_from)
        if init["arch"] == cfg.arch and init["arch_args"] == json.loads(json.dumps(cfg.arch_args)):
            model.load_state_dict(init["state_dict"])
            log(f"starting from the weights of {cfg.init_from}")
        else:
            grown = grow_state_dict(model_from_checkpoint(init), model)
            if grown is None:
                raise EmoError(f"init_from {cfg.init_from} is {init['arch']} {init['arch_args']}, but this run trains "
                               f"{cfg.arch} {cfg.arch_args}; use a checkpoint of the same architecture (or an "
                               f"emonet with the same widths and fewer blocks, to grow it)")
            model.load_state_dict(grown)
            log(f"starting from the weights of {cfg.init_from}, grown to {cfg.arch_args} (new blocks start as identity)")
    return model, info


def class_weights(y: torch.Tensor) -> torch.Tensor:
    """Per-class loss weights: the square root of inverse class frequency, mean near 1."""
    counts = torch.bincount(y, minlength=len(LABELS)).float().clamp(min=1)
    return (counts.sum() / counts / len(LABELS)).sqrt()


def make_run_dir(cfg: TrainConfig, is_main: bool) -> Path:
    """OUT/NAME with its config.json (NAME defaults to ARCH-TIMESTAMP, saved in ``cfg.name``)."""
    cfg.name = cfg.name or f"{cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(cfg.out) / cfg.name
    if is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        except OSError as e:
            raise EmoError(f"cannot write run folder {run_dir}: {e.strerror}; pass --out to a writable folder") from None
    return run_dir


def restore(run: Run, saved: dict) -> RunState:
    """Put a stopped run's weights, optimiser, random state and run state back."""
    run.model.load_state_dict(saved["state_dict"])
    run.opt.load_state_dict(saved["optimizer"])
    state = RunState.from_dict(saved["trainer_state"])
    torch.set_rng_state(saved["torch_rng"])
    if run.ema_model is not None:
        run.ema_model.load_state_dict(saved["trainer_state"]["ema"])
    if state.epoch >= run.epochs or run.early_stopped(state):
        run.log(f"{run.dir} has already finished; nothing to resume")
    else:
        run.log(f"resuming {run.dir} at epoch {state.epoch + 1}, batch {state.batch}, step {state.step}")
    return state
