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
from pathlib import Path

from emo.edge_runtime.bench import save_result
from emo.edge_runtime.bench_runs import run_memory_bench
from emo.edge_runtime.errors import EmoError

REPO = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--photo", type=Path, default=REPO / "examples" / "astronaut.png")
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--quick", action="store_true", help="300 frames: a smoke test")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results") / f"memory-{os.uname().nodename}.json")
    a = ap.parse_args(argv)
    log = lambda s: print(f"bench_memory: {s}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        result, md = run_memory_bench(a.model, a.photo, a.frames, a.quick, log)
    except EmoError as e:
        print(f"bench_memory: error: {e}", file=sys.stderr)
        return 2
    save_result(result, a.out, md, "bench_memory")
    return 0 if result["cli"]["returncode"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
