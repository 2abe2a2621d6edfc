"""Building and restoring a training run: check the settings, load the data (and the faces
replayed beside it, and the folds of a fold run), build the model (seeded, perhaps from another
run's weights), the optimiser and teachers, make the run folder (:func:`setup`); put a stopped
run back (:func:`resume_config`, :func:`restore`). The loop that runs it is :mod:`.trainer`."""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from emo.edge_runtime.dataset import Split, load_split, stratified_split
from emo.edge_runtime.degrade import CONDITIONS, degrade_images
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.preprocess import normalize

from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import TrainConfig
from .data import assignment_sha256, fold_assignment, fold_record, group_splits, join_splits, train_val_splits
from .distill import load_teachers, make_ema, order_heldout_teachers
from .models import build_model, count_macs, count_params, grow_state_dict
from .optim import make_optimizer
from .recalibrate import batchnorm_layers
from .run import SELECT_KEYS, Run, RunState

RESUME_OVERRIDABLE = ("patience", "progress", "plots", "threads", "device", "data")


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
        if cfg.train_on_val:
            train_split = join_splits(train_split, val_split)
            log(f"training on the validation groups too ({len(val_split.labels)} faces): validation figures are in-sample")
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
    if cfg.train_on_val and not cfg.val_by_group:
        raise EmoError("train_on_val trains on the validation groups of a split by group; set val_by_group = true too")
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
