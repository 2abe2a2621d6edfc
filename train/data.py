"""The trainer's view of the data: which faces it trains on and which it validates on."""
from __future__ import annotations

from emo.edge_runtime.dataset import Split, has_split, load_split, stratified_split


def train_val_splits(data: str, size: int, limit: int | None, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """The training faces and the faces to validate on: the data's own val split when it has one,
    else a stratified ``val_fraction`` of train held out deterministically for ``seed``."""
    train = load_split(data, "train", size, limit=limit)
    if has_split(data, "val"):
        return train, load_split(data, "val", size, limit=limit)
    return stratified_split(train, val_fraction, seed)
