#!/usr/bin/env python3
"""Accuracy in the wild: each model on clean faces, under the ten degraded conditions of
`emo-edge evaluate --degrade all`, with and without mirror averaging (--tta), and against face
height (12 to 48 px), as one table, a JSON file and a chart of accuracy against face height.

    python benchmarks/robustness.py --data ../shared/data/fer2013                  # the bundled ladder
    python benchmarks/robustness.py --data ... old-default=path/to/emo_default.int8.onnx default

Models are bundled names (tiny, default, large) or LABEL=PATH. The faces are the labelled split
given by --split (PublicTest by default; use your own labelled folder of <emotion>/ images the
same way). The chart needs matplotlib (the train extra); without it only the tables are written.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from emo.edge_runtime.bench import device_fingerprint, fingerprint_md, save_result
from emo.edge_runtime.classifier import Classifier
from emo.edge_runtime.dataset import load_split
from emo.edge_runtime.degrade import CONDITIONS, degrade_images, summarize
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.evaluation import probabilities
from emo.edge_runtime.metrics import expected_calibration_error

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ladder import parse_models, save_figure  # noqa: E402  (the ladder's LABEL=PATH parsing and chart writing)

RESULTS = Path("benchmarks") / "results"
HEIGHTS = (12, 14, 16, 20, 24, 28, 32, 40, 48)


def score(clf: Classifier, images: np.ndarray, labels: np.ndarray, names: list[str]) -> dict:
    """Accuracy per condition name (``clean``, a condition, or ``faceN``)."""
    return {n: float((probabilities(clf, degrade_images(images, n) if n != "clean" else images).argmax(1) == labels).mean())
            for n in names}


def per_face_ms(clf: Classifier, images: np.ndarray, runs: int = 200) -> float:
    """Median time per face of one call on one face (what a live camera does per face)."""
    x = images[:1]
    for _ in range(20):
        clf.predict_crops(x)
    t = []
    for _ in range(runs):
        t0 = time.perf_counter()
        clf.predict_crops(x)
        t.append(time.perf_counter() - t0)
    return float(np.median(t) * 1e3)


def measure(label: str, path: Path, images: np.ndarray, labels: np.ndarray, log) -> dict:
    row: dict = {"label": label, "path": str(path), "bytes": path.stat().st_size}
    for tta in (False, True):
        clf = Classifier(path, tta=tta)
        acc = score(clf, images, labels, ["clean", *CONDITIONS])
        s = summarize(acc, CONDITIONS)
        key = "tta" if tta else "plain"
        row[key] = {"accuracy": acc, "mean": s["mean"], "worst": s["worst"], "worst_condition": s["worst_condition"],
                    "ece": expected_calibration_error(probabilities(clf, images), labels), "per_face_ms": per_face_ms(clf, images)}
        log(f"{label}{' --tta' if tta else ''}: clean {acc['clean']:.2%}, mean {s['mean']:.2%}, worst {s['worst']:.2%} ({s['worst_condition']})")
    row["temperature"] = Classifier(path).meta.temperature
    row["heights"] = score(Classifier(path), images, labels, [f"face{h}" for h in HEIGHTS])
    return row


def markdown(rows: list[dict], fp: dict, split: str, n: int) -> str:
    md = "# Robustness: accuracy on degraded faces\n\n" + fingerprint_md(fp)
    md += f"\nFaces: {split} (n={n}), int8. Conditions as defined in `edge_runtime/degrade.py`.\n\n"
    md += "| model | clean | " + " | ".join(CONDITIONS) + " | mean | worst | ECE |\n"
    md += "|---|" + "---|" * (len(CONDITIONS) + 4) + "\n"
    for r in rows:
        for key, tag in (("plain", ""), ("tta", " --tta")):
            p = r[key]
            md += (f"| {r['label']}{tag} | {p['accuracy']['clean']:.2%} | "
                   + " | ".join(f"{p['accuracy'][c]:.2%}" for c in CONDITIONS)
                   + f" | **{p['mean']:.2%}** | {p['worst']:.2%} ({p['worst_condition']}) | {p['ece']:.3f} |\n")
    md += "\nMirror averaging (--tta): gain and cost per face (1 thread, one face per call, same run)\n\n"
    md += "| model | clean gain | mean-degraded gain | ms per face | with --tta | ratio |\n|---|---|---|---|---|---|\n"
    for r in rows:
        p, t = r["plain"], r["tta"]
        md += (f"| {r['label']} | {(t['accuracy']['clean'] - p['accuracy']['clean']) * 100:+.2f} | {(t['mean'] - p['mean']) * 100:+.2f} | "
               f"{p['per_face_ms']:.3f} | {t['per_face_ms']:.3f} | {t['per_face_ms'] / p['per_face_ms']:.2f}x |\n")
    md += "\nAccuracy against face height (the face shrunk to N px with INTER_AREA, back to 48 with INTER_LINEAR)\n\n"
    md += "| model | " + " | ".join(f"{h} px" for h in HEIGHTS) + " |\n|---|" + "---|" * len(HEIGHTS) + "\n"
    for r in rows:
        md += f"| {r['label']} | " + " | ".join(f"{r['heights'][f'face{h}']:.2%}" for h in HEIGHTS) + " |\n"
    return md


def chart(rows: list[dict], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("robustness: matplotlib is not installed (pip install 'emo-fer[train]'); no chart written", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in rows:
        style = "--" if r["label"].startswith("old") else "-"
        ax.plot(HEIGHTS, [r["heights"][f"face{h}"] * 100 for h in HEIGHTS], style, marker="o", ms=3, label=r["label"])
    ax.set_xlabel("face height, px (in the camera frame)")
    ax.set_ylabel("accuracy, % (int8)")
    ax.set_title(title, fontsize=9)
    ax.set_xticks(HEIGHTS)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    save_figure(fig, path)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="bundled names or LABEL=PATH (default: every bundled model)")
    ap.add_argument("--data", required=True, help="labelled faces: a FER2013 root, fer2013.csv or a folder of <emotion>/ images")
    ap.add_argument("--split", default="val", help="train, val (PublicTest) or test (PrivateTest) for a FER2013 root or CSV")
    ap.add_argument("--limit", type=int, default=0, help="use the first N faces only (a quick look; 0: all)")
    ap.add_argument("--out", type=Path, default=RESULTS / f"robustness-{os.uname().nodename}.json")
    a = ap.parse_args(argv)
    log = lambda s: print(f"robustness: {s}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        models = parse_models(a.models)
        sp = load_split(a.data, a.split, 48, skip_blank=False)
    except EmoError as e:
        print(f"robustness: error: {e}", file=sys.stderr)
        return 2
    images, labels = (sp.images[: a.limit], sp.labels[: a.limit]) if a.limit else (sp.images, sp.labels)
    t0 = time.time()
    rows = [measure(k, p, images, labels, log) for k, p in models.items()]
    fp = device_fingerprint([1])
    result = {"benchmark": "robustness", "device": fp, "data": a.data, "split": a.split, "n": int(len(labels)),
              "conditions": list(CONDITIONS), "heights": list(HEIGHTS), "rows": rows, "seconds": time.time() - t0}
    md = markdown(rows, fp, a.split, len(labels))
    png = a.out.with_suffix(".png")
    if chart(rows, png, f"accuracy against face height, FER2013 {a.split} (n={len(labels)})"):
        result["chart"] = str(png)
        md += f"\nChart: `{png.name}`\n"
    save_result(result, a.out, md, "robustness")
    return 0


if __name__ == "__main__":
    sys.exit(main())
