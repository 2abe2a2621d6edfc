"""FER2013 loading (numpy + OpenCV only, so the edge runtime can evaluate on device): the Kaggle
image-folder layout and the Kaggle CSV, validated up front.

Everything is loaded into memory as uint8 arrays (FER2013 is 35k x 48 x 48 = 80 MB), so a bad
file is found before the first epoch, not halfway through it.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import EmoError
from .files import IMAGE_EXTS, read_image, shown
from .labels import LABELS
from .preprocess import resize_square

CSV_USAGE = {"train": "Training", "val": "PublicTest", "test": "PrivateTest"}
FOLDER_SPLITS = {"train": ("train", "Training"), "val": ("val", "PublicTest"), "test": ("test", "PrivateTest")}
ALL_OF_IT = "a folder of class folders, no split folders: all of it"


@dataclass
class DataReport:
    """What loading found: counts per class and everything that was skipped or fixed."""

    source: str
    split: str
    count: int = 0
    per_class: dict = field(default_factory=dict)
    unreadable: list = field(default_factory=list)
    resized: int = 0
    blank_skipped: int = 0
    duplicates: int = 0
    conflicting_duplicates: int = 0

    def lines(self) -> list[str]:
        out = [f"{self.split}: {self.count} images from {self.source}"]
        out.append("  per class: " + ", ".join(f"{k} {v}" for k, v in self.per_class.items()))
        if self.unreadable:
            ex = ", ".join(self.unreadable[:3])
            out.append(f"  skipped {len(self.unreadable)} unreadable file(s), e.g. {ex}")
        if self.resized:
            out.append(f"  resized {self.resized} image(s) that were not 48x48")
        if self.blank_skipped:
            out.append(f"  skipped {self.blank_skipped} blank (constant) image(s)")
        if self.duplicates:
            out.append(
                f"  {self.duplicates} exact duplicate image(s) "
                f"({self.conflicting_duplicates} with a different label); kept"
            )
        return out

    def to_dict(self) -> dict:
        d = dict(self.__dict__)
        d["unreadable"] = self.unreadable[:50]
        d["unreadable_count"] = len(self.unreadable)
        return d


@dataclass
class Split:
    images: np.ndarray  # (N, size, size) uint8
    labels: np.ndarray  # (N,) int64
    report: DataReport
    names: list[str] | None = None  # a folder's faces: each one's file, as <class>/<file name>

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.images).tobytes())
        h.update(self.labels.astype(np.int64).tobytes())
        return h.hexdigest()


def class_index(name: str) -> int | None:
    n = name.strip().lower()
    if n in LABELS:
        return LABELS.index(n)
    if n.isdigit() and int(n) < len(LABELS):
        return int(n)
    return None


def _finish(images: list, labels: list, report: DataReport, skip_blank: bool, names: list | None = None) -> Split:
    keep_i, keep_l, keep_n, seen = [], [], [], {}
    for i, (img, lab) in enumerate(zip(images, labels)):
        if skip_blank and int(img.max()) == int(img.min()):
            report.blank_skipped += 1
            continue
        key = hashlib.blake2b(img.tobytes(), digest_size=12).digest()
        if key in seen:
            report.duplicates += 1
            if seen[key] != lab:
                report.conflicting_duplicates += 1
        else:
            seen[key] = lab
        keep_i.append(img)
        keep_l.append(lab)
        if names is not None:
            keep_n.append(names[i])
    if not keep_i:
        raise EmoError(f"no usable images for split '{report.split}' in {report.source}")
    arr = np.stack(keep_i).astype(np.uint8)
    lab = np.asarray(keep_l, np.int64)
    report.count = len(lab)
    report.per_class = {LABELS[i]: int((lab == i).sum()) for i in range(len(LABELS))}
    return Split(arr, lab, report, keep_n if names is not None else None)


def _fix_size(img: np.ndarray, size: int, report: DataReport) -> np.ndarray:
    if img.shape != (size, size):
        report.resized += 1
        h, w = img.shape
        s = min(h, w)  # centre square, then resize
        img = img[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
        img = resize_square(img, size)
    return img


def find_split_dir(root: Path, split: str) -> Path | None:
    for name in FOLDER_SPLITS[split]:
        if (root / name).is_dir():
            return root / name
    return None


def load_folder(folder: Path, split: str, size: int = 48, skip_blank: bool = True, limit: int | None = None) -> Split:
    """Load ``folder/<class>/*`` where ``<class>`` is a FER2013 label name or index. Folders whose
    names start with ``_`` or ``.`` are set aside, not classes (``emo-edge label``'s ``_discarded``)."""
    report = DataReport(source=str(folder), split=split)
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    unknown = [p.name for p in subdirs if class_index(p.name) is None]
    if unknown:
        raise EmoError(
            f"{folder} has unknown class folder(s) {unknown}; expected folders named "
            f"{', '.join(LABELS)} (or 0-6). Rename or remove them."
        )
    if not subdirs:
        raise EmoError(f"{folder} has no class folders; expected {folder}/<emotion>/*.jpg with emotions {', '.join(LABELS)}")
    images, labels, names = [], [], []
    for d in subdirs:
        idx = class_index(d.name)
        files = sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_EXTS)
        if limit is not None:
            files = files[:limit]
        for f in files:
            try:
                img = read_image(f, cv2.IMREAD_GRAYSCALE)
            except EmoError:
                report.unreadable.append(shown(f))
                continue
            images.append(_fix_size(img, size, report))
            labels.append(idx)
            names.append(f"{d.name}/{f.name}")
    return _finish(images, labels, report, skip_blank, names)


def load_csv(path: Path, split: str, size: int = 48, skip_blank: bool = True, limit: int | None = None) -> Split:
    """Load the Kaggle ``fer2013.csv`` (``emotion,pixels,Usage``), plain or gzipped."""
    report = DataReport(source=str(path), split=split)
    opener = gzip.open if path.suffix == ".gz" else open
    want = CSV_USAGE[split]
    images, labels, per_class = [], [], {}
    try:
        with opener(path, "rt", newline="") as fh:
            reader = csv.DictReader(fh)
            cols = set(reader.fieldnames or [])
            if not {"emotion", "pixels"} <= cols:
                raise EmoError(f"{path} is not a FER2013 CSV: it needs columns emotion,pixels[,Usage], found {sorted(cols)}")
            has_usage = "Usage" in cols
            if not has_usage and split != "train":
                raise EmoError(f"{path} has no Usage column, so it has no '{split}' split; pass labelled faces that have one (training holds out val_fraction of train by itself)")
            report.source = f"{path} [{want}]" if has_usage else f"{path} (no Usage column: all rows)"
            for lineno, row in enumerate(reader, start=2):
                if has_usage and row["Usage"] != want:
                    continue
                try:
                    lab = int(row["emotion"])
                    px = np.array(row["pixels"].split(), dtype=np.int32)
                    side = int(round(np.sqrt(px.size)))
                    if lab not in range(len(LABELS)) or side * side != px.size or px.min() < 0 or px.max() > 255:
                        raise ValueError
                except (ValueError, AttributeError):
                    report.unreadable.append(f"{path.name}:{lineno}")
                    continue
                if limit is not None:
                    per_class[lab] = per_class.get(lab, 0) + 1
                    if per_class[lab] > limit:
                        continue
                images.append(_fix_size(px.astype(np.uint8).reshape(side, side), size, report))
                labels.append(lab)
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile, csv.Error) as e:
        raise EmoError(f"cannot read {path}: {e}") from None
    return _finish(images, labels, report, skip_blank)


def _class_folders(p: Path) -> bool:
    return any(class_index(c.name) is not None for c in p.iterdir() if c.is_dir())


def locate_split(data: str | os.PathLike, split: str) -> str:
    """Where :func:`load_split` reads ``split`` of ``data`` from, said plainly: ``ROOT/val`` (a
    split folder), ``fer.csv [PublicTest]`` (the CSV's rows of that Usage), or ``ROOT (a folder
    of class folders, ...: all of it)``: such a folder has no splits, so every split is all of it,
    and the report says so. Two splits with the same location are the same faces.
    Raises :class:`EmoError` when ``data`` does not exist or has no such split folder."""
    p = Path(data)
    if split not in CSV_USAGE:
        raise EmoError(f"unknown split '{split}'; use train, val (PublicTest) or test (PrivateTest)")
    if not p.exists():
        raise EmoError(f"data path {p} does not exist; pass a FER2013 folder (ROOT/train/<emotion>/) or fer2013.csv")
    if p.is_file():
        if not (p.name.endswith(".csv") or p.name.endswith(".csv.gz")):
            raise EmoError(f"{p} is not a folder or a .csv/.csv.gz file")
        return f"{p} [{CSV_USAGE[split]}]"
    d = find_split_dir(p, split)
    if d is not None:
        return str(d)
    if _class_folders(p):
        return f"{p} ({ALL_OF_IT})"
    found = sorted(c.name for c in p.iterdir() if c.is_dir())
    raise EmoError(f"{p} has no '{FOLDER_SPLITS[split][0]}' folder (it has: {', '.join(found) or 'no folders'}); "
                   f"expected {p}/{FOLDER_SPLITS[split][0]}/<emotion>/*.jpg")


def split_key(data: str | os.PathLike, split: str) -> tuple[Path, str]:
    """What identifies the faces :func:`load_split` returns for ``split``: the resolved split
    folder (or class-folder folder) and no Usage, or the resolved CSV and its Usage."""
    p = Path(data)
    if p.is_file():
        return p.resolve(), CSV_USAGE[split]
    d = find_split_dir(p, split)
    return (d if d is not None else p).resolve(), ""


def load_split(data: str | os.PathLike, split: str, size: int = 48, skip_blank: bool = True, limit: int | None = None) -> Split:
    """Load one split ('train', 'val' or 'test') of a FER2013 folder tree or CSV; the report's
    ``source`` says where it came from (:func:`locate_split`)."""
    p = Path(data)
    where = locate_split(p, split)
    if p.is_file():
        return load_csv(p, split, size, skip_blank, limit)
    d = find_split_dir(p, split)
    sp = load_folder(d if d is not None else p, split, size, skip_blank, limit)
    sp.report.source = where
    return sp


def has_split(data: str | os.PathLike, split: str) -> bool:
    """Whether ``data`` has its own ``split``: a split folder, or CSV rows of that Usage (a
    folder of class folders has none)."""
    p = Path(data)
    if p.is_dir():
        return find_split_dir(p, split) is not None
    if split == "train":
        return True
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", newline="") as fh:
            reader = csv.DictReader(fh)
            if "Usage" not in (reader.fieldnames or []):
                return False
            return any(row["Usage"] == CSV_USAGE[split] for row in reader)
    except (OSError, EOFError, csv.Error):
        return False


def stratified_split(split: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Hold out ``fraction`` of each class as validation, deterministically for ``seed``."""
    if not 0 < fraction < 1:
        raise EmoError(f"val_fraction must be between 0 and 1, got {fraction}; e.g. --set val_fraction=0.1")
    rng = np.random.default_rng(seed)
    val_idx = []
    for c in np.unique(split.labels):
        idx = np.flatnonzero(split.labels == c)
        rng.shuffle(idx)
        val_idx.extend(idx[: max(1, int(round(len(idx) * fraction)))])
    mask = np.zeros(len(split.labels), bool)
    mask[val_idx] = True

    def sub(m: np.ndarray, name: str) -> Split:
        rep = DataReport(source=split.report.source + f" (stratified {fraction:.0%} {name})", split=name, count=int(m.sum()))
        rep.per_class = {LABELS[i]: int((split.labels[m] == i).sum()) for i in range(len(LABELS))}
        return Split(split.images[m], split.labels[m], rep)

    return sub(~mask, "train"), sub(mask, "val")
