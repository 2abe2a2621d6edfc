"""The two objects a training run is: :class:`Run`, what is built once (data, model, optimiser,
teachers; :mod:`.build` builds it), and :class:`RunState`, what changes as the run goes and is
saved in ``last.pt`` to resume it. The loop that uses them is :mod:`.trainer`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from emo.edge_runtime.dataset import Split
from emo.edge_runtime.preprocess import InputSpec

from .config import TrainConfig

ROBUST_KEYS = ("val_degraded_mean", "val_degraded_worst", "val_robust")
SELECT_KEYS = {"accuracy": "val_accuracy", "robust": "val_robust", "last": ""}  # "": every epoch replaces the one before


class Stop(Exception):
    """Raised at a step boundary after SIGINT/SIGTERM, once progress is saved."""


def new_running() -> dict:
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
    running: dict = field(default_factory=new_running)  # this epoch's training loss and accuracy so far
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
