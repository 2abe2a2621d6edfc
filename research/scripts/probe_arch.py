#!/usr/bin/env python3
"""Int8 latency of candidate architectures before training any: each is built with random
weights, exported and quantised as emo-export would (static QDQ, per-channel weights), and timed
interleaved with a reference model (default: the bundled default), 1 thread, batch 1.

    python research/scripts/probe_arch.py '{"tiny": ["emonet", {"widths": [32, 64, 112], "blocks": [2, 2], "sep": true, "stem_stride": 2}]}'
    python research/scripts/probe_arch.py candidates.json --runs 2000

The argument is JSON (or a JSON file): label -> [arch, arch_args]. Prints parameters, MACs,
int8 bytes and the median latency and its ratio to the reference. Latency does not depend on
the weights, so this is how the tiny model's shape was chosen (MODEL_CARD.md, "The model
ladder"). Needs the training install (torch, onnx).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("candidates", help="JSON text or a .json file: {label: [arch, {arch_args}]}")
    ap.add_argument("--reference", default="default", help="bundled name or ONNX file the ratios refer to")
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=30)
    a = ap.parse_args(argv)
    try:
        import torch

        from emo.edge_runtime.bench import model_latency
        from emo.edge_runtime.classifier import resolve_model
        from emo.edge_runtime.errors import EmoError
        from emo.edge_runtime.preprocess import InputSpec
        from emo.edge_runtime.metadata import ModelMetadata
        from emo.export.exporter import quantize, torch_to_onnx
        from emo.export.onnxfile import stamp_metadata
        from emo.train.models import build_model, count_macs, count_params
    except ImportError as e:
        print(f"probe_arch: needs the training install (pip install 'emo-fer[train]'): {e}", file=sys.stderr)
        return 2
    text = Path(a.candidates).read_text() if a.candidates.endswith(".json") else a.candidates
    try:
        cands = json.loads(text)
        assert isinstance(cands, dict) and all(isinstance(v, list) and len(v) == 2 for v in cands.values())
    except (ValueError, AssertionError):
        print('probe_arch: error: candidates must be JSON like {"label": ["emonet", {"widths": [16, 32, 64]}]}', file=sys.stderr)
        return 2
    ref = resolve_model(a.reference)
    if not ref.is_file():
        print(f"probe_arch: error: reference model {a.reference} does not exist", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    calib = np.random.default_rng(0).normal(0, 1, (100, 1, 48, 48)).astype(np.float32)
    rows, paths = {}, {"reference": ref}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (arch, args) in cands.items():
            try:
                m = build_model(arch, **args).eval()
            except (EmoError, TypeError) as e:
                print(f"probe_arch: error: {label}: {e}", file=sys.stderr)
                return 2
            for mod in m.modules():  # trained-looking BatchNorm, so that nothing folds away
                if isinstance(mod, torch.nn.BatchNorm2d):
                    mod.weight.data.uniform_(0.5, 1.5)
                    mod.running_var.data.uniform_(0.5, 2.0)
            f, q = Path(tmp) / f"{len(paths)}.onnx", Path(tmp) / f"{len(paths)}.int8.onnx"
            torch_to_onnx(m, InputSpec(), f, 17)
            quantize(f, q, calib, "minmax", True)
            stamp_metadata(q, ModelMetadata(arch=arch, precision="int8"))  # short tensor names too, as exported
            paths[label] = q
            rows[label] = {"arch": arch, "params": count_params(m), "macs": count_macs(m), "int8_bytes": q.stat().st_size}
            print(f"probe_arch: {label}: {rows[label]['params']:,} parameters, {rows[label]['macs'] / 1e6:.1f}M MACs, "
                  f"{rows[label]['int8_bytes']:,} bytes int8", file=sys.stderr, flush=True)
        lat = {r["path"]: r["median_ms"] for r in model_latency(list(paths.values()), [1], [1], a.warmup, a.runs)}
        base = lat[str(ref)]
        print(f"| candidate | params | MACs | int8 bytes (little metadata) | median ms | vs {ref.name} |\n|---|---|---|---|---|---|")
        print(f"| reference | | | {ref.stat().st_size:,} | {base:.4f} | 1.00x |")
        for label, r in rows.items():
            ms = lat[str(paths[label])]
            print(f"| {label} | {r['params']:,} | {r['macs'] / 1e6:.1f}M | {r['int8_bytes']:,} | {ms:.4f} | {ms / base:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
