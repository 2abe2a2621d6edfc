#!/usr/bin/env python3
"""Model latency: every model file given (fp32, int8, .ort), batch sizes, thread counts.

    python benchmarks/bench_model.py                          # the bundled default model
    python benchmarks/bench_model.py m.onnx m.int8.onnx --threads 1 2 4 --batches 1 4 16
    python benchmarks/bench_model.py m.onnx m.int8.onnx --checkpoint model.pt   # + PyTorch eager row (needs torch)

Writes JSON (and a Markdown table next to it) to --out.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from emo.edge_runtime.bench import save_result
from emo.edge_runtime.bench_runs import run_model_bench
from emo.edge_runtime.errors import EmoError


def torch_peer(checkpoint: Path):
    """A PyTorch eager runner for the side-by-side row (only when torch is installed)."""
    try:
        import torch

        from emo.train.checkpoint import load_checkpoint, model_from_checkpoint
    except ImportError:
        print("bench_model: torch is not installed; skipping the PyTorch row", file=sys.stderr)
        return None
    model = model_from_checkpoint(load_checkpoint(checkpoint))

    def run(x):
        with torch.inference_mode():
            return model(torch.from_numpy(x))

    torch.set_num_threads(1)
    return run


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", type=Path, help="ONNX/ORT model files (default: the bundled model)")
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4, 16])
    ap.add_argument("--threads", nargs="+", type=int, default=None, help="default: 1 up to the core count, doubling")
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--checkpoint", type=Path, help="model.pt for the PyTorch eager row (1 thread)")
    ap.add_argument("--quick", action="store_true", help="few runs, batch 1 and 4, 1 thread: a smoke test")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results") / f"model-{os.uname().nodename}.json")
    a = ap.parse_args(argv)
    peers = {}
    if a.checkpoint:
        fn = torch_peer(a.checkpoint)
        if fn:
            peers["pytorch-eager"] = fn
    log = lambda s: print(f"bench_model: {s}", file=sys.stderr, flush=True)  # noqa: E731
    try:
        result, md = run_model_bench(a.models, a.batches, a.threads, a.runs, a.warmup, a.quick, peers, log)
    except EmoError as e:
        print(f"bench_model: error: {e}", file=sys.stderr)
        return 2
    save_result(result, a.out, md, "bench_model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
