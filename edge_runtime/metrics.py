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


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Class probabilities of ``logits / temperature``, row by row (float64)."""
    z = np.asarray(logits, np.float64) / temperature
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, bins: int = 15) -> float:
    """ECE: the gap between confidence (top probability) and accuracy, averaged over ``bins``
    equal-width confidence bins weighted by how many faces fall in each."""
    probs = np.asarray(probs, np.float64)
    if not len(probs):
        return 0.0
    conf, hit = probs.max(1), (probs.argmax(1) == np.asarray(y_true)).astype(np.float64)
    idx = np.minimum((conf * bins).astype(np.int64), bins - 1)
    gap = np.abs(np.bincount(idx, conf, bins) - np.bincount(idx, hit, bins))
    return float(gap.sum() / len(probs))


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The temperature T that minimises the cross-entropy of softmax(logits / T) on labelled faces
    (a golden-section search over log T in [0.05, 20]; the loss is convex in 1/T)."""
    logits, y = np.asarray(logits, np.float64), np.asarray(y_true, np.int64)

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))

    lo, hi = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(b)
    return float(np.exp((lo + hi) / 2))
