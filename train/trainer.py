"""The training loop, readable top to bottom.

Data lives in memory as normalised float tensors; each step takes one global batch from a
seeded permutation, augments it on the fly with batched affine warps, and steps the optimiser.
Every epoch ends with validation and an atomic checkpoint; Ctrl-C or SIGTERM saves progress
mid-epoch, and ``--resume`` continues exactly where it stopped (the permutation, augmentation
and dropout random streams are all derived from the seed and the step, or saved).

Under ``torchrun`` each process takes an interleaved slice of every global batch and DDP
averages the gradients, so the global batch, and so the result, matches a single process.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.metrics import classification_report
from emo.edge_runtime.preprocess import InputSpec, normalize

from .checkpoint import load_checkpoint, make_checkpoint, model_from_checkpoint, save_atomic
from .data import Split, train_val_splits
from .models import build_model, count_macs, count_params
from .recalibrate import batchnorm_layers, recalibrate_bn


@dataclass
class TrainConfig:
    data: str = ""
    arch: str = "emonet"
    arch_args: dict = field(default_factory=dict)
    epochs: int = 60
    max_steps: int = 0  # stop after this many optimiser steps (0: run all epochs)
    batch_size: int = 128
    optimizer: str = "adamw"  # adam | adamw | sgd
    lr: float = 2e-3
    weight_decay: float = 0.05  # decoupled for adamw; coupled for adam/sgd
    l2: float = 0.0  # explicit penalty l2 * sum(p^2) / 2 over all weights and biases
    momentum: float = 0.9
    schedule: str = "cosine"  # constant | cosine | onecycle
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    augment: bool = True
    rotate: float = 10.0  # degrees
    scale: float = 0.1
    shift: float = 0.1  # fraction of the image side
    flip: bool = True
    brightness: float = 0.2
    contrast: float = 0.3
    random_erasing: float = 0.25
    mixup: float = 0.0  # Beta(alpha, alpha) mixup; 0 = off
    class_weights: bool = False
    val_fraction: float = 0.1  # only used when the data has no validation split
    patience: int = 15  # early stopping on val accuracy; 0 = off
    seed: int = 0
    input_size: int = 48
    mean: float = 0.5
    std: float = 0.25
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on GPU
    cpu_amp: bool = False  # bf16 autocast on CPU: ~2x faster where the CPU has AVX512-BF16 or AMX
    init_from: str = ""  # start from this checkpoint's weights (same architecture): fine-tuning
    teachers: list = field(default_factory=list)  # checkpoints whose averaged soft labels are distilled
    kd_alpha: float = 0.0  # weight of the distillation loss (0: off); the label loss gets 1 - kd_alpha
    kd_temperature: float = 2.0
    kd_flip: bool = False  # teachers also see the mirrored batch (flip-averaged soft labels)
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off); validated and saved
    bn_recalibrate: bool = False  # validate and save a copy whose BatchNorm statistics come from the plain training faces
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    limit_per_class: int = 0  # load at most this many images per class (quick runs, tests)
    tta: bool = False  # also report flip-averaged validation accuracy
    out: str = "runs"
    name: str = ""
    plots: bool = True
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EmoError(f"unknown config key(s) {unknown}; known keys: {', '.join(sorted(known))}")
        return cls(**d)


# ---------------------------------------------------------------- distributed helpers
def dist_info() -> tuple[int, int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return world, rank, local


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise EmoError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        if name == "cuda":
            name = f"cuda:{local_rank}"
    return torch.device(name)


# ---------------------------------------------------------------- augmentation
def augment(x: torch.Tensor, cfg: TrainConfig, g: torch.Generator) -> torch.Tensor:
    """Random affine (rotation, scale, shift, flip), brightness/contrast and erasing, batched.

    ``x`` is a normalised batch (B, 1, H, W). All randomness comes from ``g``.
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


