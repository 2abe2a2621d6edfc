"""A training run's settings: :class:`TrainConfig`, and TOML recipes that may build on a base.

A recipe holds only what differs from the defaults below, or from the recipe it names as
``base`` (a path relative to the recipe's own folder). Keys of the recipe replace those of its
base whole (an ``arch_args`` table is replaced, not merged). The run name defaults to the
recipe's file name, so ``configs/emonet-kd3.toml`` trains ``runs/emonet-kd3``.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.preprocess import InputSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # the ``train`` extra installs tomli on older Pythons
    import tomli as tomllib


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
    degrade: float = 0.0  # probability that a face is spoiled as a real camera would (blur, distance, noise, JPEG, light)
    degrade_min_px: int = 12  # the smallest face height the degradation shrinks a face to
    class_weights: bool = False
    val_fraction: float = 0.1  # only used when the data has no validation split
    val_by_group: bool = False  # hold out whole groups (file-name prefix before '_', or groups_csv): a user's own faces
    groups_csv: str = ""  # with val_by_group: a CSV of file,group instead of the file-name prefix
    train_on_val: bool = False  # with val_by_group: train on the validation groups too (finetune --refit); validation is then in-sample
    repeat: int = 1  # an epoch passes over the training faces this many times (few faces: fewer validations)
    replay: str = ""  # FER2013 root or CSV: its train faces are replayed, the teachers' soft labels distilled on them
    replay_batch: int = 32  # replayed faces per step, beside batch_size faces of the data
    replay_size: int = 0  # replay at most this many faces, a stratified sample fixed by the seed (0: all)
    replay_alpha: float = 1.0  # weight of the distillation loss on the replayed faces
    patience: int = 15  # early stopping on val accuracy; 0 = off
    seed: int = 0
    input_size: int = InputSpec.size  # the input defaults are the runtime's (preprocess.InputSpec)
    mean: float = InputSpec.mean
    std: float = InputSpec.std
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on GPU
    cpu_amp: bool = False  # bf16 autocast on CPU: ~2x faster where the CPU has AVX512-BF16 or AMX
    init_from: str = ""  # start from this checkpoint's weights (same architecture): fine-tuning
    teachers: list = field(default_factory=list)  # checkpoints whose averaged soft labels are distilled
    kd_alpha: float = 0.0  # weight of the distillation loss (0: off); the label loss gets 1 - kd_alpha
    kd_temperature: float = 2.0
    kd_flip: bool = False  # teachers also see the mirrored batch (flip-averaged soft labels)
    kd_clean: bool = False  # teachers see each face before degradation (consistency distillation)
    kd_heldout: bool = False  # teachers are fold runs (folds = K, one per fold): each face is taught only by the teacher that never trained on it
    folds: int = 0  # with fold: split the training faces into this many stratified folds and train without one (0: all faces)
    fold: int = 0  # the fold held out when folds is set
    fold_seed: int = 0  # fixes which faces fall in which fold (the same for every fold run and its student)
    ema: float = 0.0  # decay of an exponential moving average of the weights (0: off); validated and saved
    bn_recalibrate: bool = False  # validate and save a copy whose BatchNorm statistics come from the plain training faces
    bn_frozen: bool = False  # BatchNorm layers keep the running statistics they start with (fine-tuning: the base's)
    threads: int = 0  # torch intra-op threads on CPU; 0 = torch's default
    limit_per_class: int = 0  # load at most this many images per class (quick runs, tests)
    tta: bool = False  # also report flip-averaged validation accuracy
    val_degrade: bool = False  # also validate on the robustness benchmark's conditions (mean and worst)
    select: str = "accuracy"  # the best epoch by: accuracy (clean) | robust (mean of clean and the degraded mean) | last
    out: str = "runs"
    name: str = ""  # default: the recipe's file name, else ARCH-TIMESTAMP
    plots: bool = True
    progress: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise EmoError(f"unknown config key(s) {unknown}; known keys: {', '.join(sorted(known))}")
        return cls(**d)

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(size=self.input_size, mean=self.mean, std=self.std)


def read_recipe(path: Path, _seen: tuple = ()) -> dict:
    """The keys of a TOML recipe with its ``base`` chain resolved (the recipe's keys win)."""
    path = Path(path)
    if not path.is_file():
        raise EmoError(f"config file {path} does not exist")
    if path.resolve() in _seen:
        raise EmoError(f"config file {path} names itself as a base (through {' -> '.join(p.name for p in _seen)})")
    try:
        d = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise EmoError(f"config file {path} is not valid TOML: {e}") from None
    d = {k.replace("-", "_"): v for k, v in d.items()}
    base = d.pop("base", None)
    if base is None:
        return d
    if not isinstance(base, str):
        raise EmoError(f"config file {path}: base must be a file name, e.g. base = \"emonet.toml\"")
    inherited = read_recipe(path.parent / base, (*_seen, path.resolve()))
    inherited.pop("name", None)  # a run name belongs to its own recipe
    return {**inherited, **d}


def parse_sets(items: list[str]) -> dict:
    """``--set KEY=VALUE`` items -> a dict; values are JSON when they parse as JSON, else strings."""
    out = {}
    for kv in items:
        if "=" not in kv:
            raise EmoError(f"--set expects KEY=VALUE, got '{kv}'")
        k, v = kv.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = json.loads(v)
        except ValueError:
            out[k.strip().replace("-", "_")] = v
    return out


def build_config(recipe: Optional[Path], overrides: dict) -> TrainConfig:
    """The recipe (if any), its bases, then ``overrides`` (None values ignored) -> TrainConfig."""
    d = read_recipe(Path(recipe)) if recipe is not None else {}
    if recipe is not None:
        d.setdefault("name", Path(recipe).stem)
    d.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(d)
