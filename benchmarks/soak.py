#!/usr/bin/env python3
"""Soak: a long `emo-edge infer` (or, with --serve, `emo-edge serve`) run on a live stream that
drops out and comes back.

A local MJPEG-over-HTTP server loops the test video (a real face) at --fps; every --drop-every
seconds it cuts the connection and refuses new ones for --down seconds, like a network camera
that reboots. A real `emo-edge infer http://127.0.0.1:PORT/live.mjpg` process reads it; every
--sample seconds this script records the frames it has printed, its reconnects, its RSS and its
open file descriptors. Goal: flat RSS and descriptors over the whole run, every drop recovered.

--serve runs two `emo-edge serve` processes instead: one on that stream (which is also absent for
its first --down seconds, a camera not plugged in at boot), one on a 10 s video file that ends
and is then held. --viewers clients come and go between them: page loads with the MJPEG stream,
server-sent events, and stalled clients that connect and never read. Every viewer must get a
frame within 2 s; RSS, threads and descriptors of both servers must stay flat, and every stream
slot must be free again once the viewers have gone.

    python benchmarks/soak.py --minutes 30
    python benchmarks/soak.py --quick          # 1 minute, a smoke test
    python benchmarks/soak.py --serve --minutes 30
"""
from __future__ import annotations

import argparse
import http.client
import json
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


# --- the serve soak ----------------------------------------------------------------------------------

FIRST_FRAME_S = 2.0  # every viewer must get a frame this soon
MJPEG_PART = re.compile(rb"Content-Length: (\d+)\r\nX-Emo-Frame: (-?\d+)\r\n\r\n")
SSE_EVENT = re.compile(rb"data: [^\n]*\n\n")