def step_generator(seed: int, epoch: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(((seed * 1_000_003 + epoch) * 100_003 + step) % (2**63))


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


def lr_factor(cfg: TrainConfig, step: int, total: int, steps_per_epoch: int) -> float:
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
    if cfg.optimizer == "adamw":
        decay, no_decay = [], []
        for n, p in model.named_parameters():
            (no_decay if p.ndim <= 1 else decay).append(p)
        return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=True, weight_decay=cfg.weight_decay)
    raise EmoError(f"unknown optimizer '{cfg.optimizer}'; use adam, adamw or sgd")


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, device: torch.device, tta: bool = False, batch: int = 512) -> torch.Tensor:
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
    x = torch.from_numpy(normalize(split.images, spec))
    logits = predict_logits(model, x, device, tta)
    y = torch.from_numpy(split.labels)
    loss = float(F.cross_entropy(logits, y)) if not tta else float("nan")
    rep = classification_report(split.labels, logits.argmax(1).numpy())
    return rep, loss


# ---------------------------------------------------------------- distillation and weight averaging
def load_teachers(cfg: TrainConfig, spec: InputSpec, device: torch.device) -> list[nn.Module]:
    """The frozen teacher models; each must read the same input as the student."""
    if cfg.kd_alpha and not cfg.teachers:
        raise EmoError("kd_alpha is set but no teachers are given; add teachers = [\"runs/NAME/model.pt\", ...]")
    if not 0.0 <= cfg.kd_alpha <= 1.0:
        raise EmoError(f"kd_alpha must be within [0, 1], got {cfg.kd_alpha}")
    out = []
    for path in cfg.teachers if cfg.kd_alpha else []:
        ck = load_checkpoint(path)
        if InputSpec.from_dict(ck["input"]) != spec:
            raise EmoError(f"teacher {path} reads input {ck['input']}, the student {spec.to_dict()}; "
                           "train the student with the teacher's input size, mean and std")
        t = model_from_checkpoint(ck).to(device)
        for p in t.parameters():
            p.requires_grad_(False)
        out.append(t)
    return out


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
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    for e, m in zip(ema_model.state_dict().values(), model.state_dict().values()):
        if e.dtype.is_floating_point:
            e.mul_(decay).add_(m.detach(), alpha=1 - decay)
        else:
            e.copy_(m)


# ---------------------------------------------------------------- the run
class Stop(Exception):
    """Raised by the SIGINT/SIGTERM handler to leave the loop at a step boundary."""


def _write_logs(run_dir: Path, history: list[dict], best: dict, val_rep: dict | None, plots: bool) -> None:
    with open(run_dir / "log.csv.tmp", "w", newline="") as fh:
        if history:
            w = csv.DictWriter(fh, fieldnames=list(history[0].keys()))
            w.writeheader()
            w.writerows(history)
    os.replace(run_dir / "log.csv.tmp", run_dir / "log.csv")
    with open(run_dir / "metrics.json.tmp", "w") as fh:
        json.dump({"best": best, "history": history, "val_report": val_rep}, fh, indent=2)
    os.replace(run_dir / "metrics.json.tmp", run_dir / "metrics.json")
    if plots and history:
        try:
            from .plots import plot_confusion, plot_curves

            plot_curves(history, run_dir / "curves.png")
            if val_rep:
                plot_confusion(val_rep, run_dir / "confusion.png")
        except ImportError:
            pass


RESUME_OVERRIDABLE = ("patience", "progress", "plots", "threads", "device", "data")


