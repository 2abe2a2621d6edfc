import gzip
import shutil

import cv2
import numpy as np
import pytest

from emo.edge_runtime.dataset import has_split, load_split, locate_split, split_key, stratified_split
from emo.edge_runtime.errors import EmoError

from emo.edge_runtime.labels import LABELS


def _write_csv(path, fer_root, per_class=5, gz=False):
    rows = ["emotion,pixels,Usage"]
    for usage, split in (("Training", "train"), ("PublicTest", "val")):
        for i, c in enumerate(LABELS):
            for f in sorted((fer_root / split / c).glob("*.jpg"))[:per_class]:
                px = cv2.imread(str(f), 0).flatten()
                rows.append(f"{i},{' '.join(map(str, px))},{usage}")
    text = "\n".join(rows) + "\n"
    if gz:
        with gzip.open(path, "wt") as fh:
            fh.write(text)
    else:
        path.write_text(text)
    return path


def test_folder_layout_real_data(small_fer):
    tr = load_split(small_fer, "train")
    va = load_split(small_fer, "val")
    assert tr.images.shape[1:] == (48, 48) and tr.images.dtype == np.uint8
    assert len(tr.labels) == 7 * 40 - tr.report.blank_skipped
    assert set(va.report.per_class) == set(LABELS)


@pytest.mark.parametrize("gz", [False, True])
def test_kaggle_csv_with_usage(tmp_path, fer_root, gz):
    p = _write_csv(tmp_path / ("fer.csv.gz" if gz else "fer.csv"), fer_root, gz=gz)
    tr, va = load_split(p, "train"), load_split(p, "val")
    assert len(tr.labels) + tr.report.blank_skipped == 35 and len(va.labels) + va.report.blank_skipped == 35
    assert has_split(p, "val") and not has_split(p, "test")
    folder_img = cv2.imread(str(sorted((fer_root / "train" / "neutral").glob("*.jpg"))[4]), 0)
    assert np.array_equal(tr.images[-1], folder_img) and tr.labels[-1] == 6


def test_stratified_split_keeps_every_class(small_fer):
    tr = load_split(small_fer, "train")
    a, b = stratified_split(tr, 0.1, seed=0)
    assert len(a.labels) + len(b.labels) == len(tr.labels)
    assert all(v >= 1 for v in b.report.per_class.values())
    a2, b2 = stratified_split(tr, 0.1, seed=0)
    assert np.array_equal(b.labels, b2.labels) and np.array_equal(b.images, b2.images)


def test_broken_folder_is_reported_not_fatal(tmp_path, fer_root):
    root = tmp_path / "broken"
    for c in ("happy", "sad"):
        d = root / "train" / c
        d.mkdir(parents=True)
        for f in sorted((fer_root / "train" / c).glob("*.jpg"))[:5]:
            shutil.copy(f, d / f.name)
    (root / "train" / "happy" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    big = cv2.resize(cv2.imread(str(next((fer_root / "train" / "sad").glob("*.jpg"))), 0), (96, 96))
    cv2.imwrite(str(root / "train" / "sad" / "big.png"), big)
    cv2.imwrite(str(root / "train" / "sad" / "blank.png"), np.zeros((48, 48), np.uint8))
    dup = next((root / "train" / "happy").glob("Training_*.jpg"))
    shutil.copy(dup, root / "train" / "happy" / "copy_of_first.jpg")
    sp = load_split(root, "train")
    rep = sp.report
    assert len(rep.unreadable) == 1 and "corrupt.jpg" in rep.unreadable[0]
    assert rep.resized == 1 and rep.blank_skipped == 1 and rep.duplicates == 1
    assert sp.images.shape[1:] == (48, 48)
    text = "\n".join(rep.lines())
    assert "unreadable" in text and "resized 1" in text and "blank" in text and "duplicate" in text


def test_unknown_class_folder_and_wrong_paths(tmp_path, fer_root):
    d = tmp_path / "r" / "train" / "happyy"
    d.mkdir(parents=True)
    with pytest.raises(EmoError, match="unknown class folder"):
        load_split(tmp_path / "r", "train")
    with pytest.raises(EmoError, match="does not exist"):
        load_split(tmp_path / "nope", "train")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(EmoError, match="not a folder or a .csv"):
        load_split(tmp_path / "x.txt", "train")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(EmoError, match="not a FER2013 CSV"):
        load_split(tmp_path / "bad.csv", "train")


def test_splits_never_stand_in_for_each_other(synthetic_fer, tmp_path):
    """'val' does not fall back to a test folder; a folder of class folders answers any split but
    says so; has_split tells which splits really exist."""
    root = tmp_path / "r"
    shutil.copytree(synthetic_fer / "train", root / "train")
    shutil.copytree(synthetic_fer / "val", root / "test")
    with pytest.raises(EmoError, match=r"no 'val' folder \(it has: test, train\)"):
        load_split(root, "val")
    assert not has_split(root, "val") and has_split(root, "test")
    assert load_split(root, "test").report.source == str(root / "test")
    flat = synthetic_fer / "val"
    sp = load_split(flat, "val")
    assert "no split folders: all of it" in sp.report.source and "all of it" in sp.report.lines()[0]
    assert not has_split(flat, "val") and not has_split(flat, "train")
    assert split_key(flat, "train") == split_key(synthetic_fer, "val")  # the same faces, however named
    assert locate_split(synthetic_fer, "val") == str(synthetic_fer / "val")
    with pytest.raises(EmoError, match="unknown split"):
        locate_split(synthetic_fer, "holdout")
