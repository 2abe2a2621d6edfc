"""The three device benchmarks as functions: model latency, the whole pipeline, memory.

`emo-edge bench model|pipeline|memory` and benchmarks/bench_*.py both call these, so the two
give the same numbers. Each returns ``(result, markdown)``; :func:`bench.save_result` writes them.
"""
from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

from .bench import (add_ratios, cli_peak_rss, device_fingerprint, fingerprint_md, latency_md, memory_bench,
                    model_latency, pipeline_bench, pipeline_md)
from .classifier import default_model_path
from .errors import EmoError
from .files import shown
from .testmedia import make_test_video

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def run_model_bench(models: list[Path], batches: list[int], threads: Optional[list[int]] = None, runs: int = 500,
                    warmup: int = 30, quick: bool = False, peers: Optional[dict] = None, log: Log = _quiet) -> tuple[dict, str]:
    """Classifier latency per model, batch and thread count (``quick``: batch 1 and 4, 1 thread, 30 runs)."""
    models = models or [default_model_path()]
    for m in models:
        if not Path(m).is_file():
            raise EmoError(f"model file {shown(m)} does not exist")
    cores = os.cpu_count() or 1
    threads = threads or sorted({1, *[t for t in (2, 4, 8) if t <= cores], cores})
    if quick:
        threads, batches, runs, warmup = [1], [1, 4], 30, 5
    log(f"{len(models)} model(s), batches {batches}, threads {threads}, {runs} runs each")
    t0 = time.time()
    rows = model_latency(models, batches, threads, warmup, runs, peers or {}, progress=log)
    add_ratios(rows)
    fp = device_fingerprint(threads)
    result = {"benchmark": "model_latency", "quick": quick, "device": fp, "settings":
              {"batches": batches, "threads": threads, "runs": runs, "warmup": warmup}, "rows": rows,
              "seconds": time.time() - t0}
    return result, "# Model latency\n\n" + fingerprint_md(fp) + "\n" + latency_md(rows)


def _photo(photo: Path) -> Path:
    if not Path(photo).is_file():
        raise EmoError(f"no photo {shown(photo)} to build the test clip from; give --photo with a face in it (or --video)")
    return photo


def run_pipeline_bench(model: Optional[Path], video: Optional[Path], photo: Path, frames: int = 600,
                       threads: tuple[int, ...] = (1,), detect_every: tuple[int, ...] = (1,), yunet: Optional[str] = None,
                       quick: bool = False, log: Log = _quiet) -> tuple[dict, str]:
    """Frames per second of the whole loop (decode, detect, crop, classify) per detector, thread count and
    detect-every; without ``video``, on a clip built from ``photo`` (``quick``: 60 frames)."""
    frames = 60 if quick else frames
    with tempfile.TemporaryDirectory() as td:
        clip = video
        if clip is None:
            log(f"building a 640x480 test clip ({frames} frames) from {photo}")
            clip = make_test_video(_photo(photo), Path(td) / "clip.avi", frames=frames)
        elif not Path(clip).is_file():
            raise EmoError(f"video {shown(clip)} does not exist")
        rows = []
        for det, dm in [("haar", None)] + ([("yunet", yunet)] if yunet else []):
            for t in threads:
                for de in detect_every:
                    log(f"{det}, {t} thread(s), detect every {de}...")
                    r = pipeline_bench(clip, model, det, dm, t, frames, de)
                    log(f"  {r['fps']:.1f} FPS, {r['faces']} faces in {r['frames']} frames")
                    rows.append(r)
    fp = device_fingerprint(sorted(set(threads)))
    result = {"benchmark": "pipeline", "quick": quick, "device": fp, "video": str(video or f"built from {photo}"),
              "rows": rows}
    return result, "# Pipeline\n\n" + fingerprint_md(fp) + "\n" + pipeline_md(rows)


def run_memory_bench(model: Optional[Path], photo: Path, frames: int = 10_000, quick: bool = False,
                     log: Log = _quiet) -> tuple[dict, str]:
    """Peak RSS of `emo-edge infer`, model load time and RSS over many frames (``quick``: 300 frames)."""
    frames = 300 if quick else frames
    with tempfile.TemporaryDirectory() as td:
        video = make_test_video(_photo(photo), Path(td) / "clip.avi", frames=min(frames, 300))
        log("peak RSS of `emo-edge infer` on the clip...")
        cli = cli_peak_rss(["infer", str(video), "--format", "json"] + (["--model", str(model)] if model else []))
        log(f"  {cli['peak_rss_mb']:.1f} MB")
        log(f"recognizer over {frames} frames...")
        mem = memory_bench(model, video, frames, sample_every=max(1, frames // 20), progress=log)
    fp = device_fingerprint([1])
    result = {"benchmark": "memory", "quick": quick, "device": fp, "cli": cli, **mem}
    md = ("# Memory\n\n" + fingerprint_md(fp) + "\n| measure | value |\n|---|---|\n"
          f"| model load (cold start) | {mem['model_load_ms']:.1f} ms |\n"
          f"| peak RSS, `emo-edge infer` ({min(frames, 300)}-frame clip) | {cli['peak_rss_mb']:.1f} MB |\n"
          f"| RSS after frame 0 / last frame ({frames} frames) | {mem['samples'][0]['rss_mb']:.1f} / {mem['samples'][-1]['rss_mb']:.1f} MB |\n"
          f"| RSS growth, 2nd half vs 1st half (median) | {mem['rss_growth_mb_second_half_vs_first']:+.2f} MB |\n")
    return result, md