def train(cfg: TrainConfig | None, resume: str | None = None, overrides: dict | None = None, log=print) -> Path:
    """Train per ``cfg``; returns the run folder.

    ``resume`` (a run folder or its last.pt) continues a stopped run with its saved config; only
    the keys in ``RESUME_OVERRIDABLE`` may be changed through ``overrides``, since anything else
    (epochs, learning rate, ...) would make the result differ from an uninterrupted run.
    """
    world, rank, local_rank = dist_info()
    is_main = rank == 0
    if not is_main:
        log = lambda *a, **k: None  # noqa: E731
    state = None
    if resume:
        rp = Path(resume)
        last = rp / "last.pt" if rp.is_dir() else rp
        state = load_checkpoint(last)
        if "trainer_state" not in state:
            raise EmoError(f"{last} holds no training state to resume from; resume from runs/NAME/last.pt")
        bad = sorted(k for k in (overrides or {}) if k not in RESUME_OVERRIDABLE)
        if bad:
            raise EmoError(f"--resume continues the saved recipe; these settings cannot change: {', '.join(bad)}")
        cfg = TrainConfig.from_dict({**state["config"], **(overrides or {})})
        cfg.out = str(last.parent.parent)
    assert cfg is not None
    if not cfg.data:
        raise EmoError("no training data given; pass --data ROOT (FER2013 folders) or --data fer2013.csv")
    if cfg.batch_size % world:
        raise EmoError(f"batch size {cfg.batch_size} must be divisible by the number of processes ({world})")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device, local_rank)
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(device)

    # data, validated up front
    limit = cfg.limit_per_class or None
    train_split, val_split = train_val_splits(cfg.data, cfg.input_size, limit, cfg.val_fraction, cfg.seed)
    for s in (train_split, val_split):
        for line in s.report.lines():
            log(line)
    spec = InputSpec(size=cfg.input_size, mean=cfg.mean, std=cfg.std)
    x_train = torch.from_numpy(normalize(train_split.images, spec))
    y_train = torch.from_numpy(train_split.labels)
    n = len(y_train)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.arch, **cfg.arch_args)
    n_params, macs = count_params(model), count_macs(model, cfg.input_size)
    log(f"model {cfg.arch} {cfg.arch_args or ''}: {n_params:,} parameters, {macs / 1e6:.1f}M MACs per face")
    if cfg.init_from and not state:
        init = load_checkpoint(cfg.init_from)
        if init["arch"] != cfg.arch or init["arch_args"] != json.loads(json.dumps(cfg.arch_args)):
            raise EmoError(f"init_from {cfg.init_from} is {init['arch']} {init['arch_args']}, but this run trains "
                           f"{cfg.arch} {cfg.arch_args}; use a checkpoint of the same architecture")
        model.load_state_dict(init["state_dict"])
        log(f"starting from the weights of {cfg.init_from}")
    model.to(device)
    teachers = load_teachers(cfg, spec, device)
    if teachers:
        log(f"distilling from {len(teachers)} teacher(s) with weight {cfg.kd_alpha}, temperature {cfg.kd_temperature}")
    if cfg.bn_recalibrate and not batchnorm_layers(model):
        raise EmoError(f"bn_recalibrate is set but {cfg.arch} has no BatchNorm layers; drop bn_recalibrate")
    ema_model = None
    if cfg.ema:
        ema_model = copy.deepcopy(model).eval()
        for p in ema_model.parameters():
            p.requires_grad_(False)
    opt = make_optimizer(model, cfg)
    steps_per_epoch = max(1, n // cfg.batch_size)  # drop the last partial batch
    total = cfg.max_steps or cfg.epochs * steps_per_epoch
    epochs = math.ceil(total / steps_per_epoch)
    weights = None
    if cfg.class_weights:
        counts = torch.bincount(y_train, minlength=len(LABELS)).float().clamp(min=1)
        weights = (counts.sum() / counts / len(LABELS)).sqrt().to(device)

    name = cfg.name or f"{cfg.arch}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg.name = name
    run_dir = Path(cfg.out) / name
    if is_main:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        except OSError as e:
            raise EmoError(f"cannot write run folder {run_dir}: {e.strerror}; pass --out to a writable folder") from None

    history: list[dict] = []
    best = {"val_accuracy": -1.0, "epoch": -1}
    bad_epochs = 0
    start_epoch, start_batch, step = 0, 0, 0
    running = {"loss": 0.0, "correct": 0.0, "seen": 0}
    if state:
        model.load_state_dict(state["state_dict"])
        opt.load_state_dict(state["optimizer"])
        ts = state["trainer_state"]
        start_epoch, start_batch, step = ts["epoch"], ts["batch"], ts["step"]
        history, best, bad_epochs, running = ts["history"], ts["best"], ts["bad_epochs"], ts["running"]
        torch.set_rng_state(state["torch_rng"])
        if ema_model is not None:
            ema_model.load_state_dict(ts["ema"])
        if start_epoch >= epochs or (cfg.patience and bad_epochs >= cfg.patience):
            start_epoch = epochs
            log(f"{run_dir} has already finished; nothing to resume")
        else:
            log(f"resuming {run_dir} at epoch {start_epoch + 1}, batch {start_batch}, step {step}")
    ddp_model = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    data_fp = {"source": str(Path(cfg.data).resolve()), "train_fingerprint": train_split.fingerprint(),
               "val_fingerprint": val_split.fingerprint(), "train_report": train_split.report.to_dict(),
               "val_report": val_split.report.to_dict()}
    arch_info = {"params": n_params, "macs": macs}

    def checkpoint(epoch: int, batch: int, with_state: bool, validated: nn.Module | None = None) -> dict:
        """model.pt (``with_state`` False) holds ``validated``, the weights that were validated (the
        average when ``ema`` is on, with recalibrated statistics when ``bn_recalibrate`` is);
        last.pt holds the raw weights plus everything needed to resume."""
        extra, weights_of = {}, (model if with_state else validated)
        if with_state:
            extra = {"optimizer": opt.state_dict(), "torch_rng": torch.get_rng_state(),
                     "trainer_state": {"epoch": epoch, "batch": batch, "step": step, "history": history,
                                       "best": best, "bad_epochs": bad_epochs, "running": running}}
            if ema_model is not None:
                extra["trainer_state"]["ema"] = {k: v.detach().cpu().clone() for k, v in ema_model.state_dict().items()}
        return make_checkpoint(weights_of, cfg.arch, cfg.arch_args, spec.to_dict(), asdict(cfg), data_fp,
                               {"best": best, "history": history, "model": arch_info}, **extra)

    stop_reason: list[str] = []

    def on_signal(signum, frame):  # finish the current step, then save and leave
        if stop_reason:
            raise KeyboardInterrupt  # a second Ctrl-C: leave now
        stop_reason.append(signal.Signals(signum).name)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)} if is_main or world == 1 else {}
    use_amp = (cfg.amp and device.type == "cuda") or (cfg.cpu_amp and device.type == "cpu")
    x_val_rep = None
    pbar = None
    try:
        for epoch in range(start_epoch, epochs):
            if epoch != start_epoch or start_batch == 0:
                torch.manual_seed(cfg.seed * 1_000_003 + epoch * 31 + rank)  # dropout stream
                running = {"loss": 0.0, "correct": 0.0, "seen": 0}
            perm = epoch_permutation(n, cfg.seed, epoch)
            n_batches = min(steps_per_epoch, total - epoch * steps_per_epoch)
            t0 = time.time()
            ddp_model.train()
            if is_main and cfg.progress:
                from tqdm import tqdm

                pbar = tqdm(total=n_batches, initial=start_batch if epoch == start_epoch else 0,
                            desc=f"epoch {epoch + 1}/{epochs}", unit="batch", dynamic_ncols=True, file=sys.stderr,
                            disable=not sys.stderr.isatty())
            b0 = start_batch if epoch == start_epoch else 0
            for b in range(b0, n_batches):
                idx = perm[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                g = step_generator(cfg.seed, epoch, b)
                xb = x_train[idx]
                if cfg.augment:
                    xb = augment(xb, cfg, g)
                yb = y_train[idx]
                lam, perm_mix = 1.0, None
                if cfg.mixup > 0:
                    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=g))).beta(cfg.mixup, cfg.mixup))
                    perm_mix = torch.randperm(len(idx), generator=g)
                    xb = lam * xb + (1 - lam) * xb[perm_mix]
                if world > 1:  # this rank's interleaved slice of the global batch
                    xb, yb = xb[rank::world], yb[rank::world]
                    if perm_mix is not None:
                        perm_mix = None  # mixup partners were chosen on the global batch; use plain labels
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * lr_factor(cfg, step, total, steps_per_epoch)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    logits = ddp_model(xb)
                logits = logits.float()
                loss = F.cross_entropy(logits, yb, weight=weights, label_smoothing=cfg.label_smoothing)
                if perm_mix is not None:
                    loss = lam * loss + (1 - lam) * F.cross_entropy(logits, yb[perm_mix.to(device)], weight=weights, label_smoothing=cfg.label_smoothing)
                if teachers:
                    tp = teacher_probs(teachers, xb, cfg.kd_temperature, use_amp, cfg.kd_flip)
                    kd = F.kl_div((logits / cfg.kd_temperature).log_softmax(1), tp, reduction="batchmean")
                    loss = (1 - cfg.kd_alpha) * loss + cfg.kd_alpha * cfg.kd_temperature**2 * kd
                if cfg.l2:
                    loss = loss + cfg.l2 * 0.5 * sum((p * p).sum() for p in model.parameters())
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if ema_model is not None:
                    ema_update(ema_model, model, cfg.ema)
                step += 1
                running["loss"] += float(loss.detach()) * len(yb)
                running["correct"] += float((logits.argmax(1) == yb).sum())
                running["seen"] += len(yb)
                if pbar is not None:
                    pbar.update(1)
                    pbar.set_postfix(loss=f"{running['loss'] / running['seen']:.3f}", acc=f"{running['correct'] / running['seen']:.3f}")
                start_batch = b + 1
                if stop_reason:
                    raise Stop(stop_reason[0])
            if pbar is not None:
                pbar.close()
                pbar = None
            start_batch = 0
            # end of epoch: validate, log, checkpoint
            eval_model = ema_model if ema_model is not None else model
            if cfg.bn_recalibrate:  # a copy: the statistics training carries on with stay as they are
                eval_model = copy.deepcopy(eval_model)
                recalibrate_bn(eval_model, x_train, seed=cfg.seed)
            rep, vloss = evaluate_split(eval_model, val_split, spec, device)
            row = {"epoch": epoch + 1, "step": step, "lr": opt.param_groups[0]["lr"],
                   "train_loss": round(running["loss"] / max(1, running["seen"]), 5),
                   "train_accuracy": round(running["correct"] / max(1, running["seen"]), 5),
                   "val_loss": round(vloss, 5), "val_accuracy": rep["accuracy"], "val_macro_f1": rep["macro_f1"],
                   "seconds": round(time.time() - t0, 1)}
            if cfg.tta:
                row["val_accuracy_tta"] = evaluate_split(eval_model, val_split, spec, device, tta=True)[0]["accuracy"]
            history.append(row)
            improved = rep["accuracy"] > best["val_accuracy"]
            if improved:
                best = {"val_accuracy": rep["accuracy"], "epoch": epoch + 1, "step": step, "val_macro_f1": rep["macro_f1"]}
                if cfg.tta:
                    best["val_accuracy_tta"] = row["val_accuracy_tta"]
                bad_epochs = 0
                x_val_rep = rep
            else:
                bad_epochs += 1
            if is_main:
                if improved:
                    save_atomic(checkpoint(epoch + 1, 0, False, eval_model), run_dir / "model.pt")
                save_atomic(checkpoint(epoch + 1, 0, True), run_dir / "last.pt")
                _write_logs(run_dir, history, best, x_val_rep, cfg.plots)
            log(f"epoch {epoch + 1}/{epochs}: train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f} | "
                f"val loss {row['val_loss']:.4f} acc {row['val_accuracy']:.4f}{' *' if improved else ''} | {row['seconds']:.0f}s")
            if stop_reason:
                epoch, start_batch = epoch + 1, 0
                raise Stop(stop_reason[0])
            if cfg.patience and bad_epochs >= cfg.patience:
                log(f"early stop: no val improvement for {cfg.patience} epochs (best {best['val_accuracy']:.4f} at epoch {best['epoch']})")
                break
    except Stop as s:
        if pbar is not None:
            pbar.close()
        if is_main:
            save_atomic(checkpoint(epoch, start_batch, True), run_dir / "last.pt")
        log(f"stopped by {s}; progress saved to {run_dir / 'last.pt'}. Continue with: emo-train fit --resume {run_dir}")
        raise
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    log(f"best val accuracy {best['val_accuracy']:.4f} at epoch {best['epoch']}; checkpoint {run_dir / 'model.pt'}")
    return run_dir
