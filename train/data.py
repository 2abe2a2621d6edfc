"""The trainer's view of the data: which faces it trains on and which it validates on (FER2013's
splits, a stratified fraction, or a user's own faces split by person or session)."""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

from emo.edge_runtime.collect_table import CSV_NAME as COLLECT_CSV
from emo.edge_runtime.dataset import DataReport, Split, class_index, has_split, load_folder, load_split, stratified_split
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.files import IMAGE_EXTS
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.serve.label_store import LOG_NAME as LABEL_LOG


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


# ---------------------------------------------------------------- a user's own faces, split by group
MIN_FACES = 10  # fewer faces than this are too few to fine-tune on and validate


def face_groups(names: list[str], groups_csv: str = "") -> list[str]:
    """The group of each face (``names`` as :func:`load_folder` gives them, ``<class>/<file>``): the
    file name's prefix before its first ``_`` (``alice_0007.png`` -> ``alice``; a name without one is
    a group of its own), or the ``group`` column of ``groups_csv`` (columns ``file,group``; a file is
    matched by its path in the folder, ``happy/x.png``, or by its name alone)."""
    if not groups_csv:
        return [Path(n).name.split("_", 1)[0] if "_" in Path(n).name else Path(n).stem for n in names]
    rows = read_groups_csv(groups_csv)
    by_name: dict = {}
    for f, g in rows.items():
        by_name.setdefault(Path(f).name, set()).add(g)
    out, missing = [], []
    for n in names:
        g = rows.get(n)
        if g is None:
            cands = by_name.get(Path(n).name, set())
            g = next(iter(cands)) if len(cands) == 1 else None
        if g is None:
            missing.append(n)
        out.append(g)
    if missing:
        raise EmoError(f"--groups {groups_csv} gives no group for {len(missing)} of the {len(names)} faces, e.g. "
                       f"{', '.join(missing[:3])}; add a row file,group for each (file as <emotion>/<name> or the name)")
    return out


def read_groups_csv(path: str) -> dict:
    """``file -> group`` from a CSV with a header naming the columns ``file`` and ``group``."""
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            cols = [c.strip().lower() for c in reader.fieldnames or []]
            if "file" not in cols or "group" not in cols:
                raise EmoError(f"--groups {p} needs a header with the columns file and group (found: {', '.join(cols) or 'none'})")
            fkey, gkey = (reader.fieldnames[cols.index(k)] for k in ("file", "group"))
            rows = {r[fkey].strip().replace("\\", "/"): r[gkey].strip() for r in reader if r.get(fkey) and r.get(gkey)}
    except FileNotFoundError:
        raise EmoError(f"--groups {p} does not exist; pass a CSV with the columns file,group") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise EmoError(f"cannot read --groups {p}: {e}") from None
    return rows


def group_split(labels: np.ndarray, groups: list[str], fraction: float, seed: int) -> np.ndarray:
    """Which faces validate (a boolean mask): whole groups, about ``fraction`` of them, so frames of
    one person or session never fall on both sides. The groups are taken in an order fixed by
    ``seed``, each joining validation while that brings its class counts closer to ``fraction`` of
    every class (stratified where the groups allow; a class with one group stays in training);
    then, up to the number wanted, the groups that do least harm."""
    if not 0 < fraction < 1:
        raise EmoError(f"--val-fraction must be between 0 and 1, got {fraction}")
    names, gi = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    n_groups = len(names)
    if n_groups < 2:
        raise EmoError(f"all {len(labels)} faces belong to one group ('{names[0]}'), so none are left to validate on; "
                       "faces of at least two people or sessions are needed (the file-name prefix before '_', or --groups CSV)")
    counts = np.zeros((n_groups, len(LABELS)))
    np.add.at(counts, (gi, labels), 1)
    target = fraction * counts.sum(0)
    want = min(n_groups - 1, max(1, int(round(fraction * n_groups))))
    cost = lambda c: float((((c - target) ** 2) / np.maximum(target, 1.0)).sum())  # noqa: E731
    val, cur = [], np.zeros(len(LABELS))
    for g in np.random.default_rng(seed).permutation(n_groups):
        if len(val) < want and cost(cur + counts[g]) < cost(cur):
            val.append(g)
            cur = cur + counts[g]
    while len(val) < want:
        rest = [g for g in range(n_groups) if g not in val]
        g = min(rest, key=lambda g: (cost(cur + counts[g]), names[g]))
        val.append(g)
        cur = cur + counts[g]
    return np.isin(gi, val)


