"""Classification metrics in plain numpy, shared by `emo-train evaluate` and `emo-edge evaluate`."""
from __future__ import annotations

import numpy as np

from .labels import LABELS


def classification_report(y_true: np.ndarray, y_pred: np.ndarray, labels: tuple[str, ...] = LABELS) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro F1 and the confusion matrix
    (rows: true class, columns: predicted class)."""
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    k = len(labels)
    cm = np.bincount(y_true * k + y_pred, minlength=k * k).reshape(k, k)
    per_class = {}
    for i, name in enumerate(labels):
        tp, predicted, actual = int(cm[i, i]), int(cm[:, i].sum()), int(cm[i, :].sum())
        p = tp / predicted if predicted else 0.0  # plain floats: the report goes into JSON and checkpoints
        r = tp / actual if actual else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_class[name] = {"precision": round(p, 4), "recall": round(r, 4), "f1": round(f1, 4), "support": actual}
    n = int(cm.sum())
    return {
        "n": n,
        "accuracy": round(float(np.trace(cm)) / n, 4) if n else 0.0,
        "macro_f1": round(float(np.mean([v["f1"] for v in per_class.values()])), 4),
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
    }


def format_report(rep: dict, title: str = "") -> str:
    """A readable table of a :func:`classification_report`."""
    labels = rep["labels"]
    lines = []
    if title:
        lines.append(title)
    lines.append(f"accuracy {rep['accuracy'] * 100:.2f}%  macro-F1 {rep['macro_f1']:.4f}  (n={rep['n']})")
    lines.append(f"{'class':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}")
    for name in labels:
        c = rep["per_class"][name]
        lines.append(f"{name:<10}{c['precision']:>10.3f}{c['recall']:>10.3f}{c['f1']:>10.3f}{c['support']:>10d}")
    lines.append("confusion matrix (rows = true, columns = predicted):")
    lines.append(" " * 10 + "".join(f"{n[:7]:>8}" for n in labels))
    for name, row in zip(labels, rep["confusion_matrix"]):
        lines.append(f"{name:<10}" + "".join(f"{v:>8d}" for v in row))
    return "\n".join(lines)
