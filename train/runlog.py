"""What a run folder says about its training: log.csv, metrics.json and the PNG plots."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from emo.edge_runtime.files import atomic_write_text


def write_logs(run_dir: Path, history: list[dict], best: dict, val_report: dict | None, plots: bool) -> None:
    """Rewrite the run's logs from its history (one row per epoch), each file atomically."""
    buf = io.StringIO(newline="")
    if history:
        w = csv.DictWriter(buf, fieldnames=list(history[0].keys()))
        w.writeheader()
        w.writerows(history)
    atomic_write_text(run_dir / "log.csv", buf.getvalue())
    atomic_write_text(run_dir / "metrics.json", json.dumps({"best": best, "history": history, "val_report": val_report}, indent=2))
    if plots and history:
        try:
            from .plots import plot_confusion, plot_curves
        except ImportError:  # matplotlib missing: the plots are optional
            return
        plot_curves(history, run_dir / "curves.png")
        if val_report:
            plot_confusion(val_report, run_dir / "confusion.png")
