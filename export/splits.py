"""The faces an export calibrates int8 on and verifies it with: from the data named or the
checkpoint's own (:func:`resolve_data`, :func:`load_faces`), or, for a run on a user's faces split
by group, the faces it trained on and the groups it held out (:func:`own_faces`). Never the same
faces for both."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np

from emo.edge_runtime.dataset import Split, load_split, locate_split, split_key
from emo.edge_runtime.degrade import spoiled_copies
from emo.edge_runtime.errors import EmoError
from emo.train.data import join_splits, run_group_faces

from .options import ExportOptions


def resolve_data(explicit: Optional[str], ck: dict, what: str, flag: str) -> str:
    if explicit:
        return explicit
    src = (ck.get("data") or {}).get("source")
    if not src:
        raise EmoError(f"the checkpoint records no training data, so {what} needs {flag} PATH (a FER2013 folder or CSV)")
    if not Path(src).exists():
        raise EmoError(f"the checkpoint's data {src} is not here; pass {flag} PATH (a FER2013 folder or CSV)")
    return src


def load_faces(calib_src: str, val_src: str, size: int, opts: ExportOptions, log: Callable[[str], None]) -> tuple[Split, Split]:
    """Calibration faces (``calib_src``'s train split) and verification faces (``val_src``'s val
    split, or all of a folder of class folders), sampled; refused when they are the same faces."""
    try:
        calib_at, val_at = locate_split(calib_src, "train"), locate_split(val_src, "val")
        if split_key(calib_src, "train") == split_key(val_src, "val"):
            raise EmoError(f"calibration and verification would both use {calib_at}; verify on other labelled faces: "
                           "pass --val-data (a FER2013 root with a val folder, or a folder of class folders)")
        log(f"calibration faces: {calib_at}; verification faces: {val_at}")
        calib = _sample(load_split(calib_src, "train", size), opts.calib_size, opts.seed)
        val = _sample(load_split(val_src, "val", size, skip_blank=False), opts.val_size, opts.seed + 1)
    except EmoError as e:
        raise EmoError(f"cannot use this data for export: {e}") from None
    return calib, val


def own_faces(ck: dict, ckpt: Path, opts: ExportOptions, log: Callable[[str], None]) -> tuple[Split, Split]:
    """A run on a user's own faces, split by group (``emo-train finetune``): calibrate on the faces
    it trained on, verify on the groups it held out (sampled as --calib-size and --val-size say)."""
    try:
        calib, val = run_group_faces(ck, str(ckpt))
    except EmoError as e:
        raise EmoError(f"cannot use this data for export: {e}") from None
    if (ck.get("config") or {}).get("train_on_val"):  # emo-train finetune --refit
        log(f"calibration faces: every face of the run, {calib.report.source} and its validation groups; verification "
            f"faces: those groups, {val.report.source}, which a refit also trained on (the gates compare int8 with fp32)")
    else:
        log(f"calibration faces: the run's training faces, {calib.report.source}; verification faces: the groups it held out, "
            f"{val.report.source}")
    calib = _sample(calib, opts.calib_size, opts.seed)
    fer = (ck.get("gate") or {}).get("fer")
    if fer:  # a gated pair: its base answers for FER2013-like faces, so int8 is calibrated on as many of those too
        try:
            other = _sample(load_split(fer, "train", calib.images.shape[1]), len(calib.labels), opts.seed)
        except EmoError as e:
            raise EmoError(f"cannot calibrate the gated pair's base on FER2013 ({e}); put {fer} back, or refit the pair with "
                           "emo-train finetune --gated --replay PATH") from None
        log(f"  and as many FER2013 training faces of {fer} (the gated pair's base answers for faces like them)")
        calib = join_splits(calib, other)
    return calib, _sample(val, opts.val_size, opts.seed + 1)


def with_spoiled(calib: Split, seed: int, log: Callable[[str], None]) -> Split:
    """A hardened model (``emo-train harden``): its twin stem reads spoiled faces, so int8 is
    calibrated on each calibration face and a spoiled copy of it as well."""
    spoiled = Split(spoiled_copies(calib.images, seed), calib.labels, calib.report)
    log(f"  and a spoiled copy of each of those {len(calib.labels)} faces (the hardened model's twin stem reads faces like them)")
    return join_splits(calib, spoiled)


def _sample(split: Split, n: int, seed: int) -> Split:
    if not n or n >= len(split.labels):
        return split
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(split.labels), n, replace=False))
    return Split(split.images[idx], split.labels[idx], split.report)
