"""Accuracy of a classifier on labelled faces: clean, under the robustness benchmark's conditions
(:mod:`emo.edge_runtime.degrade`) and its calibration. ``emo-edge evaluate`` is a thin shell on it."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .classifier import Classifier
from .dataset import Split
from .degrade import degrade_images, summarize
from .metrics import classification_report, expected_calibration_error, format_report


def probabilities(clf: Classifier, crops: np.ndarray, batch: int = 256) -> np.ndarray:
    """Probabilities ``(N, 7)`` for uint8 crops, ``batch`` crops per call."""
    if not len(crops):
        return np.zeros((0, len(clf.labels)), np.float32)
    return np.concatenate([clf.predict_crops(crops[i : i + batch]) for i in range(0, len(crops), batch)])


def evaluate_faces(clf: Classifier, split: Split, conditions: Sequence[str] = (), batch: int = 256) -> dict:
    """The clean classification report with its calibration error (ECE, 15 bins), and, for each
    degraded condition, the accuracy, plus their mean and worst."""
    probs = probabilities(clf, split.images, batch)
    report = classification_report(split.labels, probs.argmax(1), tuple(clf.labels))
    out = {"report": report, "ece": round(expected_calibration_error(probs, split.labels), 4),
           "temperature": clf.meta.temperature, "tta": clf.tta}
    if conditions:
        acc = {"clean": report["accuracy"]}
        for name in conditions:
            pred = probabilities(clf, degrade_images(split.images, name), batch).argmax(1)
            acc[name] = round(float((pred == split.labels).mean()), 4) if len(pred) else 0.0
        s = summarize(acc, list(conditions))
        out["degraded"] = {"accuracy": acc, "mean": round(s["mean"], 4), "worst": s["worst"],
                           "worst_condition": s["worst_condition"]}
    return out


def format_evaluation(result: dict, title: str) -> str:
    """The report as text: the clean table, calibration, and the robustness table if any."""
    lines = [format_report(result["report"], title),
             f"calibration: ECE {result['ece']:.4f} (15 bins; temperature {result['temperature']:g})"]
    deg = result.get("degraded")
    if deg:
        clean = deg["accuracy"]["clean"]
        lines.append(f"{'condition':<12}{'accuracy':>10}{'change':>9}")
        for name, a in deg["accuracy"].items():
            lines.append(f"{name:<12}{a * 100:>9.2f}%{'' if name == 'clean' else f'{(a - clean) * 100:>+8.2f}'}")
        lines.append(f"{'mean':<12}{deg['mean'] * 100:>9.2f}%{(deg['mean'] - clean) * 100:>+8.2f}  (of the degraded conditions)")
        lines.append(f"{'worst':<12}{deg['worst'] * 100:>9.2f}%{(deg['worst'] - clean) * 100:>+8.2f}  ({deg['worst_condition']})")
    return "\n".join(lines)
