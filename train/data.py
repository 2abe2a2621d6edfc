"""The trainer's view of the data: which faces it trains on and which it validates on."""
from __future__ import annotations

import hashlib

import numpy as np

from emo.edge_runtime.dataset import Split, has_split, load_split, stratified_split
from emo.edge_runtime.errors import EmoError


def train_val_splits(data: str, size: int, limit: int | None, val_fraction: float, seed: int) -> tuple[Split, Split]:
    """The training faces and the faces to validate on: the data's own val split when it has one,
    else a stratified ``val_fraction`` of train held out deterministically for ``seed``."""
    train = load_split(data, "train", size, limit=limit)
    if has_split(data, "val"):
        return train, load_split(data, "val", size, limit=limit)
    return stratified_split(train, val_fraction, seed)


def val_split(data: str, size: int, val_fraction: float, seed: int) -> Split:
    """The faces :func:`train_val_splits` validates on, without reading the training faces when
    the data has its own val split (for commands that only validate)."""
    if has_split(data, "val"):
        return load_split(data, "val", size)
    return train_val_splits(data, size, None, val_fraction, seed)[1]


def fold_assignment(images: np.ndarray, labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each training face's fold (0..folds-1). Exact copies of one image share a fold (FER2013's
    train split holds over a thousand), so a teacher never trained on a copy of a face it is
    asked to teach. The copies' groups are dealt class by class, round-robin over the folds in a
    random order fixed by ``seed``: the folds get the same class mix, and the same faces in every
    run that loads the same data."""
    if folds < 2:
        raise EmoError(f"folds must be at least 2 to hold faces out, got {folds}")
    flat = np.ascontiguousarray(images).reshape(len(images), -1)
    _, first, group = np.unique(flat, axis=0, return_index=True, return_inverse=True)
    group = group.reshape(-1)
    group_fold = np.empty(len(first), dtype=np.int64)
    rng = np.random.default_rng(seed)
    start = 0
    for c in np.unique(labels):
        gs = np.flatnonzero(labels[first] == c)  # groups whose first face has class c
        group_fold[rng.permutation(gs)] = (np.arange(len(gs)) + start) % folds
        start += len(gs)  # the next class continues the deal, so fold sizes stay within a few faces
    return group_fold[group]


def fold_record(assignment: np.ndarray, folds: int, fold: int, seed: int) -> dict:
    """What a fold run saves about its held-out faces (``assignment`` from :func:`fold_assignment`),
    so a student can check that its teachers split the same faces the same way."""
    return {"folds": folds, "fold": fold, "seed": seed, "held_out": int((assignment == fold).sum()),
            "assignment_sha256": assignment_sha256(assignment)}


def assignment_sha256(assignment: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(assignment, dtype=np.int64).tobytes()).hexdigest()


def fold_faces(ck: dict, data: str, which: str, name: str) -> tuple[Split, str]:
    """The training faces of one fold of fold run ``ck`` (``which``: a fold number or ``held-out``,
    the fold it never trained on), cut from ``data`` exactly as the run cut them, and a line
    saying which faces they are. Raises :class:`EmoError` for a run without folds, a fold out of
    range, or data whose faces split into other folds than the run's did."""
    rec = ck.get("data", {}).get("fold")
    if not rec:
        raise EmoError(f"{name} is not a fold run (trained with folds = K, fold = k), so it has no fold to evaluate; drop --fold")
    folds = rec["folds"]
    if which == "held-out":
        k = rec["fold"]
    else:
        try:
            k = int(which)
        except ValueError:
            raise EmoError(f"--fold takes a fold number (0..{folds - 1}) or 'held-out', got {which!r}") from None
        if not 0 <= k < folds:
            raise EmoError(f"--fold must be within 0..{folds - 1} ({name} has {folds} folds), got {k}")
    cfg = ck.get("config", {})
    train = train_val_splits(data, ck["input"]["size"], None, cfg.get("val_fraction", 0.1), cfg.get("seed", 0))[0]
    f = fold_assignment(train.images, train.labels, folds, rec["seed"])
    if assignment_sha256(f) != rec["assignment_sha256"]:
        raise EmoError(f"the training faces in {data} split into other folds than those {name} was trained on; "
                       "pass the data it was trained on")
    idx = np.flatnonzero(f == k)
    how = "held out: never trained on" if k == rec["fold"] else "trained on"
    return (Split(train.images[idx], train.labels[idx], train.report),
            f"fold {k} of {folds} ({how}), {len(idx)} training faces")
