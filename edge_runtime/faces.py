"""Face detectors: OpenCV's Haar cascade (ships with OpenCV 4.x) and YuNet (``cv2.FaceDetectorYN``,
with a model file that `emo-edge fetch yunet` downloads or the user provides). ``auto`` takes
YuNet when its file is at hand, else Haar.

``detect_faces(image)`` gives :class:`Detection` objects: the box ``(x, y, w, h)`` in pixels of
the original frame, and the tilt of the eye line in degrees where the detector sees the eyes
(YuNet; Haar gives 0). ``detect(image)`` gives the boxes alone.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from .boxes import Box, intersection
from .errors import EmoError
from .files import check_file, opencv_name, shown
from .preprocess import to_gray


class Detection(NamedTuple):
    box: Box
    angle: float = 0.0  # degrees the eye line is turned (clockwise in the image); 0 when unknown


class Detector:
    name = ""
    wants_gray = False
    max_side: int | None = None  # longest side of the frame it detects on (--detect-size); None: as given

    def detect_faces(self, image: np.ndarray) -> list[Detection]:
        raise NotImplementedError

    def detect(self, image: np.ndarray) -> list[Box]:
        return [d.box for d in self.detect_faces(image)]


class HaarDetector(Detector):
    """Frontal-face Haar cascade, run on a frame downscaled to ``max_side`` for speed."""

    name = "haar"
    wants_gray = True  # detect() takes the frame's gray image (the Recognizer converts once)

    def __init__(self, max_side: int = 480, min_face: float = 0.08, scale_factor: float = 1.15, min_neighbors: int = 5):
        path = Path(cv2.data.haarcascades) / "haarcascade_frontalface_default.xml"
        self.cascade = cv2.CascadeClassifier(str(path))
        if self.cascade.empty():
            raise EmoError(f"OpenCV's Haar cascade {path} could not be loaded; reinstall opencv-python-headless<5")
        self.max_side = max_side
        self.min_face = min_face  # as a fraction of the shorter frame side
        self.scale_factor = scale_factor
        self.min_neighbors = min_neighbors

    def detect_faces(self, image: np.ndarray) -> list[Detection]:
        gray = to_gray(image)
        h, w = gray.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        small = cv2.resize(gray, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else gray
        small = cv2.equalizeHist(small)
        m = max(20, int(round(min(small.shape[:2]) * self.min_face)))
        found = self.cascade.detectMultiScale(small, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(m, m))
        boxes = [tuple(int(round(v / s)) for v in b) for b in (found if len(found) else [])]
        return [Detection(b) for b in sorted(drop_nested(boxes), key=lambda b: (b[0], b[1]))]


def drop_nested(boxes: list[Box], cover: float = 0.5) -> list[Box]:
    """Drop boxes mostly inside a larger one (Haar sometimes fires again on a chin or a mouth)."""
    keep: list[Box] = []
    for b in sorted(boxes, key=lambda b: -b[2] * b[3]):
        if all(intersection(b, k) <= cover * b[2] * b[3] for k in keep):
            keep.append(b)
    return keep


class YuNetDetector(Detector):
    """YuNet through ``cv2.FaceDetectorYN``; the model file is never bundled (`emo-edge fetch yunet`)."""

    name = "yunet"
    wants_gray = False

    def __init__(self, model: str | os.PathLike, max_side: int = 640, score_threshold: float = 0.7):
        if not model:
            raise EmoError("--detector yunet needs its model file: run `emo-edge fetch yunet`, or pass --detector-model PATH")
        p = check_file(model, "YuNet model")
        if not hasattr(cv2, "FaceDetectorYN"):
            raise EmoError("this OpenCV has no FaceDetectorYN; install opencv-python-headless>=4.8,<5")
        not_yunet = f"{shown(p)} is not a YuNet model OpenCV can run; pass face_detection_yunet.onnx from opencv_zoo"
        try:
            with opencv_name(p) as name:
                self.det = cv2.FaceDetectorYN.create(name, "", (320, 320), score_threshold, 0.3, 50)
            self.det.setInputSize((64, 64))  # an ONNX file of another kind loads, then fails here
            self.det.detect(np.zeros((64, 64, 3), np.uint8))
        except cv2.error:
            raise EmoError(not_yunet) from None
        self.max_side = max_side

    def detect_faces(self, image: np.ndarray) -> list[Detection]:
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        elif image.shape[2] == 4:
            image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
        elif image.shape[2] == 1:
            image = cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2BGR)
        h, w = image.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        small = cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA) if s < 1 else image
        self.det.setInputSize((small.shape[1], small.shape[0]))
        _, faces = self.det.detect(small)
        out = []
        for f in faces if faces is not None else []:
            x, y, bw, bh = (float(v) / s for v in f[:4])
            x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
            x1, y1 = min(w, int(round(x + bw))), min(h, int(round(y + bh)))
            if x1 > x0 and y1 > y0:
                # landmarks 4..7: the right eye (on the image's left), then the left eye
                angle = math.degrees(math.atan2(float(f[7] - f[5]), float(f[6] - f[4])))
                out.append(Detection((x0, y0, x1 - x0, y1 - y0), angle))
        return sorted(out, key=lambda d: (d.box[0], d.box[1]))


def auto_choice(model: str | os.PathLike | None = None) -> tuple[str, str | os.PathLike | None]:
    """What ``--detector auto`` runs: ("yunet", its file) when given or cached, else ("haar", None)."""
    from .assets import cached

    model = model or cached("yunet")
    return ("yunet", model) if model else ("haar", None)


def haar_fallback_line() -> str:
    """What infer and serve say when ``--detector auto`` runs Haar because YuNet is not in the cache
    (a service whose user cannot see the cache that `emo-edge fetch` filled, say)."""
    from .assets import asset, cache_dir, fetch_command

    return (f"detector: haar, since YuNet ({asset('yunet').file}) is not in the cache {shown(cache_dir())}; "
            f"YuNet finds far more faces: run `{fetch_command('yunet')}`")


MIN_DETECT_SIZE = 32  # pixels: below this no detector finds a face


def make_detector(kind: str = "auto", model: str | os.PathLike | None = None, detect_size: int | None = None,
                  score_threshold: float | None = None) -> Detector:
    """A detector by name: haar, yunet, or auto (YuNet when ``model`` is given or its file is in the
    cache of `emo-edge fetch yunet`, else Haar). ``detect_size`` is the longest side of the frame it
    sees (--detect-size; the detector's ``max_side``)."""
    max_side = detect_size
    if max_side is not None and max_side < MIN_DETECT_SIZE:
        raise EmoError(f"--detect-size {max_side} is too small; give at least {MIN_DETECT_SIZE} pixels (defaults: haar 480, yunet 640)")
    if model and kind == "haar":
        raise EmoError("--detector-model is a YuNet file, but the detector is haar; use --detector yunet or auto")
    if kind == "auto":
        kind, model = auto_choice(model)
    size = {"max_side": max_side} if max_side else {}
    if kind == "haar":
        return HaarDetector(**size)
    if kind == "yunet":
        return YuNetDetector(model, **size, **({"score_threshold": score_threshold} if score_threshold else {}))
    raise EmoError(f"unknown detector '{kind}'; use auto, haar or yunet")
