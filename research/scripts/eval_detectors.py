#!/usr/bin/env python3
"""Face detection quality per detector setting, and what turning faces upright does.

1. Scenes: 1280x720 frames (a 720p camera) built from real photos: one to three photos per
   frame, scaled so their faces are 36 to 200 px high, on a background cut from a non-face
   image. Reference boxes come from the given YuNet run at full resolution on each photo alone
   (the counts are checked against the photos' known face counts). A detection matches a
   reference face at IoU >= 0.5 of the boxes made square (Haar boxes are square, YuNet's are
   taller; squaring compares the faces, not the box styles).
2. Negatives: scikit-image's bundled non-face images (a cat, coffee, a rocket, coins, ...):
   every detection there is a false face.
3. Alignment: FER2013 validation faces and the photos, rotated by -30..30 degrees; how often the
   top emotion stays the one of the upright face, with and without --align, and the cost of an
   aligned crop per face.

    python research/scripts/eval_detectors.py --photos ../shared/data/photos --yunet ../shared/models/face_detection_yunet.onnx --fer ../shared/data/fer2013
    python research/scripts/eval_detectors.py ... --quick
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from emo.edge_runtime.bench import device_fingerprint, fingerprint_md, save_result
from emo.edge_runtime.faces import HaarDetector, YuNetDetector
from emo.edge_runtime.files import read_image
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.preprocess import InputSpec, crop_face
from emo.edge_runtime.recognizer import Recognizer

# Photos with whole, unambiguous faces, and how many each holds (../shared/data/photos/SOURCE.md).
PHOTOS = {"obama.jpg": 1, "obama_small.jpg": 1, "biden.jpg": 1, "biden2.jpg": 1, "two_people.jpg": 2,
          "obama_and_biden.jpg": 2, "alex-lacamoire.png": 1, "lin-manuel-miranda.png": 1, "kit_with_rose.jpg": 2,
          "john2.jpeg": 1, "johnsnow_test1.jpg": 1, "astronaut.png": 1}
NEGATIVES = ("chelsea", "coffee", "rocket", "horse", "coins", "hubble_deep_field", "immunohistochemistry", "logo", "moon",
             "page", "text", "brick", "grass", "gravel", "retina", "colorwheel", "clock", "cell")
HAAR = [(size, nb) for size in (320, 480, 640, 960) for nb in (3, 5)]
YUNET = [(size, thr) for size in (320, 480, 640, 960) for thr in (0.5, 0.7, 0.9)]
ANGLES = (-30, -15, 15, 30)


def square(b):
    x, y, w, h = b
    s = max(w, h)
    return (x + w / 2 - s / 2, y + h / 2 - s / 2, s, s)


def iou(a, b) -> float:
    a, b = square(a), square(b)
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def matches(truth: list, found: list) -> int:
    """Greedy one-to-one matching at IoU >= 0.5."""
    pairs = sorted(((iou(t, f), i, j) for i, t in enumerate(truth) for j, f in enumerate(found)), reverse=True)
    ti, fj, n = set(), set(), 0
    for v, i, j in pairs:
        if v < 0.5:
            break
        if i not in ti and j not in fj:
            ti.add(i), fj.add(j)
            n += 1
    return n


def reference_faces(photos: Path, yunet: Path) -> dict:
    ref = YuNetDetector(yunet, max_side=4096, score_threshold=0.8)
    out = {}
    for name, count in PHOTOS.items():
        img = read_image(photos / name)
        boxes = sorted(ref.detect(img), key=lambda b: -b[2] * b[3])
        if len(boxes) < count:
            raise SystemExit(f"eval_detectors: the reference finds {len(boxes)} faces in {name}, not {count}")
        out[name] = (img, boxes[:count])
    return out


def negatives() -> list[np.ndarray]:
    import skimage.data as data

    out = []
    for name in NEGATIVES:
        img = np.asarray(getattr(data, name)())
        if img.dtype != np.uint8:
            img = (255 * (img.astype(float) / max(1e-9, float(img.max())))).astype(np.uint8)
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else cv2.cvtColor(img[:, :, :3], cv2.COLOR_RGB2BGR)
        out.append(img)
    return out


def make_scenes(ref: dict, backgrounds: list, n: int, seed: int = 0) -> list[tuple[np.ndarray, list]]:
    rng = np.random.default_rng(seed)
    names = list(ref)
    scenes = []
    for k in range(n):
        bg = backgrounds[k % len(backgrounds)]
        canvas = cv2.GaussianBlur(cv2.resize(bg, (1280, 720)), (0, 0), 3)
        placed, truth = [], []
        for name in rng.choice(names, size=int(rng.integers(1, 4)), replace=False):
            img, boxes = ref[name]
            face_h = float(np.exp(rng.uniform(np.log(36), np.log(200))))
            s = face_h / max(b[3] for b in boxes)
            w, h = int(img.shape[1] * s), int(img.shape[0] * s)
            if w >= 1280 or h >= 720 or w < 8 or h < 8:
                continue
            for _ in range(50):
                x, y = int(rng.integers(0, 1280 - w)), int(rng.integers(0, 720 - h))
                if all(x + w <= px or px + pw <= x or y + h <= py or py + ph <= y for px, py, pw, ph in placed):
                    canvas[y:y + h, x:x + w] = cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA)
                    placed.append((x, y, w, h))
                    truth += [(x + bx * s, y + by * s, bw * s, bh * s) for bx, by, bw, bh in boxes]
                    break
        scenes.append((canvas, truth))
    return scenes


def evaluate(det, scenes, negs) -> dict:
    found_n, truth_n, extra, times, sizes = 0, 0, 0, [], {"<64": [0, 0], "64-128": [0, 0], ">128": [0, 0]}
    for img, truth in scenes:
        t0 = time.perf_counter()
        found = det.detect(img)
        times.append(time.perf_counter() - t0)
        m = matches(truth, found)
        found_n, truth_n, extra = found_n + m, truth_n + len(truth), extra + len(found) - m
        for t in truth:  # recall by face height
            key = "<64" if t[3] < 64 else "64-128" if t[3] <= 128 else ">128"
            sizes[key][0] += matches([t], found)
            sizes[key][1] += 1
    false_faces, neg_times = [], []
    for img in negs:
        t0 = time.perf_counter()
        false_faces.append(len(det.detect(img)))
        neg_times.append(time.perf_counter() - t0)
    return {"recall": found_n / max(1, truth_n), "faces": truth_n,
            "recall_by_height": {k: (v[0] / v[1] if v[1] else None) for k, v in sizes.items()},
            "unmatched_in_scenes": extra / len(scenes), "false_faces_per_negative": float(np.mean(false_faces)),
            "negatives_with_false_faces": int(sum(1 for f in false_faces if f)),
            "ms_per_720p_frame": float(np.median(times) * 1e3), "ms_per_negative": float(np.median(neg_times) * 1e3)}


def rotated(img: np.ndarray, angle: float) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), (w, h), borderMode=cv2.BORDER_REPLICATE)


def alignment(faces: list[np.ndarray], yunet: Path, min_confidence: float) -> dict:
    """Agreement of the top emotion on rotated faces with the upright one, with and without --align."""
    recs = {a: Recognizer(detector="yunet", detector_model=str(yunet), align=a) for a in (True, False)}
    agree = {f"{name}_{ang}": [] for name in ("align", "no_align") for ang in ANGLES}
    used = 0
    for img in faces:
        up = recs[True].process(img)
        recs[True].reset()
        if len(up) != 1 or up[0].confidence < min_confidence:
            continue
        used += 1
        for ang in ANGLES:
            r = rotated(img, ang)
            for a, name in ((True, "align"), (False, "no_align")):
                got = recs[a].process(r)
                recs[a].reset()
                top = max(got, key=lambda f: f.box[2] * f.box[3]).emotion if got else None
                agree[f"{name}_{ang}"].append(top == up[0].emotion)
    return {"faces": used, "agreement": {k: (float(np.mean(v)) if v else None) for k, v in agree.items()}}


def fer_faces(fer: Path, per_class: int) -> list[np.ndarray]:
    """FER2013 validation faces, upscaled into a 320x320 frame (YuNet needs some context)."""
    out = []
    for label in LABELS:
        for p in sorted((fer / "val" / label).glob("*.jpg"))[:per_class]:
            g = cv2.resize(read_image(p, cv2.IMREAD_GRAYSCALE), (160, 160), interpolation=cv2.INTER_CUBIC)
            out.append(cv2.cvtColor(cv2.copyMakeBorder(g, 80, 80, 80, 80, cv2.BORDER_REPLICATE), cv2.COLOR_GRAY2BGR))
    return out


def crop_cost_ms() -> dict:
    g = cv2.cvtColor(cv2.imread(str(Path(__file__).resolve().parents[2] / "examples" / "astronaut.png")), cv2.COLOR_BGR2GRAY)
    spec, out = InputSpec(), {}
    for name, angle in (("plain", 0.0), ("aligned", 12.0)):
        runs = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(500):
                crop_face(g, (176, 66, 96, 96), spec, angle)
            runs.append((time.perf_counter() - t0) / 500 * 1e3)
        out[name] = float(np.median(runs))
    out["alignment_extra"] = out["aligned"] - out["plain"]
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photos", type=Path, required=True)
    ap.add_argument("--yunet", type=Path, required=True, help="a YuNet .onnx (emo-edge fetch yunet, or a local copy)")
    ap.add_argument("--fer", type=Path, help="a FER2013 root, for the alignment check on FER faces")
    ap.add_argument("--scenes", type=int, default=60)
    ap.add_argument("--quick", action="store_true", help="8 scenes, 4 negatives, 2 settings per detector")
    ap.add_argument("--out", type=Path, default=Path("research/results") / f"detectors-{os.uname().nodename}.json")
    a = ap.parse_args(argv)
    cv2.setNumThreads(1)
    log = lambda s: print(f"eval_detectors: {s}", file=sys.stderr, flush=True)  # noqa: E731
    ref = reference_faces(a.photos, a.yunet)
    negs = negatives()
    scenes = make_scenes(ref, negs, 8 if a.quick else a.scenes)
    negs = negs[:4] if a.quick else negs
    haar, yunet = (HAAR[2:4], YUNET[4:6]) if a.quick else (HAAR, YUNET)
    rows = []
    for size, nb in haar:
        rows.append({"detector": "haar", "detect_size": size, "setting": f"min neighbours {nb}",
                     **evaluate(HaarDetector(max_side=size, min_neighbors=nb), scenes, negs)})
        log(str(rows[-1]))
    for size, thr in yunet:
        rows.append({"detector": "yunet", "detect_size": size, "setting": f"score >= {thr}",
                     **evaluate(YuNetDetector(a.yunet, max_side=size, score_threshold=thr), scenes, negs)})
        log(str(rows[-1]))
    photos = [img for img, _ in ref.values()]
    align = {"photos": alignment(photos if not a.quick else photos[:4], a.yunet, 60.0)}
    if a.fer and not a.quick:
        align["fer_val"] = alignment(fer_faces(a.fer, 30), a.yunet, 0.0)
    cost = crop_cost_ms()
    result = {"benchmark": "detectors", "quick": a.quick, "device": device_fingerprint([1]),
              "scenes": len(scenes), "faces": rows[0]["faces"], "negatives": len(negs), "rows": rows,
              "alignment": align, "crop_ms": cost}
    md = ("# Face detectors on scenes built from real photos\n\n" + fingerprint_md(result["device"])
          + f"\n{len(scenes)} scenes of 1280x720 with {rows[0]['faces']} faces 36-200 px high; {len(negs)} non-face images "
          "(scikit-image). Recall at IoU 0.5 of squared boxes; false faces per non-face image; median detection time, "
          "OpenCV on 1 thread.\n\n| detector | detect size | setting | recall | recall <64 / 64-128 / >128 px | "
          "false faces per negative (images with any) | unmatched per scene | ms per 720p frame |\n|---|---|---|---|---|---|---|---|\n")
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for r in rows:
        rb = r["recall_by_height"]
        md += (f"| {r['detector']} | {r['detect_size']} | {r['setting']} | {r['recall']:.2f} | "
               f"{fmt(rb['<64'])} / {fmt(rb['64-128'])} / {fmt(rb['>128'])} | {r['false_faces_per_negative']:.2f} "
               f"({r['negatives_with_false_faces']}) | {r['unmatched_in_scenes']:.2f} | {r['ms_per_720p_frame']:.1f} |\n")
    md += "\nTop emotion on rotated faces = the upright face's (YuNet 640, score >= 0.7):\n\n| faces | n | " + \
        " | ".join(f"{ang:+d} deg align / no align" for ang in ANGLES) + " |\n|---|---|" + "---|" * len(ANGLES) + "\n"
    for name, al in align.items():
        ag = al["agreement"]
        md += f"| {name} | {al['faces']} | " + " | ".join(f"{fmt(ag[f'align_{x}'])} / {fmt(ag[f'no_align_{x}'])}" for x in ANGLES) + " |\n"
    md += (f"\nCrop per face: plain {cost['plain'] * 1e3:.1f} us, aligned {cost['aligned'] * 1e3:.1f} us "
           f"(alignment adds {cost['alignment_extra'] * 1e3:.1f} us).\n")
    save_result(result, a.out, md, "eval_detectors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
