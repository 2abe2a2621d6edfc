"""Shared fixtures. Real-data tests find ../shared/data through EMO_SHARED_DATA (set by .ci/run)
and skip, saying why, when it is not there."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = os.environ.get("EMO_SHARED_DATA", "")
FER = Path(SHARED) / "fer2013" if SHARED else None
PHOTOS = Path(SHARED) / "photos" if SHARED else None
YUNET = Path(SHARED).parent / "models" / "face_detection_yunet.onnx" if SHARED else None
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

SKIP_REASON = "real data not found: set EMO_SHARED_DATA to the shared data folder (../shared/data), as .ci/run does"


def bin_path(name: str) -> str:
    p = Path(sys.executable).parent / name
    return str(p) if p.exists() else name


def run_cli(name: str, *args, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([bin_path(name), *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


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


@pytest.fixture(scope="session")
def seed_run(tmp_path_factory, fer_root) -> Path:
    """The seed CNN trained for a few steps on real FER2013 images, then exported."""
    out = tmp_path_factory.mktemp("runs")
    r = run_cli("emo-train", "fit", "--data", fer_root, "--arch", "seed", "--limit-per-class", 150, "--max-steps", 40,
                "--set", "lr=0.001", "--set", "optimizer=\"adam\"", "--no-augment", "--out", out, "--name", "seed", "--no-progress")
    assert r.returncode == 0, r.stderr + r.stdout
    run = out / "seed"
    r = run_cli("emo-export", run / "model.pt", "--val-size", 500, "--calib-size", 200)
    assert r.returncode == 0, r.stderr + r.stdout
    return run


def make_video(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> Path:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    assert vw.isOpened()
    for f in frames:
        vw.write(f)
    vw.release()
    return path


def photo_video(photos: Path, tmp: Path, name: str = "clip.avi", n: int = 20, size=(640, 480), drift: int = 2) -> Path:
    """A 640x480 clip made from a real photo, the face drifting a few pixels per frame."""
    img = cv2.imread(str(photos / "obama_small.jpg"))
    canvas_h, canvas_w = size[1], size[0]
    frames = []
    for i in range(n):
        c = np.full((canvas_h, canvas_w, 3), 90, np.uint8)
        x, y = 100 + i * drift, 100 + i * drift // 2
        c[y : y + img.shape[0], x : x + img.shape[1]] = img
        frames.append(c)
    return make_video(tmp / name, frames)
