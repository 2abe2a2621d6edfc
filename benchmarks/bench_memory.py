#!/usr/bin/env python3
"""Memory and cold start: model load time, RSS sampled over a long recognizer run (is it flat?),
and the peak RSS of a real `emo-edge infer` process.

    python benchmarks/bench_memory.py                  # 10,000 frames, bundled model
    python benchmarks/bench_memory.py --quick
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from emo.edge_runtime.bench import cli_peak_rss, device_fingerprint, fingerprint_md, make_test_video, memory_bench, save_result

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--photo", type=Path, default=REPO / "examples" / "astronaut.png")
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="300 frames: a smoke test")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results") / f"memory-{os.uname().nodename}.json")
    a = ap.parse_args(argv)
    frames = 300 if a.quick else a.frames
    log = lambda s: print(f"bench_memory: {s}", file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as td:
        video = make_test_video(a.photo, Path(td) / "clip.avi", frames=min(frames, 300))
        log("peak RSS of `emo-edge infer` on the clip...")
        cli = cli_peak_rss(["infer", str(video), "--format", "json"] + (["--model", str(a.model)] if a.model else []))
        log(f"  {cli['peak_rss_mb']:.1f} MB")
        log(f"recognizer over {frames} frames...")
        mem = memory_bench(a.model, video, frames, sample_every=max(1, frames // 20), progress=log)
    fp = device_fingerprint([1])
    result = {"benchmark": "memory", "quick": a.quick, "device": fp, "cli": cli, **mem}
    md = ("# Memory\n\n" + fingerprint_md(fp) + "\n| measure | value |\n|---|---|\n"
          f"| model load (cold start) | {mem['model_load_ms']:.1f} ms |\n"
          f"| peak RSS, `emo-edge infer` ({min(frames, 300)}-frame clip) | {cli['peak_rss_mb']:.1f} MB |\n"
          f"| RSS after frame 0 / last frame ({frames} frames) | {mem['samples'][0]['rss_mb']:.1f} / {mem['samples'][-1]['rss_mb']:.1f} MB |\n"
          f"| RSS growth, 2nd half vs 1st half (median) | {mem['rss_growth_mb_second_half_vs_first']:+.2f} MB |\n")
    save_result(result, a.out, md, "bench_memory")
    return 0 if cli["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
