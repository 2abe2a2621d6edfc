"""Benchmark building blocks (edge install only): device fingerprint, model latency, pipeline
stages, memory, and result files. The scripts in ``benchmarks/`` are thin wrappers over these;
the clip and the camera-like stream they run on are made by :mod:`.testmedia`."""
from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
import onnxruntime as ort

from . import __version__
from .classifier import Classifier, load_session, read_metadata
from .testmedia import MjpegTestStream, make_test_video  # noqa: F401 (the benchmark scripts take them from here)

SCHEMA_VERSION = 1


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in text.splitlines():
            if line.lower().startswith(key.lower()) and ":" in line:
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def device_fingerprint(threads: Optional[list[int]] = None) -> dict:
    """What the numbers were measured on."""
    flags = _cpu_flags()
    isa = {
        "neon": bool({"neon", "asimd"} & flags),
        "dotprod": "asimddp" in flags,
        "i8mm": "i8mm" in flags,
        "avx2": "avx2" in flags,
        "avx512_vnni": "avx512_vnni" in flags,
        "avx_vnni": "avx_vnni" in flags,
    }
    model = ""
    try:
        model = Path("/proc/device-tree/model").read_text().strip("\x00\n ")
    except OSError:
        pass
    return {
        "cpu": _cpu_model(), "board": model, "machine": platform.machine(), "cores": os.cpu_count(),
        "isa": isa, "os": platform.platform(), "python": platform.python_version(),
        "onnxruntime": ort.__version__, "opencv": cv2.__version__, "numpy": np.__version__, "emo": __version__,
        "threads": threads or [],
        "hostname": platform.node(),
    }


