#!/usr/bin/env python3
"""Soak: a long `emo-edge infer` run on a live stream that drops out and comes back.

A local MJPEG-over-HTTP server loops the test video (a real face) at --fps; every --drop-every
seconds it cuts the connection and refuses new ones for --down seconds, like a network camera
that reboots. A real `emo-edge infer http://127.0.0.1:PORT/live.mjpg` process reads it; every
--sample seconds this script records the frames it has printed, its reconnects, its RSS and its
open file descriptors. Goal: flat RSS and descriptors over the whole run, every drop recovered.

    python benchmarks/soak.py --minutes 30
    python benchmarks/soak.py --quick          # 1 minute, a smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from emo.edge_runtime.bench import (MjpegTestStream, device_fingerprint, fingerprint_md, make_test_video, process_stats,
                                    save_result)

REPO = Path(__file__).resolve().parents[1]


def run_and_sample(cmd: list[str], minutes: float, every: float, log) -> tuple[list, dict, list, bool, int]:
    """Run ``cmd`` (emo-edge infer, JSON Lines on stdout) for ``minutes``, sampling its frames,
    reconnects, RSS and descriptors every ``every`` seconds; then SIGTERM it.
    Returns (samples, counts, error lines, alive at the end, exit status)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    counts = {"frames": 0, "faces": 0, "reconnects": 0, "dropouts": 0}
    errors: list[str] = []

    def read_out():
        for line in p.stdout:
            rec = json.loads(line)
            counts["frames"] += 1
            counts["faces"] += len(rec["faces"])

    def read_err():
        for line in p.stderr:
            if "is back" in line:
                counts["reconnects"] += 1
            elif "dropped out" in line and "attempt 1/" in line:
                counts["dropouts"] += 1
            elif "warning" not in line:
                errors.append(line.strip())

    for fn in (read_out, read_err):
        threading.Thread(target=fn, daemon=True).start()
    samples, t0 = [], time.monotonic()
    end = t0 + minutes * 60
    while time.monotonic() < end and p.poll() is None:
        time.sleep(min(every, max(0.0, end - time.monotonic())))
        if p.poll() is not None:
            break
        rss, fds = process_stats(p.pid)
        samples.append({"t_s": round(time.monotonic() - t0, 1), "frames": counts["frames"], "reconnects": counts["reconnects"],
                        "rss_mb": round(rss, 1), "fds": fds})
        log(f"{samples[-1]}")
    alive = p.poll() is None
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = p.wait()
    return samples, counts, errors, alive, rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--fps", type=float, default=10.0, help="frames per second the stream sends")
    ap.add_argument("--drop-every", type=float, default=60.0, help="seconds between drop-outs")
    ap.add_argument("--down", type=float, default=5.0, help="seconds the stream stays down")
    ap.add_argument("--sample", type=float, default=15.0, help="seconds between samples")
    ap.add_argument("--photo", type=Path, default=REPO / "examples" / "astronaut.png")
    ap.add_argument("--quick", action="store_true", help="1 minute, drop every 20 s: a smoke test")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results") / f"soak-{os.uname().nodename}.json")
    a = ap.parse_args(argv)
    if a.quick:
        a.minutes, a.drop_every, a.down, a.sample = 1.0, 20.0, 3.0, 5.0
    log = lambda s: print(f"soak: {s}", file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as td:
        video = make_test_video(a.photo, Path(td) / "clip.avi", frames=150)
        stream = MjpegTestStream.of_video(video, fps=a.fps, schedule=lambda t: t % a.drop_every < a.drop_every - a.down)
    exe = Path(sys.executable).parent / "emo-edge"
    cmd = [str(exe) if exe.exists() else "emo-edge", "infer", stream.url, "--format", "json", "--reconnect", "1000",
           "--timeout", "5"]
    log(" ".join(cmd))
    try:
        samples, counts, errors, alive, rc = run_and_sample(cmd, a.minutes, a.sample, log)
    finally:
        stream.close()
    rss = [s["rss_mb"] for s in samples]
    fds = [s["fds"] for s in samples]
    q = max(1, len(samples) // 4)
    result = {
        "benchmark": "soak", "quick": a.quick, "device": device_fingerprint([1]), "command": cmd,
        "minutes": a.minutes, "stream_fps": a.fps, "drop_every_s": a.drop_every, "down_s": a.down,
        "alive_at_end": alive, "exit_code_after_sigterm": rc, **counts, "errors": errors[-5:],
        "rss_mb_first_quarter_median": float(np.median(rss[:q])) if rss else None,
        "rss_mb_last_quarter_median": float(np.median(rss[-q:])) if rss else None,
        "fds_min_max": [min(fds), max(fds)] if fds else None, "samples": samples,
    }
    ok = alive and rc == 143 and bool(samples) and counts["reconnects"] >= counts["dropouts"] - 1
    md = ("# Soak: live stream with drop-outs\n\n" + fingerprint_md(result["device"])
          + f"\n{a.minutes:g} min, stream {a.fps:g} fps, down {a.down:g} s every {a.drop_every:g} s. "
          f"Alive at the end: {alive}; exit after SIGTERM: {rc}.\n\n| measure | value |\n|---|---|\n"
          f"| frames processed | {counts['frames']} |\n| faces | {counts['faces']} |\n"
          f"| drop-outs / reconnects | {counts['dropouts']} / {counts['reconnects']} |\n"
          f"| RSS median, first / last quarter | {result['rss_mb_first_quarter_median']} / {result['rss_mb_last_quarter_median']} MB |\n"
          f"| open descriptors, min / max | {result['fds_min_max']} |\n\n"
          "| t (s) | frames | reconnects | RSS MB | fds |\n|---|---|---|---|---|\n"
          + "".join(f"| {s['t_s']} | {s['frames']} | {s['reconnects']} | {s['rss_mb']} | {s['fds']} |\n" for s in samples))
    save_result(result, a.out, md, "soak")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
