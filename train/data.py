"""Training data: the FER2013 loaders live in the edge runtime (one definition); re-exported here."""
from __future__ import annotations

from emo.edge_runtime.dataset import (  # noqa: F401
    DataReport,
    Split,
    class_index,
    has_split,
    load_csv,
    load_folder,
    load_split,
    stratified_split,
)


def train_val_splits(data: str, size: int, limit: int | None, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """The training faces and the faces to validate on: the data's own val split when it has one,
    else a stratified ``val_fraction`` of train held out deterministically for ``seed``."""
    train = load_split(data, "train", size, limit=limit)
    if has_split(data, "val"):
        return train, load_split(data, "val", size, limit=limit)
    return stratified_split(train, val_fraction, seed)
