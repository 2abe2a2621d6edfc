"""Face crop -> model tensor. The single definition shared by training, export and inference.

Pipeline: grayscale -> expand the face box by ``margin`` on each side and make it square ->
crop (replicating edge pixels where the box leaves the frame) -> resize to ``size`` with
``cv2.INTER_AREA`` -> scale to [0, 1] -> ``(x - mean) / std``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

# How much FER2013's framing extends beyond a Haar face box, per side, as a fraction of the box
# side. Measured by running OpenCV's Haar detector on upscaled FER2013 validation images: the
# median image side is 1.02x the Haar box side, centred, so FER2013 crops are essentially Haar
# boxes (tests/test_preprocess.py checks this on the real data).
DEFAULT_MARGIN = 0.0
MIN_ALIGN_DEGREES = 1.0  # a face tilted less than this is cut without rotating


@dataclass(frozen=True)
class InputSpec:
    """What a model expects as input: a square ``channels x size x size`` normalised image."""

    size: int = 48
    channels: int = 1
    mean: float = 0.5
    std: float = 0.25
    margin: float = DEFAULT_MARGIN

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        return cls(**{k: d[k] for k in ("size", "channels", "mean", "std", "margin") if k in d})


def to_gray(image: np.ndarray) -> np.ndarray:
    """BGR, BGRA or gray uint8 image -> 2-D gray uint8 (alpha is dropped)."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    raise ValueError(f"unsupported image shape {image.shape}")


def square_box(box: tuple[int, int, int, int], margin: float) -> tuple[int, int, int]:
    """Face box ``(x, y, w, h)`` -> square ``(x0, y0, side)`` grown by ``margin`` per side."""
    x, y, w, h = box
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0
    s = max(1, int(round(side)))
    return int(round(cx - s / 2.0)), int(round(cy - s / 2.0)), s


def crop_face(gray: np.ndarray, box: tuple[int, int, int, int], spec: InputSpec, angle: float = 0.0) -> np.ndarray:
    """Cut the square, margin-expanded face region out of a gray frame, resized to ``spec.size``.

    ``angle`` (degrees, the tilt of the eye line as detectors report it) turns the face upright
    about its centre before the cut; under a degree it is ignored, so the crop is the plain one."""
    x0, y0, s = square_box(box, spec.margin)
    if abs(angle) < MIN_ALIGN_DEGREES:
        return resize_square(_padded_square(gray, x0, y0, s), spec.size)
    big = int(math.ceil(s * math.sqrt(2))) + 2  # holds the square at any angle
    o = (big - s) // 2
    patch = _padded_square(gray, x0 - o, y0 - o, big)
    m = cv2.getRotationMatrix2D((o + s / 2.0, o + s / 2.0), angle, 1.0)
    upright = cv2.warpAffine(patch, m, (big, big), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return resize_square(upright[o : o + s, o : o + s], spec.size)


def _padded_square(gray: np.ndarray, x0: int, y0: int, s: int) -> np.ndarray:
    """``gray[y0:y0+s, x0:x0+s]``, edge pixels replicated where the square leaves the frame."""
    h, w = gray.shape[:2]
    pad = max(0, -x0, -y0, x0 + s - w, y0 + s - h)
    if pad:
        gray = cv2.copyMakeBorder(gray, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        x0, y0 = x0 + pad, y0 + pad
    return gray[y0 : y0 + s, x0 : x0 + s]


def resize_square(gray: np.ndarray, size: int) -> np.ndarray:
    """Resize a gray image to ``size x size`` with INTER_AREA (no-op if already that size)."""
    if gray.shape[0] == size and gray.shape[1] == size:
        return gray
    interp = cv2.INTER_AREA if gray.shape[0] >= size else cv2.INTER_LINEAR
    return cv2.resize(gray, (size, size), interpolation=interp)


def normalize(crops: np.ndarray, spec: InputSpec) -> np.ndarray:
    """uint8 crops ``(N, H, W)`` or ``(H, W)`` -> float32 ``(N, 1, H, W)`` model input."""
    arr = np.asarray(crops)
    if arr.ndim == 2:
        arr = arr[None]
    x = arr.astype(np.float32) * np.float32(1.0 / 255.0)
    x = (x - np.float32(spec.mean)) / np.float32(spec.std)
    return x[:, None, :, :]


def faces_to_tensor(
    image: np.ndarray, boxes: list[tuple[int, int, int, int]], spec: InputSpec, angles: Optional[Sequence[float]] = None
) -> np.ndarray:
    """All faces of one frame -> one float32 batch ``(N, 1, size, size)``; ``angles`` turns each upright."""
    gray = to_gray(image)
    if not boxes:
        return np.zeros((0, spec.channels, spec.size, spec.size), np.float32)
    angles = angles if angles is not None else [0.0] * len(boxes)
    return normalize(np.stack([crop_face(gray, b, spec, a) for b, a in zip(boxes, angles)]), spec)