def stats_ms(samples: list[float]) -> dict:
    a = np.asarray(samples) * 1e3
    return {"min": float(a.min()), "median": float(np.median(a)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "runs": int(len(a))}


def model_latency(paths: list[Path], batches: list[int], threads: list[int], warmup: int = 20, runs: int = 300,
                  peers: Optional[dict[str, Callable[[np.ndarray], object]]] = None, progress: Callable[[str], None] = lambda s: None) -> list[dict]:
    """Latency of each model x batch size x thread count. Within one (batch, threads) setting,
    all models run interleaved, so their ratios are measured side by side."""
    rows = []
    rng = np.random.default_rng(0)
    for t in threads:
        sessions = {}
        for p in paths:
            s = load_session(p, threads=t)
            meta = read_metadata(s, str(p)) if p.suffix == ".onnx" else None
            sessions[p] = (s, meta)
        size = next((m.input.size for _, m in sessions.values() if m), 48)
        for b in batches:
            x = rng.standard_normal((b, 1, size, size)).astype(np.float32)
            runners = {str(p): (lambda s=s, x=x: s.run(None, {s.get_inputs()[0].name: x})) for p, (s, _) in sessions.items()}
            for name, fn in (peers or {}).items():
                if t == 1 or name.endswith("*"):
                    runners[name] = (lambda fn=fn, x=x: fn(x))
            for fn in runners.values():
                for _ in range(warmup):
                    fn()
            times = {k: [] for k in runners}
            for i in range(runs):
                for k, fn in runners.items():
                    t0 = time.perf_counter()
                    fn()
                    times[k].append(time.perf_counter() - t0)
            progress(f"threads {t} batch {b}: " + ", ".join(f"{Path(k).name} {np.median(v) * 1e3:.3f} ms" for k, v in times.items()))
            for k, v in times.items():
                st = stats_ms(v)
                meta = sessions[Path(k)][1] if Path(k) in sessions else None
                rows.append({"model": Path(k).name if Path(k) in sessions else k, "path": k,
                             "runtime": "onnxruntime" if Path(k) in sessions else "pytorch",
                             "precision": meta.precision if meta else ("ort-format" if k.endswith(".ort") else "fp32"),
                             "arch": meta.arch if meta else "", "bytes": Path(k).stat().st_size if Path(k).exists() else None,
                             "batch": b, "threads": t, **{f"{s}_ms": v for s, v in st.items() if s != "runs"}, "runs": st["runs"],
                             "per_face_median_ms": st["median"] / b, "faces_per_s": b / (st["median"] / 1e3)})
    return rows


def add_ratios(rows: list[dict]) -> None:
    """int8/fp32 and ORT/PyTorch median ratios within each (batch, threads) setting."""
    by = {}
    for r in rows:
        by.setdefault((r["batch"], r["threads"]), []).append(r)
    for group in by.values():
        fp32 = next((r for r in group if r["runtime"] == "onnxruntime" and r["precision"] == "fp32"), None)
        torch_row = next((r for r in group if r["runtime"] == "pytorch"), None)
        for r in group:
            if fp32 and r is not fp32:
                r["vs_ort_fp32"] = r["median_ms"] / fp32["median_ms"]
            if torch_row and r is not torch_row:
                r["vs_pytorch"] = r["median_ms"] / torch_row["median_ms"]


STAGES = ("decode", "detect", "preprocess", "classify", "track", "output", "total")


class _StageTimes:
    """A sink of the infer loop that keeps each frame's stage times (ms). Placed after the JSON
    writer, it also times that writer ("output") and the whole frame ("total": from one frame's
    end to the next's, so decode of the next frame included)."""

    def __init__(self, out) -> None:
        self.out = out
        self.ms: dict[str, list[float]] = {k: [] for k in STAGES}
        self._last: Optional[float] = None

    def write(self, result) -> None:
        t0 = time.perf_counter()
        self.out.write(result)
        now = time.perf_counter()
        for k, v in result.record["timing_ms"].items():
            self.ms[k].append(v)
        self.ms["output"].append((now - t0) * 1e3)
        if self._last is not None:
            self.ms["total"].append((now - self._last) * 1e3)
        self._last = now

    def close(self) -> None:
        self.out.close()


def pipeline_bench(video: Path, model: Optional[Path], detector: str, detector_model: Optional[str], threads: int,
                   max_frames: int = 0, detect_every: int = 1) -> dict:
    """Per-stage timing and end-to-end FPS of the real infer loop (decode, detect, crop,
    classify, track, JSON output to /dev/null)."""
    from .sinks.outputs import JsonLinesWriter
    from .pipeline import run
    from .recognizer import Recognizer
    from .sources import open_source

    cv2.setNumThreads(threads)
    rec = Recognizer(model=model, detector=detector, detector_model=detector_model, threads=threads, detect_every=detect_every)
    src = open_source(str(video))
    with open(os.devnull, "w") as null:
        times = _StageTimes(JsonLinesWriter(null))
        summary = run(src, str(video), rec, [times], max_frames=max_frames)
    pct = lambda v, q: float(np.percentile(v, q)) if v else 0.0  # noqa: E731
    return {"detector": detector, "threads": threads, "detect_every": detect_every, "frames": summary.frames,
            "faces": summary.faces, "frame_size": list(src.size) if src.size else None,
            "fps": summary.fps, "stages_median_ms": {k: pct(v, 50) for k, v in times.ms.items()},
            "stages_p90_ms": {k: pct(v, 90) for k, v in times.ms.items()}}


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def process_stats(pid: int) -> tuple[float, int]:
    """RSS in MB and the number of open file descriptors of a running process (Linux)."""
    rss = 0.0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def memory_bench(model: Optional[Path], video: Path, frames: int, sample_every: int = 500,
                 progress: Callable[[str], None] = lambda s: None) -> dict:
    """Cold start (model load) time, and RSS over a long run of the recognizer on a looping video.

    The clip's frames are decoded into memory first (300 frames of 640x480 are ~280 MB), so the
    absolute RSS includes them; what matters here is that it stays flat."""
    from .recognizer import Recognizer

    r0 = rss_mb()
    t0 = time.perf_counter()
    clf = Classifier(model)
    load_ms = (time.perf_counter() - t0) * 1e3
    del clf
    rec = Recognizer(model=model)
    cap_frames = []
    cap = cv2.VideoCapture(str(video))
    while True:
        ok, f = cap.read()
        if not ok:
            break
        cap_frames.append(f)
    cap.release()
    samples = []
    for i in range(frames):
        rec.process(cap_frames[i % len(cap_frames)])
        if i % sample_every == 0 or i == frames - 1:
            samples.append({"frame": i, "rss_mb": round(rss_mb(), 2)})
            progress(f"frame {i}: RSS {samples[-1]['rss_mb']:.1f} MB")
    rss = [s["rss_mb"] for s in samples]
    half = len(rss) // 2
    growth = (float(np.median(rss[half:])) - float(np.median(rss[:half] or rss))) if len(rss) > 1 else 0.0
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"model_load_ms": load_ms, "rss_before_mb": r0, "frames": frames, "samples": samples,
            "rss_growth_mb_second_half_vs_first": growth, "peak_rss_mb": peak_self}


