#!/usr/bin/env python3
"""Helpers for benchmarks/arm64_check.sh: the same emo edge runtime on x86_64 and on aarch64
(under qemu), compared output for output. Uses only the base install (numpy, onnxruntime,
opencv) plus the emo package, so it runs unchanged on both sides.

Subcommands (all paths are plain files; the shell script moves them between the two sides):

  subset-data SHARED DEST        copy photos/, the first N images per FER2013 class and the YuNet
                                 model, in the layout tests/conftest.py expects
  make-video PHOTO OUT           a short MJPG clip of a real face (emo.edge_runtime.bench)
  raw-inputs BASE OUT.npz        x86 only: Haar boxes + model tensors for every photo, and
                                 normalised FER2013 val crops; the fixed inputs both sides classify
  raw-dump INPUTS.npz BASE OUT.npz   classify those inputs with Classifier(model).predict
  compare-raw A.npz B.npz        max abs differences of model outputs, probabilities, tensors
  video-frames VIDEO OUT.npz     the frames OpenCV decodes from a video
  compare-frames A.npz B.npz     are the decoded frames pixel-identical?
  lossless-copy FRAMES.npz OUT   decoded frames re-encoded losslessly (FFV1)
  compare-json A.jsonl B.jsonl   emo-edge infer --format json outputs: faces, boxes, scores
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
IMAGE_EXT = {".jpg", ".jpeg", ".png"}


# ----------------------------------------------------------------------------- data
def subset_data(shared: Path, dest: Path, train: int, val: int) -> None:
    """DEST/data/{photos,fer2013/{train,val}/<class>} and DEST/models/face_detection_yunet.onnx.

    The first N files per class in sorted order: the same files the tests' fixtures pick
    (they take ``sorted(glob('*.jpg'))[:n]``)."""
    data = dest / "data"
    if data.exists():
        shutil.rmtree(data)
    shutil.copytree(shared / "photos", data / "photos")
    n_files = 0
    for split, n in (("train", train), ("val", val)):
        for c in LABELS:
            src = shared / "fer2013" / split / c
            d = data / "fer2013" / split / c
            d.mkdir(parents=True)
            for f in sorted(src.glob("*.jpg"))[:n]:
                shutil.copy(f, d / f.name)
                n_files += 1
    yunet = shared.parent / "models" / "face_detection_yunet.onnx"
    if yunet.is_file():
        (dest / "models").mkdir(parents=True, exist_ok=True)
        shutil.copy(yunet, dest / "models" / yunet.name)
    print(f"copied photos/, {n_files} FER2013 images ({train} train / {val} val per class at most)"
          f"{' and the YuNet model' if yunet.is_file() else ' (no YuNet model found)'} to {dest}")


def make_video(photo: Path, out: Path, frames: int) -> None:
    from emo.edge_runtime.bench import make_test_video

    make_test_video(photo, out, frames=frames)
    print(f"wrote {out} ({frames} frames)")


# ----------------------------------------------------------------------------- raw probabilities
def image_names(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.suffix.lower() in IMAGE_EXT)


def raw_inputs(base: Path, fer_val: Path, per_class: int, model: str | None, out: Path) -> None:
    """Fixed classifier inputs, made on one side: Haar boxes per photo, the tensors cut from them,
    and FER2013 val crops. Both sides then classify exactly these float32 tensors."""
    import cv2

    from emo.edge_runtime.classifier import Classifier
    from emo.edge_runtime.faces import make_detector
    from emo.edge_runtime.preprocess import faces_to_tensor, normalize, resize_square
    from emo.edge_runtime.sources import read_image

    spec = Classifier(model).spec
    size = spec.size
    det = make_detector("haar")
    names, boxes, tensors = [], [], []
    for name in image_names(base):
        img = read_image(base / name)
        b = det.detect(img)
        for box in b:
            names.append(name)
            boxes.append(box)
        tensors.append(faces_to_tensor(img, b, spec))
    crops = []
    for c in LABELS:
        for f in sorted((fer_val / c).glob("*.jpg"))[:per_class]:
            crops.append(resize_square(cv2.imread(str(f), cv2.IMREAD_GRAYSCALE), size))
    np.savez(out, photo_names=np.array(names), photo_boxes=np.array(boxes, np.int64).reshape(-1, 4),
             photo_x=np.concatenate(tensors), fer_x=normalize(np.stack(crops), spec))
    print(f"raw inputs: {len(names)} faces in {len(image_names(base))} photos, {len(crops)} FER2013 val crops, {size}x{size}")


def raw_dump(inputs: Path, base: Path, model: str | None, out: Path) -> None:
    """Classify the fixed inputs; also cut the photo faces again on this side (same boxes) to
    compare preprocessing, and classify those too (the end-to-end crop -> probabilities path)."""
    import cv2
    import onnxruntime as ort

    from emo.edge_runtime.classifier import Classifier
    from emo.edge_runtime.preprocess import faces_to_tensor
    from emo.edge_runtime.sources import read_image

    d = np.load(inputs)
    clf = Classifier(model)
    names = [str(n) for n in d["photo_names"]]
    boxes = [tuple(int(v) for v in b) for b in d["photo_boxes"]]
    own = []
    for name in dict.fromkeys(names):
        img = read_image(base / name)
        own.append(faces_to_tensor(img, [b for n, b in zip(names, boxes) if n == name], clf.spec))
    own_x = np.concatenate(own) if own else np.zeros_like(d["photo_x"])
    res = {}
    for key, x in (("photo", d["photo_x"]), ("fer", d["fer_x"]), ("own", own_x)):
        logits = clf.logits(x)
        clf.logits = lambda _x, _l=logits: _l  # run the model once; predict() adds its own softmax
        res[f"{key}_l"], res[f"{key}_p"] = logits, clf.predict(x)
        del clf.logits
    np.savez(out, own_x=own_x, **res,
             precision=clf.meta.precision, model=str(clf.path),
             versions=json.dumps({"numpy": np.__version__, "onnxruntime": ort.__version__, "opencv": cv2.__version__}))
    print(f"raw dump: {clf.meta.precision} model {clf.path.name}: {len(d['photo_x'])} photo faces, {len(d['fer_x'])} FER crops")


def _maxdiff(p: np.ndarray, q: np.ndarray) -> float:
    return float(np.abs(p.astype(np.float64) - q.astype(np.float64)).max()) if p.size else 0.0


def compare_raw(a: Path, b: Path, tol: float, pre_tol: float, label: str) -> int:
    """x86 dump A vs aarch64 dump B. Exit status 1 when, on identical input tensors, the
    probabilities differ by more than ``tol`` or a top-1 class differs, or when the two sides'
    own crops differ by more than ``pre_tol``."""
    x, y = np.load(a), np.load(b)
    ok = True
    for key, what in (("fer", "FER2013 val crops, identical tensors"), ("photo", "photo faces, identical tensors")):
        p, q = x[f"{key}_p"], y[f"{key}_p"]
        dl, dp = _maxdiff(x[f"{key}_l"], y[f"{key}_l"]), _maxdiff(p, q)
        same_l = np.array_equal(x[f"{key}_l"], y[f"{key}_l"])
        agree = int((p.argmax(1) == q.argmax(1)).sum())
        good = dp <= tol and agree == len(p)
        ok = ok and good
        print(f"  [{label}] {what:40s} n={len(p):4d}  model output max|d|={dl:.3g} ({'bit-identical' if same_l else 'not bit-identical'})"
              f"  probabilities max|d|={dp:.3g}  same top-1 {agree}/{len(p)}  {'OK' if good else 'MISMATCH'}")
    dx = _maxdiff(x["own_x"], y["own_x"])
    p, q = x["own_p"], y["own_p"]
    dp = _maxdiff(p, q)
    agree = int((p.argmax(1) == q.argmax(1)).sum())
    good = dx <= pre_tol and agree == len(p) and (dp <= tol or dx > 0)
    ok = ok and good
    print(f"  [{label}] {'photo faces, each side crops+normalises':40s} n={len(p):4d}  input tensors max|d|={dx:.3g}"
          f"  probabilities max|d|={dp:.3g}  same top-1 {agree}/{len(p)}  {'OK' if good else 'MISMATCH'}")
    print(f"  [{label}] Classifier.predict: {'OK' if ok else 'MISMATCH'} (probability tolerance {tol:g}, tensor tolerance {pre_tol:g})")
    return 0 if ok else 1


# ----------------------------------------------------------------------------- video decoding
def video_frames(video: Path, out: Path) -> None:
    import cv2

    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f)
    backend = cap.getBackendName() if cap.isOpened() else "none"
    cap.release()
    np.savez_compressed(out, frames=np.stack(frames) if frames else np.zeros((0, 1, 1, 3), np.uint8), backend=backend)
    print(f"decoded {len(frames)} frames of {video.name}")


def compare_frames(a: Path, b: Path) -> int:
    """Exit 0 when both sides decoded the same pixels, 1 otherwise (with the size of the difference)."""
    x, y = np.load(a)["frames"], np.load(b)["frames"]
    if x.shape != y.shape:
        print(f"frames differ in shape: {x.shape} on x86, {y.shape} on aarch64")
        return 1
    d = np.abs(x.astype(np.int16) - y.astype(np.int16))
    if not d.any():
        print(f"{len(x)} frames, pixel-identical")
        return 0
    print(f"{len(x)} frames, NOT pixel-identical: max |pixel diff| {int(d.max())}, {100 * float((d > 0).mean()):.1f}% of "
          f"pixel values differ, in {int((d.reshape(len(d), -1).max(1) > 0).sum())}/{len(x)} frames")
    return 1


def lossless_copy(frames: Path, out: Path, fps: float) -> None:
    """The decoded frames re-encoded losslessly (FFV1), so both sides decode identical pixels."""
    import cv2

    x = np.load(frames)["frames"]
    vw = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"FFV1"), fps, (x.shape[2], x.shape[1]))
    if not vw.isOpened():
        raise SystemExit(f"cannot write FFV1 video {out}")
    for f in x:
        vw.write(f)
    vw.release()
    print(f"wrote {out} ({len(x)} frames, FFV1 lossless)")


# ----------------------------------------------------------------------------- emo-edge infer JSON
def read_jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]


def compare_json(a: Path, b: Path, tol: float, label: str) -> tuple[int, float, int]:
    """Returns (problems, max abs score difference in percentage points, faces compared)."""
    ra, rb = read_jsonl(a), read_jsonl(b)
    problems, worst, faces = [], 0.0, 0
    if len(ra) != len(rb):
        problems.append(f"{len(ra)} records on x86, {len(rb)} on aarch64")
    for x, y in zip(ra, rb):
        where = f"{x.get('file') or Path(x['source']).name} frame {x['frame']}"
        if (x.get("file"), x["frame"]) != (y.get("file"), y["frame"]):
            problems.append(f"{where}: record order differs ({y.get('file')} frame {y['frame']})")
            continue
        if len(x["faces"]) != len(y["faces"]):
            problems.append(f"{where}: {len(x['faces'])} faces on x86, {len(y['faces'])} on aarch64")
            continue
        for fx, fy in zip(x["faces"], y["faces"]):
            faces += 1
            if fx["box"] != fy["box"]:
                problems.append(f"{where}: box {fx['box']} on x86, {fy['box']} on aarch64")
            if fx["track"] != fy["track"]:
                problems.append(f"{where}: track {fx['track']} on x86, {fy['track']} on aarch64")
            d = max(abs(fx["scores"][k] - fy["scores"][k]) for k in fx["scores"])
            worst = max(worst, d)
            if d > tol + 1e-9:
                problems.append(f"{where}: scores differ by {d:.2f} points (tolerance {tol})")
            if fx["emotion"] != fy["emotion"]:
                problems.append(f"{where}: top emotion {fx['emotion']} on x86, {fy['emotion']} on aarch64")
    for p in problems[:20]:
        print(f"    MISMATCH [{label}] {p}")
    if len(problems) > 20:
        print(f"    ... and {len(problems) - 20} more")
    return len(problems), worst, faces


def compare_json_many(pairs: list[str], tol: float, label: str) -> int:
    total_problems, worst, faces, recs = 0, 0.0, 0, 0
    for pair in pairs:
        a, b = (Path(s) for s in pair.split(":", 1))
        n, w, f = compare_json(a, b, tol, f"{label} {a.stem}")
        total_problems += n
        worst = max(worst, w)
        faces += f
        recs += len(read_jsonl(a))
    status = "OK" if total_problems == 0 else f"{total_problems} MISMATCHES"
    print(f"  [{label}] emo-edge infer JSON: {len(pairs)} inputs, {recs} records, {faces} faces; boxes/tracks/top-1 "
          f"{'identical' if total_problems == 0 else 'see above'}; max |score diff| = {worst:.2f} points "
          f"(tolerance {tol}) -> {status}")
    return 0 if total_problems == 0 else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("subset-data")
    s.add_argument("shared", type=Path)
    s.add_argument("dest", type=Path)
    s.add_argument("--train", type=int, default=150)
    s.add_argument("--val", type=int, default=150)
    s = sub.add_parser("make-video")
    s.add_argument("photo", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--frames", type=int, default=30)
    s = sub.add_parser("raw-inputs")
    s.add_argument("base", type=Path)
    s.add_argument("fer_val", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--per-class", type=int, default=150)
    s.add_argument("--model", default=None)
    s = sub.add_parser("raw-dump")
    s.add_argument("inputs", type=Path)
    s.add_argument("base", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--model", default=None)
    s = sub.add_parser("compare-raw")
    s.add_argument("a", type=Path)
    s.add_argument("b", type=Path)
    s.add_argument("--tol", type=float, default=0.0)
    s.add_argument("--pre-tol", type=float, default=0.0)
    s.add_argument("--label", default="")
    s = sub.add_parser("video-frames")
    s.add_argument("video", type=Path)
    s.add_argument("out", type=Path)
    s = sub.add_parser("compare-frames")
    s.add_argument("a", type=Path)
    s.add_argument("b", type=Path)
    s = sub.add_parser("lossless-copy")
    s.add_argument("frames", type=Path)
    s.add_argument("out", type=Path)
    s.add_argument("--fps", type=float, default=30.0)
    s = sub.add_parser("compare-json")
    s.add_argument("pairs", nargs="+", help="X86.jsonl:ARM.jsonl")
    s.add_argument("--tol", type=float, default=0.0)
    s.add_argument("--label", default="")
    a = ap.parse_args()
    if a.cmd == "subset-data":
        subset_data(a.shared, a.dest, a.train, a.val)
    elif a.cmd == "make-video":
        make_video(a.photo, a.out, a.frames)
    elif a.cmd == "raw-inputs":
        raw_inputs(a.base, a.fer_val, a.per_class, a.model, a.out)
    elif a.cmd == "raw-dump":
        raw_dump(a.inputs, a.base, a.model, a.out)
    elif a.cmd == "compare-raw":
        return compare_raw(a.a, a.b, a.tol, a.pre_tol, a.label)
    elif a.cmd == "video-frames":
        video_frames(a.video, a.out)
    elif a.cmd == "compare-frames":
        return compare_frames(a.a, a.b)
    elif a.cmd == "lossless-copy":
        lossless_copy(a.frames, a.out, a.fps)
    elif a.cmd == "compare-json":
        return compare_json_many(a.pairs, a.tol, a.label)
    return 0


if __name__ == "__main__":
    sys.exit(main())