def start_serve(source: str, *extra: str) -> tuple[subprocess.Popen, int, list]:
    """`emo-edge serve SOURCE` on a free port; (process, port, its stderr lines so far, kept up to date)."""
    exe = Path(sys.executable).parent / "emo-edge"
    p = subprocess.Popen([str(exe) if exe.exists() else "emo-edge", "serve", source, "--port", "0", "--threads", "1",
                          "--stream-fps", "10", *extra], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    line = p.stderr.readline()
    while "serving http" not in line:
        if p.poll() is not None:
            raise SystemExit(f"soak: serve did not start: {line}{p.stderr.read()}")
        lines.append(line)
        line = p.stderr.readline()
    lines.append(line)
    threading.Thread(target=lambda: lines.extend(p.stderr), daemon=True).start()
    return p, int(re.search(r":(\d+)/", line).group(1)), lines


def server_sample(p: subprocess.Popen, port: int) -> dict:
    """RSS, threads and descriptors of a serve process, and what its /api/status says."""
    rss, fds = process_stats(p.pid)
    with open(f"/proc/{p.pid}/status") as fh:
        threads = next(int(x.split()[1]) for x in fh if x.startswith("Threads:"))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/api/status")
    st = json.loads(conn.getresponse().read())
    conn.close()
    return {"rss_mb": round(rss, 1), "threads": threads, "fds": fds, "streams": st["streams"], "viewers": st["viewers"],
            "health": st["health"], "frames": st["frames"], "reconnects": st["reconnects"]}


def latest_status(port: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", "/api/latest")
    status = conn.getresponse().status
    conn.close()
    return status


class Viewer(threading.Thread):
    """One of the viewers: again and again, picks a server and a way to watch (a page load with the
    MJPEG stream, server-sent events, or a stalled client that never reads), watches a while, leaves.
    While ``leave`` is set it stays away (and cuts a visit short)."""

    def __init__(self, ports: dict, seed: int, stop: threading.Event, leave: threading.Event, visits: list,
                 lock: threading.Lock):
        super().__init__(daemon=True)
        self.ports, self.rng, self.stop, self.leave = ports, random.Random(seed), stop, leave
        self.visits, self.lock, self.away = visits, lock, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if self.leave.is_set():
                self.away.set()
                self.stop.wait(0.2)
                continue
            self.away.clear()
            name = self.rng.choice(sorted(self.ports))
            kind = self.rng.choices(("page", "events", "stalled"), weights=(6, 2, 2))[0]
            try:
                visit = self.visit(self.ports[name], kind, self.rng.uniform(1, 15) if kind != "stalled" else self.rng.uniform(5, 30))
            except OSError as e:
                visit = {"first_s": None, "error": f"{type(e).__name__}: {e}"}
            with self.lock:
                self.visits.append({"t": time.monotonic(), "server": name, "kind": kind, **visit})
            self.leave.wait(self.rng.uniform(0, 3))
        self.away.set()

    def visit(self, port: int, kind: str, seconds: float) -> dict:
        if kind == "page":
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/")
            if conn.getresponse().status != 200:
                return {"first_s": None, "error": "page not 200"}
            conn.close()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            t0 = time.monotonic()
            s.sendall(b"GET %s HTTP/1.1\r\nHost: soak\r\n\r\n" % (b"/api/events" if kind == "events" else b"/stream.mjpg"))
            if kind == "stalled":
                self.leave.wait(seconds)
                return {"first_s": None}
            first, status = self.first_frame(s, kind, t0)
            end = time.monotonic() + seconds
            try:
                while first is not None and time.monotonic() < end and not self.leave.is_set() and s.recv(65536):
                    pass
            except OSError as e:  # after its first frame: noted, not a late frame
                return {"first_s": first, "status": status, "error": f"{type(e).__name__}: {e}"}
        if first is None and kind == "events" and latest_status(port) == 503:
            return {"first_s": None, "status": status, "no_record_yet": True}  # nothing to send before the first frame
        return {"first_s": first, "status": status}

    @staticmethod
    def first_frame(s: socket.socket, kind: str, t0: float) -> tuple:
        """(seconds to the first whole JPEG or event, or None when none came within FIRST_FRAME_S; status line)."""
        buf = b""
        while time.monotonic() - t0 < FIRST_FRAME_S:
            s.settimeout(max(0.01, FIRST_FRAME_S - (time.monotonic() - t0)))
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
            m = MJPEG_PART.search(buf) if kind == "page" else SSE_EVENT.search(buf)
            if m and (kind != "page" or len(buf) >= m.end() + int(m.group(1))):
                s.settimeout(5)
                return round(time.monotonic() - t0, 3), buf.split(b"\r\n", 1)[0].decode(errors="replace")
        return None, buf.split(b"\r\n", 1)[0].decode(errors="replace")


def serve_soak(a, log) -> int:
    with tempfile.TemporaryDirectory() as td:
        clip = make_test_video(a.photo, Path(td) / "ends.avi", frames=100, fps=10)  # 10 s, then held
        loop = make_test_video(a.photo, Path(td) / "loop.avi", frames=150)
        stream = MjpegTestStream.of_video(loop, fps=a.fps, schedule=lambda t: t >= a.down and t % a.drop_every < a.drop_every - a.down)
        servers = {"camera": start_serve(stream.url), "file": start_serve(str(clip))}
        log(f"camera-like stream {stream.url} (absent for the first {a.down:g} s); file {clip}")
        try:
            result = run_serve_soak(a, servers, log)
        finally:
            for p, _, _ in servers.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p, _, _ in servers.values():
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
            stream.close()
    camera_log = "".join(servers["camera"][2])
    result["camera_absent_at_start"] = {"said_not_found": "not found, retrying" in camera_log, "came_back": " is here " in camera_log}
    result["exit_codes"] = {name: p.returncode for name, (p, _, _) in servers.items()}
    result["errors"] = [x.strip() for _, _, lines in servers.values() for x in lines
                        if "Traceback" in x or "error" in x or "request failed" in x][:5]
    result["ok"] = (result["ok"] and all(c == 143 for c in result["exit_codes"].values()) and not result["errors"]
                    and all(result["camera_absent_at_start"].values()))
    save_result(result, a.out, serve_soak_md(result), "soak")
    return 0 if result["ok"] else 1


def idle_sample(servers: dict, viewers: list, leave: threading.Event) -> dict:
    """Send every viewer away, wait until both servers have freed every stream, sample them, let the viewers back."""
    leave.set()
    for v in viewers:
        v.away.wait(40)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(server_sample(p, port)["streams"] for p, port, _ in servers.values()):
        time.sleep(0.2)
    time.sleep(1.0)  # handler threads finish just after their slot is freed
    row = {name: server_sample(p, port) for name, (p, port, _) in servers.items()}
    leave.clear()
    return row


def run_serve_soak(a, servers: dict, log) -> dict:
    ports = {name: port for name, (_, port, _) in servers.items()}
    stop, leave, lock, visits = threading.Event(), threading.Event(), threading.Lock(), []
    viewers = [Viewer(ports, i, stop, leave, visits, lock) for i in range(a.viewers)]
    for v in viewers:
        v.start()
    idle_every = min(300.0, a.minutes * 60 / 3)  # every 5 min (a short run: 3 times), and at the end
    samples, idle, t0 = [], [], time.monotonic()
    next_idle = t0 + idle_every
    while time.monotonic() - t0 < a.minutes * 60 and all(p.poll() is None for p, _, _ in servers.values()):
        time.sleep(max(0.0, min(a.sample, t0 + a.minutes * 60 - time.monotonic(), next_idle - time.monotonic())))
        if time.monotonic() >= next_idle - 0.05 and time.monotonic() - t0 < a.minutes * 60 - 1:
            idle.append({"t_s": round(time.monotonic() - t0, 1), **idle_sample(servers, viewers, leave)})
            log(f"idle: {idle[-1]}")
            next_idle += idle_every
            continue
        row = {"t_s": round(time.monotonic() - t0, 1)}
        row.update({name: server_sample(p, port) for name, (p, port, _) in servers.items() if p.poll() is None})
        samples.append(row)
        with lock:
            late = sum(v["kind"] != "stalled" and v["first_s"] is None and not v.get("no_record_yet") for v in visits)
        log(f"{row} visits {len(visits)}, late {late}")
    alive = all(p.poll() is None for p, _, _ in servers.values())
    if alive:
        idle.append({"t_s": round(time.monotonic() - t0, 1), **idle_sample(servers, viewers, leave)})
        log(f"idle at the end: {idle[-1]}")
    stop.set()
    for v in viewers:
        v.join(35)
    return summarize(a, samples, idle, visits, alive)


def summarize(a, samples: list, idle: list, visits: list, alive: bool) -> dict:
    watched = [v for v in visits if v["kind"] != "stalled" and not v.get("no_record_yet")]
    late = [v for v in watched if v["first_s"] is None]
    firsts = sorted(v["first_s"] for v in watched if v["first_s"] is not None)
    q = max(1, len(samples) // 4)
    per_server = {}
    for name in ("camera", "file"):
        rows, quiet = [s[name] for s in samples if name in s], [s[name] for s in idle if name in s]
        rss = [r["rss_mb"] for r in rows]
        per_server[name] = {
            "rss_mb_first_quarter_median": round(float(np.median(rss[:q])), 1) if rss else None,
            "rss_mb_last_quarter_median": round(float(np.median(rss[-q:])), 1) if rss else None,
            "idle_rss_mb": [r["rss_mb"] for r in quiet], "idle_threads": [r["threads"] for r in quiet],
            "idle_fds": [r["fds"] for r in quiet], "idle_streams": [r["streams"] for r in quiet],
            "threads_min_max": [min(r["threads"] for r in rows), max(r["threads"] for r in rows)] if rows else None,
            "fds_min_max": [min(r["fds"] for r in rows), max(r["fds"] for r in rows)] if rows else None,
            "streams_max": max((r["streams"] for r in rows), default=None),
            "health_seen": sorted({r["health"] for r in rows}), "reconnects": rows[-1]["reconnects"] if rows else None}

    def flat(s: dict) -> bool:
        r = s["idle_rss_mb"]
        return (len(r) >= 2 and max(s["idle_streams"]) == 0 and max(s["idle_threads"]) - min(s["idle_threads"]) <= 2
                and max(s["idle_fds"]) - min(s["idle_fds"]) <= 2 and r[-1] <= max(1.1 * r[0], r[0] + 10))

    return {"benchmark": "soak-serve", "device": device_fingerprint([1]), "minutes": a.minutes, "viewers": a.viewers,
            "stream_fps": a.fps, "drop_every_s": a.drop_every, "down_s": a.down, "alive_at_end": alive,
            "visits": len(visits), "watched": len(watched),
            "by_kind": {k: sum(v["kind"] == k for v in visits) for k in ("page", "events", "stalled")},
            "no_frame_within_2s": len(late), "late_examples": late[:5],
            "first_frame_s_median": float(np.median(firsts)) if firsts else None, "first_frame_s_max": firsts[-1] if firsts else None,
            "servers": per_server, "flat": {n: flat(s) for n, s in per_server.items()},
            "ok": alive and not late and bool(watched) and all(flat(s) for s in per_server.values()),
            "idle_samples": idle, "samples": samples}


def serve_soak_md(r: dict) -> str:
    head = (f"# Soak: emo-edge serve with viewers that come, go and stall\n\n{fingerprint_md(r['device'])}\n"
            f"Ran {r['minutes']:g} min{' (a short check; the soak proper is 30 min)' if r['minutes'] < 30 else ''} "
            f"with {r['viewers']} viewers. Two servers: `camera`, an MJPEG stream at "
            f"{r['stream_fps']:g} fps, absent for the first {r['down_s']:g} s, then down {r['down_s']:g} s every "
            f"{r['drop_every_s']:g} s; `file`, a 10 s video that ends and is held. Alive at the end: {r['alive_at_end']}; "
            f"exit after SIGTERM: {r.get('exit_codes')}. Verdict: {'ok' if r['ok'] else 'FAILED'}. Idle: every viewer "
            "sent away and every stream freed (every 5 min, a third of a short run, and at the end).\n\n"
            f"| measure | value |\n|---|---|\n| visits (page+MJPEG / events / stalled) | {r['by_kind']['page']} / "
            f"{r['by_kind']['events']} / {r['by_kind']['stalled']} |\n| viewers without a frame within 2 s | {r['no_frame_within_2s']} |\n"
            f"| first frame, median / max | {r['first_frame_s_median']} / {r['first_frame_s_max']} s |\n"
            f"| camera absent at start: said so / recovered | {r['camera_absent_at_start']['said_not_found']} / "
            f"{r['camera_absent_at_start']['came_back']} |\n")
    rows = ""
    for name, s in r["servers"].items():
        rows += (f"| {name}: RSS median, first / last quarter | {s['rss_mb_first_quarter_median']} / {s['rss_mb_last_quarter_median']} MB |\n"
                 f"| {name}: idle RSS (MB), threads, descriptors, streams | {s['idle_rss_mb']}, {s['idle_threads']}, "
                 f"{s['idle_fds']}, {s['idle_streams']} |\n"
                 f"| {name}: threads / descriptors with viewers, min-max | {s['threads_min_max']} / {s['fds_min_max']} |\n"
                 f"| {name}: streams at most; health seen; reconnects | {s['streams_max']}; {', '.join(s['health_seen'])}; {s['reconnects']} |\n")
    table = "\n| t (s) | server | RSS MB | threads | fds | streams | health | frames |\n|---|---|---|---|---|---|---|---|\n"
    table += "".join(f"| {row['t_s']} | {n} | {v['rss_mb']} | {v['threads']} | {v['fds']} | {v['streams']} | {v['health']} | {v['frames']} |\n"
                     for row in r["samples"] for n, v in row.items() if n != "t_s")
    return head + rows + table


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--fps", type=float, default=10.0, help="frames per second the stream sends")
    ap.add_argument("--drop-every", type=float, default=60.0, help="seconds between drop-outs")
    ap.add_argument("--down", type=float, default=5.0, help="seconds the stream stays down")
    ap.add_argument("--sample", type=float, default=15.0, help="seconds between samples")
    ap.add_argument("--photo", type=Path, default=REPO / "examples" / "astronaut.png")
    ap.add_argument("--quick", action="store_true", help="1 minute, drop every 20 s: a smoke test")
    ap.add_argument("--serve", action="store_true", help="soak emo-edge serve (two servers, viewers) instead of infer")
    ap.add_argument("--viewers", type=int, default=20, help="--serve: viewers that come and go")
    ap.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/soak[-serve]-HOST.json")
    a = ap.parse_args(argv)
    if a.quick:
        a.minutes, a.drop_every, a.down, a.sample = 1.0, 20.0, 3.0, 5.0
    a.out = a.out or Path("benchmarks/results") / f"soak{'-serve' if a.serve else ''}-{os.uname().nodename}.json"
    log = lambda s: print(f"soak: {s}", file=sys.stderr, flush=True)  # noqa: E731
    if a.serve:
        return serve_soak(a, log)
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
