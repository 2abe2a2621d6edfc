"""How a real camera spoils a face, on the 48x48 grayscale crop: the fixed conditions of the
robustness benchmark (``emo-edge evaluate --degrade``) and the random mix the trainer learns from.

The benchmark conditions are fixed definitions, seeded where random, so figures compare across
models and machines:

=========  ==============================================================================
dark       pixel x 0.5
bright     pixel x 1.5, clipped at 255
blur       Gaussian blur, sigma 1
motion     horizontal motion blur: a 1x5 box kernel
jpeg       JPEG quality 20, encoded and decoded
face24     INTER_AREA down to 24 px, INTER_LINEAR back up
face16     the same at 16 px (``faceN`` works for any N, e.g. the face-height chart's 12)
noise      Gaussian noise, sigma 10 grey levels (seeded)
rot+15     rotation by +15 degrees (counter-clockwise) about the centre, reflected border
rot-15     the same, -15 degrees
=========  ==============================================================================

:func:`random_degrade` is the training augmentation: a random distance, blur, noise, lighting
and JPEG quality per face, all drawn from the caller's generator.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import cv2
import numpy as np

from .errors import EmoError

CONDITIONS = ("dark", "bright", "blur", "motion", "jpeg", "face24", "face16", "noise", "rot+15", "rot-15")
NOISE_SEED = 20261204  # the benchmark's noise is the same draw for every model


def _clip8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def scale_pixels(img: np.ndarray, factor: float) -> np.ndarray:
    return _clip8(img.astype(np.float32) * factor)


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)


def motion_blur(img: np.ndarray, length: int, angle: float = 0.0) -> np.ndarray:
    """A line kernel ``length`` pixels long at ``angle`` degrees (0: horizontal, the 1xN box)."""
    if angle == 0.0:
        return cv2.blur(img, (length, 1), borderType=cv2.BORDER_REFLECT_101)
    k = np.zeros((length, length), np.float32)
    k[length // 2, :] = 1.0
    m = cv2.getRotationMatrix2D(((length - 1) / 2.0, (length - 1) / 2.0), angle, 1.0)
    k = cv2.warpAffine(k, m, (length, length))
    return cv2.filter2D(img, -1, k / max(k.sum(), 1e-6), borderType=cv2.BORDER_REFLECT_101)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV encodes any uint8 gray image
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def face_height(img: np.ndarray, px: int) -> np.ndarray:
    """The face as a camera sees it ``px`` pixels high: INTER_AREA down, INTER_LINEAR back up."""
    h, w = img.shape[:2]
    if px >= h:
        return img
    small = cv2.resize(img, (max(1, round(px * w / h)), px), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def add_noise(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return _clip8(img.astype(np.float32) + rng.normal(0.0, sigma, img.shape).astype(np.float32))


def rotate(img: np.ndarray, degrees: float) -> np.ndarray:
    h, w = img.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), degrees, 1.0)
    return cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def gamma(img: np.ndarray, g: float) -> np.ndarray:
    return _clip8(255.0 * (img.astype(np.float32) / 255.0) ** g)


def contrast(img: np.ndarray, c: float) -> np.ndarray:
    f = img.astype(np.float32)
    return _clip8((f - f.mean()) * c + f.mean())


def _condition(name: str) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    fixed: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
        "clean": lambda im, r: im,
        "dark": lambda im, r: scale_pixels(im, 0.5),
        "bright": lambda im, r: scale_pixels(im, 1.5),
        "blur": lambda im, r: gaussian_blur(im, 1.0),
        "motion": lambda im, r: motion_blur(im, 5),
        "jpeg": lambda im, r: jpeg(im, 20),
        "noise": lambda im, r: add_noise(im, 10.0, r),
        "rot+15": lambda im, r: rotate(im, 15.0),
        "rot-15": lambda im, r: rotate(im, -15.0),
    }
    if name in fixed:
        return fixed[name]
    m = re.fullmatch(r"face(\d+)", name)
    if m and 4 <= int(m.group(1)) <= 512:
        px = int(m.group(1))
        return lambda im, r: face_height(im, px)
    raise EmoError(f"unknown degradation '{name}'; choose from all, {', '.join(CONDITIONS)} (or faceN, N in 4..512)")


def parse_conditions(spec: str) -> list[str]:
    """``all`` or a comma-separated list of condition names -> the names, checked."""
    names = list(CONDITIONS) if spec.strip() == "all" else [s.strip() for s in spec.split(",") if s.strip()]
    if not names:
        raise EmoError("--degrade is empty; give all or a list such as blur,jpeg,face16")
    for n in names:
        _condition(n)
    return names


def degrade_images(images: np.ndarray, name: str, seed: int = NOISE_SEED) -> np.ndarray:
    """uint8 faces ``(N, H, W)`` under benchmark condition ``name`` (a new array)."""
    fn = _condition(name)
    rng = np.random.default_rng(seed)
    return np.stack([fn(im, rng) for im in images]) if len(images) else images.copy()


def random_degrade(img: np.ndarray, rng: np.random.Generator, min_px: int = 12) -> np.ndarray:
    """One random camera: lighting (gamma, contrast), optics (Gaussian or motion blur), distance
    (down to ``min_px``..full height and back up), sensor noise, then JPEG at quality 10-95. Each
    step happens with its own probability, so some faces get one spoil and some several."""
    out = img
    if rng.random() < 0.3:
        out = gamma(out, float(np.exp(rng.uniform(-0.6, 0.6))))
    if rng.random() < 0.3:
        out = contrast(out, float(rng.uniform(0.5, 1.3)))
    r = rng.random()
    if r < 0.25:
        out = gaussian_blur(out, float(rng.uniform(0.4, 1.6)))
    elif r < 0.45:
        out = motion_blur(out, int(rng.integers(3, 8)), float(rng.uniform(-30, 30)) if rng.random() < 0.5 else 0.0)
    if rng.random() < 0.5:
        out = face_height(out, int(rng.integers(min_px, img.shape[0] + 1)))
    if rng.random() < 0.3:
        out = add_noise(out, float(rng.uniform(2.0, 15.0)), rng)
    if rng.random() < 0.4:
        out = jpeg(out, int(rng.integers(10, 96)))
    return out


def spoiled_copies(images: np.ndarray, seed) -> np.ndarray:
    """Each face spoiled once by a random camera (:func:`random_degrade`), reproducibly from ``seed``."""
    rng = np.random.default_rng(seed)
    return np.stack([random_degrade(im, rng) for im in images]) if len(images) else images.copy()


def summarize(accuracies: dict[str, float], names: Sequence[str]) -> dict:
    """``{"mean": .., "worst": .., "worst_condition": ..}`` over the degraded conditions ``names``."""
    vals = {n: accuracies[n] for n in names}
    worst = min(vals, key=vals.get)
    return {"mean": float(np.mean(list(vals.values()))), "worst": vals[worst], "worst_condition": worst}
