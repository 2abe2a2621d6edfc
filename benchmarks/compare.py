#!/usr/bin/env python3
"""Merge model-latency results from several devices into one Markdown table and one PNG chart.

    python benchmarks/compare.py benchmarks/results/model-*.json --out benchmarks/results/compare
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def load(paths: list[Path]) -> list[dict]:
    rows = []
    for p in paths:
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError) as e:
            print(f"compare: error: cannot read {p}: {e}", file=sys.stderr)
            raise SystemExit(2)
        if d.get("benchmark") != "model_latency":
            print(f"compare: skipping {p} (not a model latency result)", file=sys.stderr)
            continue
        dev = d["device"]
        name = dev.get("board") or f"{dev['cpu']} ({dev['machine']})"
        for r in d["rows"]:
            rows.append({"device": name, "file": p.name, **r})
    return rows


def table(rows: list[dict]) -> str:
    s = "| device | model | precision | batch | threads | median ms | p99 ms | per face ms | faces/s |\n|---|---|---|---|---|---|---|---|---|\n"
    for r in sorted(rows, key=lambda r: (r["device"], r["model"], r["batch"], r["threads"])):
        s += (f"| {r['device']} | {r['model']} | {r['precision']} | {r['batch']} | {r['threads']} | {r['median_ms']:.3f} | "
              f"{r['p99_ms']:.3f} | {r['per_face_median_ms']:.3f} | {r['faces_per_s']:.0f} |\n")
    return s


def chart(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("compare: matplotlib is not installed; no chart (pip install matplotlib)", file=sys.stderr)
        return False
    sel = [r for r in rows if r["batch"] == 1]
    labels = sorted({f"{r['model']}\n{r['threads']} thr" for r in sel})
    devices = sorted({r["device"] for r in sel})
    fig, ax = plt.subplots(figsize=(max(6, len(labels) * 1.2), 4))
    width = 0.8 / max(1, len(devices))
    for i, d in enumerate(devices):
        vals = []
        for lab in labels:
            m = [r["median_ms"] for r in sel if r["device"] == d and f"{r['model']}\n{r['threads']} thr" == lab]
            vals.append(m[0] if m else 0)
        ax.bar([j + i * width for j in range(len(labels))], vals, width, label=d[:40])
    ax.set_xticks([j + width * (len(devices) - 1) / 2 for j in range(len(labels))], labels, fontsize=7)
    ax.set_ylabel("median latency per face, batch 1 (ms)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/compare"))
    a = ap.parse_args(argv)
    rows = load(a.results)
    if not rows:
        print("compare: error: no model latency rows in the given files", file=sys.stderr)
        return 2
    md = "# Model latency across devices\n\n" + table(rows)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".md").write_text(md)
    chart(rows, a.out.with_suffix(".png"))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
