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
from pathlib import Path

from emo.edge_runtime.bench import save_result
from emo.edge_runtime.bench_runs import run_pipeline_bench
from emo.edge_runtime.errors import EmoError

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
    log = lambda s: print(f"bench_pipeline: {s}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        result, md = run_pipeline_bench(a.model, a.video, a.photo, a.frames, tuple(a.threads), tuple(a.detect_every),
                                        a.yunet, a.quick, log)
    except EmoError as e:
        print(f"bench_pipeline: error: {e}", file=sys.stderr)
        return 2
    save_result(result, a.out, md, "bench_pipeline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
