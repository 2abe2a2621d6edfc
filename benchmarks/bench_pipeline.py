#!/usr/bin/env python3
"""Whole pipeline: per-stage time (decode, detect, crop+preprocess, classify, track, JSON output)
and end-to-end FPS on a 640x480 video with one real face, for each detector.

    python benchmarks/bench_pipeline.py                                   # Haar, bundled model
    python benchmarks/bench_pipeline.py --yunet face_detection_yunet.onnx --threads 1 4
    python benchmarks/bench_pipeline.py --video my_clip.mp4

Without --video, a clip is built from --photo (default: examples/astronaut.png).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from emo.edge_runtime.bench import device_fingerprint, fingerprint_md, make_test_video, pipeline_bench, pipeline_md, save_result

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="emo ONNX model (default: bundled)")
    ap.add_argument("--video", type=Path, help="video to run on (default: built from --photo)")
    ap.add_argument("--photo", type=Path, default=REPO / "examples" / "astronaut.png")
    ap.add_argument("--frames", type=int, default=600)
    ap.add_argument("--threads", nargs="+", type=int, default=[1])
    ap.add_argument("--detect-every", nargs="+", type=int, default=[1])
    ap.add_argument("--yunet", type=str, help="face_detection_yunet.onnx: also benchmark the YuNet detector")
    ap.add_argument("--quick", action="store_true", help="60 frames: a smoke test")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results") / f"pipeline-{os.uname().nodename}.json")
    a = ap.parse_args(argv)
    frames = 60 if a.quick else a.frames
    log = lambda s: print(f"bench_pipeline: {s}", file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as td:
        video = a.video
        if video is None:
            log(f"building a 640x480 test clip ({frames} frames) from {a.photo}")
            video = make_test_video(a.photo, Path(td) / "clip.avi", frames=frames)
        elif not video.is_file():
            print(f"bench_pipeline: error: {video} does not exist", file=sys.stderr)
            return 2
        detectors = [("haar", None)] + ([("yunet", a.yunet)] if a.yunet else [])
        rows = []
        for det, dm in detectors:
            for t in a.threads:
                for de in a.detect_every:
                    log(f"{det}, {t} thread(s), detect every {de}...")
                    r = pipeline_bench(video, a.model, det, dm, t, frames, de)
                    log(f"  {r['fps']:.1f} FPS, {r['faces']} faces in {r['frames']} frames")
                    rows.append(r)
    fp = device_fingerprint(sorted(set(a.threads)))
    result = {"benchmark": "pipeline", "quick": a.quick, "device": fp, "video": str(a.video or f"built from {a.photo}"),
              "rows": rows}
    md = "# Pipeline\n\n" + fingerprint_md(fp) + "\n" + pipeline_md(rows)
    save_result(result, a.out, md, "bench_pipeline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
