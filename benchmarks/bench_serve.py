#!/usr/bin/env python3
"""`emo-edge serve` under viewers: does watching cost the pipeline its speed, and does memory stay flat?

1. Pipeline FPS at --threads 1 with 0, 1 and 10 MJPEG viewers, on a long 640x480 clip of a real
   face. The three settings are interleaved in rounds (0, 1, 10, 0, 1, 10, ...) within one run,
   and each is read from the server's own frame counter (/metrics), so the ratios are side by side.
2. RSS and open descriptors of the server over --minutes, on a live stream, while viewers keep
   connecting and disconnecting (and one in five stalls without reading).

    python benchmarks/bench_serve.py                 # 3 rounds of 8 s, then 10 minutes of churn
    python benchmarks/bench_serve.py --quick         # 1 round of 4 s, 1 minute
"""
from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import signal
import socket
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


def start_server(source: str, *extra: str) -> tuple[subprocess.Popen, int]:
    exe = Path(sys.executable).parent / "emo-edge"
    p = subprocess.Popen([str(exe) if exe.exists() else "emo-edge", "serve", source, "--port", "0", "--threads", "1", *extra],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline()
    while "serving http" not in line:
        if p.poll() is not None:
            raise SystemExit(f"bench_serve: the server did not start: {line}{p.stderr.read()}")
        line = p.stderr.readline()
    threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()  # keep draining stderr
    return p, int(re.search(r":(\d+)/", line).group(1))


def frames_total(port: int) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return float(re.search(r"^emo_frames_total (\S+)$", text, re.M).group(1))


class Viewer(threading.Thread):
    """An MJPEG client that reads (and counts) parts until told to stop; ``stall`` never reads."""

    def __init__(self, port: int, stall: bool = False):
        super().__init__(daemon=True)
        self.port, self.stall, self.stop, self.parts = port, stall, threading.Event(), 0

    def run(self) -> None:
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
            s.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: bench\r\n\r\n")
            while not self.stop.is_set():
                if self.stall:
                    self.stop.wait(0.5)
                    continue
                b = s.recv(65536)
                if not b:
                    break
                self.parts += b.count(b"--frame")
            s.close()
        except OSError:
            pass


def fps_rounds(port: int, rounds: int, seconds: float, log) -> dict:
    out = {0: [], 1: [], 10: []}
    for r in range(rounds):
        for n in (0, 1, 10):
            viewers = [Viewer(port) for _ in range(n)]
            for v in viewers:
                v.start()
            time.sleep(1.0)  # let them connect
            f0, t0 = frames_total(port), time.monotonic()
            time.sleep(seconds)
            fps = (frames_total(port) - f0) / (time.monotonic() - t0)
            if fps == 0:
                raise SystemExit("bench_serve: the clip ran out before the rounds ended; raise its frame count")
            for v in viewers:
                v.stop.set()
            out[n].append(fps)
            log(f"round {r + 1}: {n} viewer(s): {fps:.1f} FPS" + (f", parts read {sum(v.parts for v in viewers)}" if n else ""))
            time.sleep(0.5)
    return out


def churn(pid: int, port: int, minutes: float, sample: float, log) -> list[dict]:
    rng = random.Random(0)
    samples, live = [], []
    t0 = time.monotonic()
    next_sample = t0
    while time.monotonic() - t0 < minutes * 60:
        if live and rng.random() < 0.5:
            live.pop(rng.randrange(len(live))).stop.set()
        if len(live) < 12:
            v = Viewer(port, stall=rng.random() < 0.2)
            v.start()
            live.append(v)
        if time.monotonic() >= next_sample:
            rss, fds = process_stats(pid)
            samples.append({"t_s": round(time.monotonic() - t0, 1), "frames": frames_total(port), "viewers": len(live),
                            "rss_mb": round(rss, 1), "fds": fds})
            log(str(samples[-1]))
            next_sample += sample
        time.sleep(0.5)
    for v in live:
        v.stop.set()
    return samples


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", type=Path, default=REPO / "examples" / "astronaut.png")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=8.0, help="measuring time per setting and round")
    ap.add_argument("--minutes", type=float, default=10.0, help="length of the RSS run with viewer churn")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results") / f"serve-{os.uname().nodename}.json")
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.seconds, a.minutes = 1, 4.0, 1.0
    log = lambda s: print(f"bench_serve: {s}", file=sys.stderr, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as td:
        n = int(a.rounds * 3 * (a.seconds + 1.5) * 150) + 300  # more frames than the rounds can use, at up to 150 FPS
        video = make_test_video(a.photo, Path(td) / "long.avi", frames=n)
        p, port = start_server(str(video), "--stream-fps", "10", "--fast")  # as fast as it can: the FPS is the measure
        try:
            time.sleep(2.0)
            fps = fps_rounds(port, a.rounds, a.seconds, log)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(20)
        stream = MjpegTestStream.of_video(make_test_video(a.photo, Path(td) / "loop.avi", frames=60), fps=15)
        p, port = start_server(stream.url, "--stream-fps", "10")
        try:
            samples = churn(p.pid, port, a.minutes, max(5.0, a.minutes * 60 / 40), log)
        finally:
            p.send_signal(signal.SIGTERM)
            p.wait(20)
            stream.close()
    med = {k: float(np.median(v)) for k, v in fps.items()}
    rss = [s["rss_mb"] for s in samples]
    q = max(1, len(rss) // 4)
    result = {"benchmark": "serve", "quick": a.quick, "device": device_fingerprint([1]),
              "fps_by_viewers": {str(k): v for k, v in fps.items()}, "fps_median": {str(k): v for k, v in med.items()},
              "ratio_10_viewers": med[10] / med[0], "ratio_1_viewer": med[1] / med[0], "churn_minutes": a.minutes,
              "rss_mb_first_quarter_median": float(np.median(rss[:q])), "rss_mb_last_quarter_median": float(np.median(rss[-q:])),
              "fds_min_max": [min(s["fds"] for s in samples), max(s["fds"] for s in samples)], "samples": samples}
    md = ("# emo-edge serve: viewers vs pipeline speed, and memory\n\n" + fingerprint_md(result["device"])
          + f"\nPipeline at --threads 1 on a 640x480 clip, stream 10 FPS; medians of {a.rounds} interleaved rounds of "
          f"{a.seconds:g} s.\n\n| MJPEG viewers | FPS (median) | vs no viewer | rounds |\n|---|---|---|---|\n"
          + "".join(f"| {k} | {med[k]:.1f} | {med[k] / med[0]:.1%} | {', '.join(f'{x:.1f}' for x in fps[k])} |\n" for k in (0, 1, 10))
          + f"\n{a.minutes:g} min of viewer churn on a live 15 FPS stream (up to 12 viewers, one in five stalled): RSS median "
          f"first / last quarter {result['rss_mb_first_quarter_median']:.1f} / {result['rss_mb_last_quarter_median']:.1f} MB, "
          f"open descriptors {result['fds_min_max'][0]}-{result['fds_min_max'][1]}.\n\n"
          "| t (s) | frames | viewers | RSS MB | fds |\n|---|---|---|---|---|\n"
          + "".join(f"| {s['t_s']} | {s['frames']:.0f} | {s['viewers']} | {s['rss_mb']} | {s['fds']} |\n" for s in samples))
    save_result(result, a.out, md, "bench_serve")
    return 0


if __name__ == "__main__":
    sys.exit(main())