def made_by_emo(folder: Path) -> bool:
    """Whether `emo-edge collect` or `emo-edge label` made DIR (its faces.csv or label log is there):
    they make every emotion folder, so an empty one is an emotion the user has no faces of, not a
    mistake; :func:`group_splits` refuses empty class folders only in folders the user made."""
    return (folder / COLLECT_CSV).is_file() or (folder / LABEL_LOG).is_file()


def group_splits(data: str, size: int, val_fraction: float, seed: int, groups_csv: str = "") -> tuple[Split, Split, dict]:
    """A user's folder of ``<emotion>/`` faces split into training and validation faces by group
    (:func:`face_groups`, :func:`group_split`), and a record of it: a fingerprint of the data (faces,
    labels and groups), the classes seen, and the groups on each side."""
    folder = Path(data)
    if not folder.is_dir():
        raise EmoError(f"{data} is not a folder; pass a folder of <emotion>/ face images (angry/, happy/, ...)")
    empty = [d.name for d in sorted(folder.iterdir()) if d.is_dir() and class_index(d.name) is not None
             and not any(f.suffix.lower() in IMAGE_EXTS for f in d.iterdir())]
    if empty and not made_by_emo(folder):
        raise EmoError(f"class folder(s) {', '.join(empty)} in {data} hold no images; add faces or remove the folder(s)")
    try:
        every = load_folder(folder, "all", size)
    except EmoError as e:
        if "no usable images" not in str(e):
            raise
        raise EmoError(f"none of the images in {data} could be read (or they are blank); "
                       "give PNG or JPEG face crops in <emotion>/ folders") from None
    if len(every.labels) < MIN_FACES:
        raise EmoError(f"{data} holds {len(every.labels)} usable faces; fine-tuning needs at least {MIN_FACES} "
                       "(and faces of at least two people or sessions to validate on)")
    groups = face_groups(every.names, groups_csv)
    val = group_split(every.labels, groups, val_fraction, seed)
    g = np.asarray(groups, dtype=object)
    h = hashlib.sha256(every.fingerprint().encode())
    h.update("\n".join(f"{n}\t{gr}" for n, gr in zip(every.names, groups)).encode())
    seen = [LABELS[c] for c in range(len(LABELS)) if (every.labels == c).any()]
    record = {"fingerprint": h.hexdigest(), "faces": int(len(every.labels)), "classes_seen": seen,
              "groups": {"train": int(len(set(g[~val]))), "val": int(len(set(g[val]))), "file": groups_csv or "file-name prefix"},
              "val_groups": sorted(set(g[val].tolist())), "report": every.report.to_dict()}

    def side(m: np.ndarray, name: str) -> Split:
        rep = DataReport(source=f"{data} ({name}: {len(set(g[m]))} of {len(set(g))} groups)", split=name, count=int(m.sum()))
        rep.per_class = {LABELS[i]: int((every.labels[m] == i).sum()) for i in range(len(LABELS))}
        return Split(every.images[m], every.labels[m], rep, [n for n, k in zip(every.names, m) if k])

    return side(~val, "train"), side(val, "val"), record


def join_splits(a: Split, b: Split) -> Split:
    """``a``'s faces, then ``b``'s (a refit trains on the validation groups too)."""
    names = (a.names or []) + (b.names or []) if a.names is not None and b.names is not None else None
    return Split(np.concatenate([a.images, b.images]), np.concatenate([a.labels, b.labels]), a.report, names)


def run_group_faces(ck: dict, name: str) -> tuple[Split, Split]:
    """The training and validation faces of a run that split its data by group (``val_by_group``),
    cut again from its data as the run cut them; refused when those faces have changed since."""
    cfg = ck.get("config") or {}
    if not cfg.get("val_by_group"):
        raise EmoError(f"{name} did not split its faces by group, so it has no faces of its own to hand on; pass the data")
    train, val, rec = group_splits(cfg["data"], ck["input"]["size"], cfg["val_fraction"], cfg["seed"], cfg.get("groups_csv", ""))
    if cfg.get("train_on_val"):
        train = join_splits(train, val)
    if rec["fingerprint"] != ((ck.get("data") or {}).get("groups") or {}).get("fingerprint"):
        raise EmoError(f"the faces in {cfg['data']} have changed since {name} was trained on them; pass --calib-data and "
                       "--val-data, or fine-tune again")
    return train, val
