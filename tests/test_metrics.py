"""classification_report: accuracy, per-class precision/recall/F1, macro F1, confusion matrix."""
import json

import pytest

from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.metrics import classification_report, format_report


def test_classification_report_by_hand():
    y_true = [0, 0, 0, 3, 3, 6]
    y_pred = [0, 0, 3, 3, 3, 0]
    r = classification_report(y_true, y_pred)
    assert r["n"] == 6 and r["accuracy"] == round(4 / 6, 4) and r["labels"] == list(LABELS)
    cm = r["confusion_matrix"]  # rows true, columns predicted
    assert cm[0][0] == 2 and cm[0][3] == 1 and cm[3][3] == 2 and cm[6][0] == 1 and sum(map(sum, cm)) == 6
    angry, happy, neutral, fear = (r["per_class"][c] for c in ("angry", "happy", "neutral", "fear"))
    assert (angry["precision"], angry["recall"], angry["support"]) == (round(2 / 3, 4), round(2 / 3, 4), 3)
    assert (happy["precision"], happy["recall"], happy["f1"]) == (round(2 / 3, 4), 1.0, 0.8)
    assert neutral == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert fear == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}  # absent class: zeros, no division error
    assert r["macro_f1"] == pytest.approx(sum(c["f1"] for c in r["per_class"].values()) / 7, abs=1e-4)
    # plain Python numbers only: the report goes into JSON and weights_only checkpoints
    assert all(type(v) in (int, float) for c in r["per_class"].values() for v in c.values())
    json.dumps(r)
    assert "confusion matrix" in format_report(r, "title")


def test_empty_and_perfect():
    assert classification_report([], [])["accuracy"] == 0.0
    r = classification_report(list(range(7)), list(range(7)))
    assert r["accuracy"] == 1.0 and r["macro_f1"] == 1.0
