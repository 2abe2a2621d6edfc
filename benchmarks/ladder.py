#!/usr/bin/env python3
"""The model ladder: per-face latency (1 thread, batch 1, all models interleaved in one run) and
FER2013 PublicTest accuracy of each model, as a table and one accuracy-versus-latency chart.

    python benchmarks/ladder.py --data ../shared/data/fer2013               # the bundled models
    python benchmarks/ladder.py --data ... mini-xception=runs/mini-xception-bn/model.int8.onnx
    python benchmarks/ladder.py --data ... --stamp     # also write the latency into the bundled files

Models are bundled names (tiny, default, large) or LABEL=PATH for other emo ONNX files (reference
points such as the classic mini-Xception). Without --data, accuracy is read from each model's
metadata (what emo-export measured). --stamp records the measured latency, its ratio to the
default and the device in each bundled model's metadata, where `emo-edge models` shows it (needs
the onnx package). The chart needs matplotlib (the train extra); without it only the table is written.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from emo.edge_runtime.bench import device_fingerprint, fingerprint_md, model_latency, save_result
from emo.edge_runtime.classifier import Classifier, bundled_models, resolve_model
from emo.edge_runtime.errors import EmoError

RESULTS = Path("benchmarks") / "results"


def parse_models(items: list[str]) -> dict[str, Path]:
    if not items:
        found = bundled_models()
        if not found:
            raise EmoError("no bundled models found; reinstall emo-fer")
        return found
    out = {}
    for it in items:
        label, _, path = it.partition("=") if "=" in it else (it, "", it)
        p = resolve_model(path)
        if not p.is_file():
            raise EmoError(f"model {path} does not exist")
        out[label] = p
    return out


def stamp_latency(path: Path, latency_ms: float, ratio: float | None, device: str) -> None:
    """Record the measured latency in ``path``'s emo metadata (an atomic rewrite; needs onnx)."""
    from emo.export.onnxfile import stamp_metadata

    meta = Classifier(path).meta
    meta.metrics.update({"latency_ms_1thread": round(latency_ms, 4), "latency_device": device})
    if ratio is not None:
        meta.metrics["latency_vs_default"] = round(ratio, 3)
    stamp_metadata(path, meta)
    Classifier(path)  # still loads as the runtime loads it


