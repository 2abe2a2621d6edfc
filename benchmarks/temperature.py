#!/usr/bin/env python3
"""Honest confidence on a camera's faces: for each model, the softmax temperature fitted on clean
labelled faces alone and on them plus a spoiled copy of each (what `emo-export` does), and the
expected calibration error (15 bins) each gives on the clean faces and on the spoiled copies.

    python benchmarks/temperature.py --data ../shared/data/fer2013                 # the bundled ladder
    python benchmarks/temperature.py --data ... mine=path/to/model.int8.onnx

The spoiled copies are one random camera per face (`random_degrade`, as training draws them),
seeded by --seed. The temperature stored in each model is not used: both are fitted here, on the
same faces the errors are measured on, so the two rows compare like with like.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from emo.edge_runtime.bench import device_fingerprint, fingerprint_md, save_result
from emo.edge_runtime.classifier import Classifier
from emo.edge_runtime.dataset import load_split
from emo.edge_runtime.degrade import spoiled_copies
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.metrics import expected_calibration_error, fit_temperature, softmax
from emo.edge_runtime.preprocess import normalize

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ladder import parse_models  # noqa: E402  (the ladder's LABEL=PATH parsing)

RESULTS = Path("benchmarks") / "results"


def measure(clf: Classifier, clean: np.ndarray, spoiled: np.ndarray, labels: np.ndarray) -> dict:
    def logits(images: np.ndarray) -> np.ndarray:
        return np.concatenate([clf.logits(normalize(images[i : i + 256], clf.spec)) for i in range(0, len(images), 256)])

    c, s = logits(clean), logits(spoiled)
    fits = {"clean": fit_temperature(c, labels), "both": fit_temperature(np.concatenate([c, s]), np.concatenate([labels, labels]))}
    return {how: {"temperature": round(t, 4), "ece_clean": round(expected_calibration_error(softmax(c, t), labels), 4),
                  "ece_spoiled": round(expected_calibration_error(softmax(s, t), labels), 4)} for how, t in fits.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="bundled names or LABEL=PATH (default: the bundled ladder)")
    ap.add_argument("--data", required=True, help="labelled faces: a FER2013 root, its CSV, or a folder of <emotion>/ images")
    ap.add_argument("--split", default="val", help="the split of a FER2013 root or CSV (default: val, PublicTest)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the spoiled copies")
    ap.add_argument("--out", type=Path, default=RESULTS / "temperature.json", help="JSON result; a .md table is written beside it")
    a = ap.parse_args()
    try:
        models = parse_models(a.models)
        faces = load_split(a.data, a.split)
        spoiled = spoiled_copies(faces.images, a.seed)
        rows = {label: measure(Classifier(path, threads=1), faces.images, spoiled, faces.labels) for label, path in models.items()}
    except EmoError as e:
        print(f"temperature: error: {e}", file=sys.stderr)
        return 2
    fp = device_fingerprint()
    lines = ["# Temperature fitted on clean faces alone, or on them and a spoiled copy of each", "", fingerprint_md(fp), "",
             f"Faces: {a.split} of {a.data} (n={len(faces.labels)}), int8, and one spoiled copy of each (seed {a.seed}). "
             "ECE: 15 bins.", "",
             "| model | temperature: clean / both | ECE on clean faces: clean / both | ECE on spoiled copies: clean / both |",
             "|---|---|---|---|"]
    for label, r in rows.items():
        c, b = r["clean"], r["both"]
        lines.append(f"| {label} | {c['temperature']:.3f} / {b['temperature']:.3f} | {c['ece_clean']:.4f} / {b['ece_clean']:.4f} | "
                     f"{c['ece_spoiled']:.4f} / {b['ece_spoiled']:.4f} |")
    md = "\n".join(lines) + "\n"
    save_result({"device": fp, "data": str(a.data), "split": a.split, "n": int(len(faces.labels)), "seed": a.seed, "models": rows},
                a.out, md, "temperature")
    return 0


if __name__ == "__main__":
    sys.exit(main())
