"""emo edge runtime: face detection + emotion classification with onnxruntime and OpenCV.

This package is what a Raspberry Pi installs. It never imports torch or onnx.
"""
from __future__ import annotations

__version__ = "0.1.0"

from .errors import EmoError
from .labels import LABELS

__all__ = ["EmoError", "LABELS", "__version__", "Recognizer", "Face", "Classifier"]


def __getattr__(name: str):  # lazy, so `import emo.edge_runtime` stays cheap
    if name in ("Recognizer", "Face"):
        from . import recognizer

        return getattr(recognizer, name)
    if name == "Classifier":
        from .classifier import Classifier

        return Classifier
    raise AttributeError(name)