def chart(rows: list[dict], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("ladder: matplotlib is not installed (pip install 'emo-fer[train]'); no chart written", file=sys.stderr)
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    bundled = [r for r in rows if r["bundled"]]
    others = [r for r in rows if not r["bundled"]]
    if bundled:
        b = sorted(bundled, key=lambda r: r["latency_ms"])
        ax.plot([r["latency_ms"] for r in b], [r["accuracy"] * 100 for r in b], "-o", color="#1f77b4", label="emo ladder (int8)")
    if others:
        ax.plot([r["latency_ms"] for r in others], [r["accuracy"] * 100 for r in others], "s", color="#d62728", label="reference, trained here")
    for r in rows:
        ax.annotate(f"{r['label']}\n{r['bytes'] / 1024:.0f} KiB, {r['accuracy']:.1%}", (r["latency_ms"], r["accuracy"] * 100),
                    textcoords="offset points", xytext=(6, -14), fontsize=8)
    ax.set_xlabel("per-face latency, ms (int8, 1 thread, batch 1)")
    ax.set_ylabel("FER2013 PublicTest accuracy, %")
    ax.set_title(title, fontsize=9)
    lo = min(r["accuracy"] for r in rows) * 100
    hi = max(r["accuracy"] for r in rows) * 100
    ax.set_ylim(lo - 1.5, hi + 1.0)
    ax.set_xlim(0, max(r["latency_ms"] for r in rows) * 1.35)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    save_figure(fig, path)
    return True


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure to ``path`` atomically (a temporary file, then a rename) and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="bundled names or LABEL=PATH (default: every bundled model)")
    ap.add_argument("--data", help="FER2013 root: measure PublicTest accuracy here (default: the metadata's figure)")
    ap.add_argument("--runs", type=int, default=2000, help="timed runs per model (interleaved)")
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--stamp", action="store_true", help="write the measured latency into the bundled models' metadata")
    ap.add_argument("--note", default="", help="what else ran on the machine, for the record")
    ap.add_argument("--out", type=Path, default=RESULTS / f"ladder-{os.uname().nodename}.json")
    a = ap.parse_args(argv)
    try:
        models = parse_models(a.models)
    except EmoError as e:
        print(f"ladder: error: {e}", file=sys.stderr)
        return 2
    bundled = bundled_models()
    log = lambda s: print(f"ladder: {s}", file=sys.stderr, flush=True)  # noqa: E731
    t0 = time.time()
    clfs = {k: Classifier(p) for k, p in models.items()}
    acc = {}
    if a.data:
        from emo.edge_runtime.dataset import load_split

        sp = load_split(a.data, "val", 48, skip_blank=False)
        for k, c in clfs.items():
            acc[k] = float((c.top_labels(sp.images) == sp.labels).mean())
            log(f"{k}: PublicTest {acc[k]:.2%} (n={len(sp.labels)})")
    log(f"latency: {len(models)} models interleaved, 1 thread, batch 1, {a.runs} runs each")
    lat = model_latency(list(models.values()), [1], [1], a.warmup, a.runs, progress=log)
    by_path = {r["path"]: r for r in lat}
    fp = device_fingerprint([1])
    ref = models.get("default")
    rows = []
    for k, p in models.items():
        r, m = by_path[str(p)], clfs[k].meta
        ratio = r["median_ms"] / by_path[str(ref)]["median_ms"] if ref else None
        rows.append({"label": k, "path": str(p), "bundled": bundled.get(k) == p, "arch": m.arch, "bytes": p.stat().st_size,
                     "params": m.extra.get("params"), "macs": m.extra.get("macs"),
                     "accuracy": acc.get(k, m.metrics.get(f"val_accuracy_{m.precision}")), "accuracy_source": "measured" if a.data else "metadata",
                     "accuracy_fp32": m.metrics.get("val_accuracy_fp32"), "latency_ms": r["median_ms"], "p90_ms": r["p90_ms"],
                     "vs_default": ratio})
    result = {"benchmark": "model_ladder", "device": fp, "note": a.note, "settings": {"runs": a.runs, "warmup": a.warmup,
              "threads": 1, "batch": 1, "data": a.data}, "rows": rows, "seconds": time.time() - t0}
    md = "# Model ladder\n\n" + fingerprint_md(fp) + (f"\nNote: {a.note}\n" if a.note else "") + "\n"
    md += "| model | arch | params | MACs | int8 bytes | PublicTest int8 | per face ms (median) | p90 ms | vs default |\n"
    md += "|---|---|---|---|---|---|---|---|---|\n"
    for r in rows:
        num = lambda v, f: format(v, f) if isinstance(v, (int, float)) else "?"  # noqa: E731
        md += (f"| {r['label']} | {r['arch']} | {num(r['params'], ',')} | {num((r['macs'] or 0) / 1e6, '.1f')}M | {r['bytes']:,} | "
               f"{num((r['accuracy'] or 0) * 100, '.2f')}% | {r['latency_ms']:.4f} | {r['p90_ms']:.4f} | {num(r['vs_default'], '.2f')}x |\n")
    png = a.out.with_suffix(".png")
    if all(isinstance(r["accuracy"], float) for r in rows) and chart(rows, png, f"emo model ladder on {fp['cpu']}"):
        result["chart"] = str(png)
        md += f"\nChart: `{png.name}`\n"
    save_result(result, a.out, md, "ladder")
    if a.stamp:
        for r in rows:
            if r["bundled"]:
                stamp_latency(Path(r["path"]), r["latency_ms"], r["vs_default"], f"{fp['cpu']}, 1 thread, batch 1")
                log(f"stamped {r['label']}: {r['latency_ms']:.4f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
