#!/usr/bin/env python3
"""`emo-edge analyze` throughput and memory.

1. Real-time factor: seconds of 640x480 30 fps video analysed per second of wall time, for
   --workers 1 and 2 x --detect-every 1 and 3, on a batch of clips of a real face (the command
   as a user runs it, process start-up included; --force, so every run does the work).
2. RSS of `emo-edge analyze` over one long video (default 10 minutes: 18,000 frames), sampled
   every second: it must stay flat, because rows stream to disk and tracks keep running sums.

    nice -n 10 python benchmarks/bench_analyze.py              # 2 clips of 20 s, then a 10-minute video
    python benchmarks/bench_analyze.py --quick                   # 2 clips of 4 s, a 1-minute video

Goal (issue 19): at least 4x real time with 2 workers and --detect-every 3. "CPU s" is the CPU
time of the command and its workers: on a machine shared with other work the wall time depends
on the load, the CPU time much less, so "video s per CPU s" x cores bounds what an idle machine does.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from emo.edge_runtime.bench import device_fingerprint, fingerprint_md, make_test_video, process_stats, save_result

REPO = Path(__file__).resolve().parents[1]
FPS = 30.0


def emo_edge() -> str:
    exe = Path(sys.executable).parent / "emo-edge"
    return str(exe) if exe.exists() else "emo-edge"


def throughput(videos: list[Path], out: Path, workers: int, detect_every: int, extra: list[str]) -> dict:
    seconds_of_video = sum(_frames(v) for v in videos) / FPS
    cmd = [emo_edge(), "analyze", *map(str, videos), "--out", str(out), "--workers", str(workers),
           "--detect-every", str(detect_every), "--force", "--no-progress", *extra]
    load = os.getloadavg()[0]
    cpu0 = _children_cpu()
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    cpu = _children_cpu() - cpu0  # the command and its worker processes, whatever else the machine runs
    if r.returncode != 0:
        raise SystemExit(f"bench_analyze: {' '.join(cmd)} failed ({r.returncode}): {r.stderr[-500:]}")
    summaries = [json.loads((out / v.stem / "summary.json").read_text()) for v in videos]
    frames = sum(s["frames"]["processed"] for s in summaries)
    return {"detector": summaries[0]["detector"]["name"], "detect_size": summaries[0]["detector"]["detect_size"],
            "workers": workers, "detect_every": detect_every, "videos": len(videos), "video_seconds": seconds_of_video,
            "frames": frames, "wall_seconds": round(wall, 2), "realtime_factor": round(seconds_of_video / wall, 2),
            "fps": round(frames / wall, 1), "load_before": round(load, 2), "cpu_seconds": round(cpu, 2),
            "video_seconds_per_cpu_second": round(seconds_of_video / cpu, 2)}


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _frames(video: Path) -> int:
    import cv2

    cap = cv2.VideoCapture(str(video))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    return n


def memory(video: Path, out: Path, detect_every: int, extra: list[str], log) -> dict:
    """RSS of one analyze process over the whole video, sampled every second."""
    cmd = [emo_edge(), "analyze", str(video), "--out", str(out), "--detect-every", str(detect_every), "--force", "--no-progress",
           *extra]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    samples = []
    while p.poll() is None:
        try:
            rss, fds = process_stats(p.pid)
        except OSError:
            break
        samples.append({"t": round(time.perf_counter() - t0, 1), "rss_mb": round(rss, 1), "fds": fds})
        if len(samples) % 30 == 0:
            log(f"memory: {samples[-1]['t']:.0f} s, RSS {rss:.1f} MB")
        time.sleep(1.0)
    err = p.stderr.read()
    if p.wait() != 0:
        raise SystemExit(f"bench_analyze: {' '.join(cmd)} failed: {err[-500:]}")
    summary = json.loads((out / video.stem / "summary.json").read_text())
    rss = [s["rss_mb"] for s in samples][max(1, len(samples) // 10):]  # after start-up (model load, first frames)
    half = len(rss) // 2
    return {"video_seconds": summary["timing"]["video_seconds"], "frames": summary["frames"]["processed"],
            "rows": summary["frames"]["rows"], "detect_every": detect_every,
            "wall_seconds": round(time.perf_counter() - t0, 1), "samples": samples,
            "rss_first_half_median_mb": float(np.median(rss[:half])) if half else None,
            "rss_second_half_median_mb": float(np.median(rss[half:])) if rss else None,
            "rss_growth_mb": float(np.median(rss[half:]) - np.median(rss[:half])) if half else None,
            "rss_max_mb": max(rss) if rss else None, "rss_min_mb": min(rss) if rss else None,
            "frames_csv_bytes": summary["outputs"]["frames.csv"]}


def to_md(res: dict) -> str:
    s = "# emo-edge analyze\n\n" + fingerprint_md(res["device"]) + "\n"
    s += f"Command: `{res['command']}`. {res['note']}\n\n"
    s += ("| detector | workers | detect every | videos | video s | frames | wall s | FPS | real-time factor | load before "
          "| CPU s | video s per CPU s |\n")
    s += "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    for r in res["throughput"]:
        size = f" ({r['detect_size']} px)" if r.get("detect_size") else ""
        s += (f"| {r['detector']}{size} | {r['workers']} | {r['detect_every']} | {r['videos']} | {r['video_seconds']:.0f} | {r['frames']} | "
              f"{r['wall_seconds']:.1f} | {r['fps']:.1f} | **{r['realtime_factor']:.1f}x** | {r['load_before']} | "
              f"{r['cpu_seconds']:.1f} | {r['video_seconds_per_cpu_second']:.2f} |\n")
    m = res.get("memory")
    if m:
        f = lambda v, sign="": "n/a" if v is None else f"{v:{sign}.1f}"  # noqa: E731 - too short a run has no halves
        s += (f"\nMemory over one {m['video_seconds'] / 60:.0f}-minute video ({m['frames']} frames, {m['rows']} rows, "
              f"frames.csv {m['frames_csv_bytes'] / 2**20:.1f} MiB, --detect-every {m['detect_every']}, "
              f"{m['wall_seconds']:.0f} s): RSS median {f(m['rss_first_half_median_mb'])} MB in the first half, "
              f"{f(m['rss_second_half_median_mb'])} MB in the second (growth {f(m['rss_growth_mb'], '+')} MB); "
              f"min {f(m['rss_min_mb'])}, max {f(m['rss_max_mb'])} MB over {len(m['samples'])} samples.\n")
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", type=Path, default=REPO / "examples" / "astronaut.png")
    ap.add_argument("--clips", type=int, default=2, help="clips in the throughput batch")
    ap.add_argument("--clip-seconds", type=float, default=20)
    ap.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--detect-every", nargs="+", type=int, default=[1, 3])
    ap.add_argument("--memory-minutes", type=float, default=10, help="length of the long video (0: skip)")
    ap.add_argument("--memory-detect-every", type=int, default=3)
    ap.add_argument("--detector", default="auto", help="passed to emo-edge analyze (auto: YuNet when fetched, else Haar)")
    ap.add_argument("--quick", action="store_true", help="clips of 4 s and a 1-minute video: a smoke test")
    ap.add_argument("--note", default="", help="added to the result (e.g. what else ran on the machine)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results") / f"analyze-{os.uname().nodename}.json")
    a = ap.parse_args(argv)
    if a.quick:
        a.clip_seconds, a.memory_minutes = 4, min(a.memory_minutes, 1)
    log = lambda s: print(f"bench_analyze: {s}", file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as td:
        td = Path(td)
        log(f"building {a.clips} clip(s) of {a.clip_seconds:g} s (640x480, 30 fps) from {a.photo}")
        first = make_test_video(a.photo, td / "clip1.avi", frames=int(a.clip_seconds * FPS), fps=FPS)
        clips = [first] + [Path(shutil.copy(first, td / f"clip{i}.avi")) for i in range(2, a.clips + 1)]
        rows = []
        for de in a.detect_every:
            for w in a.workers:
                rows.append(throughput(clips, td / "out", w, de, ["--detector", a.detector]))
                r = rows[-1]
                log(f"workers {w}, detect every {de}: {r['video_seconds']:.0f} s of video in {r['wall_seconds']:.1f} s = "
                    f"{r['realtime_factor']:.1f}x real time")
        mem = None
        if a.memory_minutes > 0:
            n = int(a.memory_minutes * 60 * FPS)
            log(f"building a {a.memory_minutes:g}-minute video ({n} frames)")
            long_video = make_test_video(a.photo, td / "long.avi", frames=n, fps=FPS)
            for c in clips[1:]:
                c.unlink()
            mem = memory(long_video, td / "out", a.memory_detect_every, ["--detector", a.detector], log)
    res = {"device": device_fingerprint(), "command": "python " + " ".join(["benchmarks/bench_analyze.py", *sys.argv[1:]]),
           "note": ("The 'load before' column is the 1-minute load average when each run started: on a machine "
                    "shared with other work, compare rows with it in mind. " + a.note).strip(),
           "throughput": rows, "memory": mem}
    save_result(res, a.out, to_md(res), "bench_analyze")
    return 0


if __name__ == "__main__":
    sys.exit(main())