def cli_peak_rss(args: list[str]) -> dict:
    """Peak RSS (MB) of an ``emo-edge`` run in a child process, and its wall time."""
    exe = Path(sys.executable).parent / "emo-edge"
    cmd = [str(exe) if exe.exists() else "emo-edge", *args]
    t0 = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"command": " ".join(cmd), "returncode": r.returncode, "peak_rss_mb": max(before, after) / 1024,
            "seconds": time.perf_counter() - t0, "stderr_tail": r.stderr[-300:]}


def save_result(result: dict, out: Path, md: str, name: str) -> None:
    """Write the JSON result (stamped with the schema version) and its Markdown table next to it;
    print the table on stdout."""
    from .files import atomic_write_text

    result = {"schema": SCHEMA_VERSION, **result}
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2))
    atomic_write_text(out.with_suffix(".md"), md)
    print(md)
    print(f"{name}: wrote {out} and {out.with_suffix('.md')}", file=sys.stderr, flush=True)


def fingerprint_md(fp: dict) -> str:
    isa = ", ".join(k for k, v in fp["isa"].items() if v) or "none detected"
    return (f"Device: {fp['cpu']}{' (' + fp['board'] + ')' if fp.get('board') else ''}, {fp['cores']} cores, {fp['machine']}; "
            f"ISA: {isa}; {fp['os']}; Python {fp['python']}, onnxruntime {fp['onnxruntime']}, OpenCV {fp['opencv']}\n")


def latency_md(rows: list[dict]) -> str:
    head = "| model | runtime | precision | batch | threads | min ms | median ms | p90 ms | p99 ms | per face ms | faces/s | vs ORT fp32 | vs PyTorch |\n"
    head += "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    f = lambda v: f"{v:.2f}" if isinstance(v, float) else ""  # noqa: E731
    for r in rows:
        head += (f"| {r['model']} | {r['runtime']} | {r['precision']} | {r['batch']} | {r['threads']} | {r['min_ms']:.3f} | "
                 f"{r['median_ms']:.3f} | {r['p90_ms']:.3f} | {r['p99_ms']:.3f} | {r['per_face_median_ms']:.3f} | "
                 f"{r['faces_per_s']:.0f} | {f(r.get('vs_ort_fp32'))} | {f(r.get('vs_pytorch'))} |\n")
    return head


def pipeline_md(rows: list[dict]) -> str:
    keys = ["decode", "detect", "preprocess", "classify", "track", "output", "total"]
    s = "| detector | threads | detect every | frames | faces | FPS | " + " | ".join(f"{k} ms" for k in keys) + " |\n"
    s += "|" + "---|" * (6 + len(keys)) + "\n"
    for r in rows:
        s += (f"| {r['detector']} | {r['threads']} | {r['detect_every']} | {r['frames']} | {r['faces']} | {r['fps']:.1f} | "
              + " | ".join(f"{r['stages_median_ms'][k]:.2f}" for k in keys) + " |\n")
    return s
