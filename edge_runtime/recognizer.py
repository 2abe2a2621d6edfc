"""The Python API: ``Recognizer(model).process(frame)`` -> a list of :class:`Face`
(``process_timed(frame)``: the faces and the time each step took, as the frame loop reports them).

Steps per frame: detect faces (every ``detect_every`` frames; between detections the tracked
boxes are reused), crop and normalise all faces, classify them as one batch, then match them to
tracks (by place, size and look) and smooth their scores.

Input contract of ``process``: a numpy ``uint8`` image, ``(H, W, 3)`` BGR as OpenCV reads it,
``(H, W, 4)`` BGRA or ``(H, W)`` / ``(H, W, 1)`` gray, at least 1x1. Anything else raises
``TypeError`` (not an array, another dtype) or ``ValueError`` (another shape, empty).

Threads: a Recognizer may be shared; ``process`` calls are serialised by a lock, so threads never
mix up each other's boxes or scores. Tracking state (track ids, ``smooth``, ``detect_every``)
follows the order of the calls, so give each video stream its own Recognizer.
"""
from __future__ import annotations

import os
import threading
import time
import warnings
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from .appearance import look
from .classifier import Classifier
from .faces import make_detector
from .preprocess import faces_to_tensor, to_gray
from .tracking import IouTracker


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in pixels of the frame
    track: int
    emotion: str  # top emotion
    scores: dict[str, float]  # percent per emotion, summing to 100
    look: Optional[np.ndarray] = field(default=None, repr=False, compare=False)  # its track's appearance.look

    @property
    def confidence(self) -> float:
        return self.scores[self.emotion]

    def to_dict(self) -> dict:
        return {"box": list(self.box), "track": self.track, "emotion": self.emotion,
                "confidence": round(self.confidence, 2), "scores": self.scores}


@dataclass
class Processed:
    """What :meth:`Recognizer.process_timed` returns: the faces, and milliseconds per step."""

    faces: list[Face]
    timings: dict[str, float]  # detect_ms, preprocess_ms, classify_ms, track_ms


@dataclass
class Recognizer:
    """Faces and their emotions in BGR frames.

    >>> rec = Recognizer()                      # bundled default model, Haar detector
    >>> faces = rec.process(cv2.imread("examples/astronaut.png"))
    >>> faces[0].emotion, faces[0].scores["happy"]
    """

    model: str | os.PathLike | None = None
    detector: str = "auto"  # YuNet when `emo-edge fetch yunet` put it in the cache (or detector_model), else Haar
    detector_model: str | None = None
    threads: int = 1
    spin: bool = True
    detect_every: int = 1
    smooth: float = 0.0
    detect_size: int | None = None  # longest side of the frame the detector sees (--detect-size)
    align: bool = True  # turn faces upright by their eye line, where the detector sees the eyes (YuNet)
    tta: bool = False  # classify each face and its mirror image in one call, scores averaged
    detect_max_side: int | None = None  # deprecated: the old name of detect_size

    def __post_init__(self):
        if self.detect_max_side is not None:
            warnings.warn("Recognizer(detect_max_side=...) is now detect_size", DeprecationWarning, stacklevel=3)
            if self.detect_size is None:
                self.detect_size = self.detect_max_side
        self.classifier = Classifier(self.model, threads=self.threads, spin=self.spin, tta=self.tta)
        self.face_detector = make_detector(self.detector, self.detector_model, self.detect_size)
        self.tracker = IouTracker(smooth=self.smooth)
        self.labels = self.classifier.labels
        self._n = 0
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget tracks (call between unrelated images)."""
        with self._lock:
            self.tracker = IouTracker(smooth=self.smooth)
            self._n = 0

    def process(self, frame: np.ndarray) -> list[Face]:
        """Faces in one frame (see the module docstring for what ``frame`` may be)."""
        return self.process_timed(frame).faces

    def process_timed(self, frame: np.ndarray) -> Processed:
        """Faces in one frame, and how long each step took (what the frame loop reports)."""
        check_frame(frame)
        with self._lock:
            return self._process(frame)

    def _process(self, frame: np.ndarray) -> Processed:
        t0 = time.perf_counter()
        gray = to_gray(frame)
        if self._n % max(1, self.detect_every) == 0:
            det = self.face_detector
            found = det.detect_faces(gray if det.wants_gray else frame)
            boxes, angles = [d.box for d in found], [d.angle if self.align else 0.0 for d in found]
            looks = [look(frame, b) for b in boxes]
        else:
            boxes, angles, looks = self.tracker.live_boxes(), self.tracker.live_angles(), None
        self._n += 1
        t1 = time.perf_counter()
        x = faces_to_tensor(gray, boxes, self.classifier.spec, angles)
        t2 = time.perf_counter()
        probs = self.classifier.predict(x)
        t3 = time.perf_counter()
        tracks = self.tracker.update(boxes, probs, angles, looks)
        faces = []
        for box, tr in zip(boxes, tracks):
            p = tr.scores
            pct = {name: round(float(v) * 100, 2) for name, v in zip(self.labels, p)}
            faces.append(Face(tuple(int(v) for v in box), tr.id, self.labels[int(np.argmax(p))], pct, tr.look))
        return Processed(faces, {"detect_ms": (t1 - t0) * 1e3, "preprocess_ms": (t2 - t1) * 1e3,
                                 "classify_ms": (t3 - t2) * 1e3, "track_ms": (time.perf_counter() - t3) * 1e3})


def check_frame(frame) -> None:
    """Raise TypeError/ValueError, naming the contract, for anything ``process`` cannot take."""
    want = "a uint8 BGR image (H, W, 3), BGRA (H, W, 4) or gray (H, W) numpy array, as cv2.imread returns"
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"process() takes {want}; got {type(frame).__name__}")
    if frame.dtype != np.uint8:
        raise TypeError(f"process() takes {want}; got dtype {frame.dtype} (convert with np.clip(x, 0, 255).astype(np.uint8))")
    if not (frame.ndim == 2 or (frame.ndim == 3 and frame.shape[2] in (1, 3, 4))):
        raise ValueError(f"process() takes {want}; got shape {frame.shape}")
    if frame.size == 0:
        raise ValueError(f"process() takes {want}; got an empty array of shape {frame.shape}")
