"""Shared fixtures. Real-data tests find ../shared/data through EMO_SHARED_DATA (set by .ci/run)
and skip, saying why, when it is not there. Training and export tests run everywhere on
``synthetic_fer``: cartoon faces drawn here, whose brows, eyes and mouth depend on the class."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest

from emo.edge_runtime.labels import LABELS

REPO = Path(__file__).resolve().parents[1]
SHARED = os.environ.get("EMO_SHARED_DATA", "")
# `--detector auto` picks YuNet when the user's cache holds it: tests get an empty cache of their
# own (inherited by every emo-edge they start), so they see the same detector on every machine.
os.environ["EMO_CACHE_DIR"] = tempfile.mkdtemp(prefix="emo-test-cache-")
FER = Path(SHARED) / "fer2013" if SHARED else None
PHOTOS = Path(SHARED) / "photos" if SHARED else None
YUNET = Path(SHARED).parent / "models" / "face_detection_yunet.onnx" if SHARED else None

SKIP_REASON = "real data not found: set EMO_SHARED_DATA to the shared data folder (../shared/data), as .ci/run does"


def bin_path(name: str) -> str:
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else name


# a guard against a hung command; emulated CPUs (benchmarks/arm64_check.sh) are tens of times slower
CLI_TIMEOUT = float(os.environ.get("EMO_TEST_CLI_TIMEOUT", "300"))


def emo_here(prog: str, monkeypatch, capfd, *args) -> tuple[int, str, str]:
    """emo-train or emo-export in this process, through its main() (one-line errors, exit codes):
    exit code, stdout, stderr. For calls that end before the work: no interpreter and torch start-up each."""
    import importlib
    main = importlib.import_module({"emo-train": "emo.train.cli", "emo-export": "emo.export.cli"}[prog]).main
    capfd.readouterr()
    monkeypatch.setattr(sys, "argv", [prog, *map(str, args)])
    with pytest.raises(SystemExit) as e:
        main()
    out, err = capfd.readouterr()
    return e.value.code, out, err


def emo_train_here(monkeypatch, capfd, *args) -> tuple[int, str, str]:
    return emo_here("emo-train", monkeypatch, capfd, *args)


def run_cli(name: str, *args, timeout: float | None = None, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([bin_path(name), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout or CLI_TIMEOUT, **kw)


@pytest.fixture(scope="session")
def fer_root() -> Path:
    if FER is None or not (FER / "train").is_dir():
        pytest.skip(SKIP_REASON)
    return FER


@pytest.fixture(scope="session")
def photos() -> Path:
    if PHOTOS is None or not PHOTOS.is_dir():
        pytest.skip(SKIP_REASON)
    return PHOTOS


@pytest.fixture(scope="session")
def small_fer(tmp_path_factory, fer_root) -> Path:
    """A small real FER2013 tree: 40 train and 12 val images per class (copied, unchanged)."""
    root = tmp_path_factory.mktemp("fer_small")
    for split, n in (("train", 40), ("val", 12)):
        for c in LABELS:
            d = root / split / c
            d.mkdir(parents=True)
            for f in sorted((fer_root / split / c).glob("*.jpg"))[:n]:
                shutil.copy(f, d / f.name)
    return root


def synthetic_face(label: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """A 48x48 gray cartoon face: wide eyes for fear and surprise, brows slanted per class, and a
    mouth per class (smile, frown, open, crooked, flat); with ``rng``, position, contrast and
    noise vary; without, the face is drawn the same everywhere (no random numbers at all)."""
    img = np.full((48, 48), int(rng.integers(30, 90)) if rng else 60, np.uint8)
    cx, cy = (24 + int(rng.integers(-2, 3)), 25 + int(rng.integers(-2, 3))) if rng else (24, 25)
    skin = int(rng.integers(150, 210)) if rng else 180
    dark = skin - 120
    cv2.ellipse(img, (cx, cy), (17, 21), 0, 0, 360, skin, -1)
    tilt = {0: 4, 1: 2, 2: -3, 4: -4}.get(label, 0)
    for sx in (-1, 1):
        cv2.circle(img, (cx + sx * 7, cy - 5), 4 if label in (2, 5) else 2, dark, -1)
        cv2.line(img, (cx + sx * 3, cy - 10 + tilt), (cx + sx * 11, cy - 11 - tilt // 2), dark, 2)
    my = cy + 9
    if label == 3:
        cv2.ellipse(img, (cx, my - 2), (8, 5), 0, 10, 170, dark, 2)
    elif label == 4:
        cv2.ellipse(img, (cx, my + 4), (8, 5), 0, 190, 350, dark, 2)
    elif label in (2, 5):
        cv2.ellipse(img, (cx, my + 1), (6, 3) if label == 2 else (4, 6), 0, 0, 360, dark, -1)
    elif label == 1:
        cv2.line(img, (cx - 7, my + 2), (cx + 7, my - 3), dark, 2)
    else:
        cv2.line(img, (cx - 7, my), (cx + 7, my), dark, 2 if label == 0 else 1)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8) if rng else img


def write_synthetic_fer(root: Path, per_split: dict, seed: int = 0) -> Path:
    """ROOT/<split>/<emotion>/*.png of synthetic faces, ``per_split[split]`` per class."""
    rng = np.random.default_rng(seed)
    for split, n in per_split.items():
        for i, c in enumerate(LABELS):
            d = root / split / c
            d.mkdir(parents=True)
            for j in range(n):
                cv2.imwrite(str(d / f"{split}_{c}_{j:03d}.png"), synthetic_face(i, rng))
    return root


@pytest.fixture(scope="session")
def synthetic_fer(tmp_path_factory) -> Path:
    """A FER2013-layout tree of synthetic faces: 40 train and 20 val per class (420 in all)."""
    return write_synthetic_fer(tmp_path_factory.mktemp("synthetic_fer"), {"train": 40, "val": 20})


def train_and_export(data: Path, out: Path, name: str = "seed") -> Path:
    """The seed CNN trained for 60 steps on ``data``, then exported (minmax calibration). At 40
    steps (74% on the synthetic val faces) many of its answers were near ties, and a CPU with
    VNNI int8 kernels flipped 3 of 140, under the export's 98% agreement gate; at 60 (95%) none flip."""
    r = run_cli("emo-train", "fit", "--data", data, "--set", "arch=seed",
                "--set", "max_steps=60", "--set", "batch_size=32", "--set", "lr=0.001", "--set", "augment=false",
                "--out", out, "--name", name, "--no-progress")
    assert r.returncode == 0, r.stderr + r.stdout
    run = out / name
    r = run_cli("emo-export", run / "model.pt", "--val-size", 500, "--calib-size", 200, "--calib-method", "minmax")
    assert r.returncode == 0, r.stderr + r.stdout
    return run


@pytest.fixture(scope="session")
def seed_run(tmp_path_factory, synthetic_fer) -> Path:
    """The seed CNN trained for a few steps on the synthetic faces, then exported. Read-only:
    a test that changes files copies the run first (see ``seed_run_copy``)."""
    return train_and_export(synthetic_fer, tmp_path_factory.mktemp("runs"))


@pytest.fixture
def seed_run_copy(seed_run, tmp_path) -> Path:
    """A private copy of ``seed_run`` for a test that writes into the run folder."""
    return Path(shutil.copytree(seed_run, tmp_path / "seed"))


def make_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(f)
    vw.release()
    return path


def photo_video(photos: Path, tmp: Path, name: str = "clip.avi", n: int = 20) -> Path:
    """A 640x480, 10 fps clip of a real face drifting across the frame (the benchmarks' test video)."""
    from emo.edge_runtime.bench import make_test_video

    return make_test_video(photos / "obama_small.jpg", tmp / name, frames=n, fps=10.0)
