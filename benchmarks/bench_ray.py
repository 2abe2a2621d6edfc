#!/usr/bin/env python3
"""`emo-edge analyze --ray` against local workers: video seconds analysed per second of wall time.

In one run, on the same videos (640x480, 30 fps, a real face, made from the bundled photo):
1. local, --workers 1, two clips
2. local, --workers 2, two clips
3. Ray, 2 nodes x 1 CPU, the two clips
4. one long video: local 1 worker; Ray with 1 worker; Ray 2 nodes x 1 CPU (its chunks on both)

Each is the command as a user runs it, with --force (every run does the work); the Ray cluster
is up before the runs (a head and a second node, 1 CPU each), so a Ray row counts the driver's
connection and its workers' model loading, not the cluster's start. Rows run in turns
(--repeat), and the table gives each row's median, so slow spells of a shared machine fall on
every row alike.

The whole benchmark runs inside `unshare -n` (a network namespace with only loopback: the
cluster binds 127.0.0.1 and nothing else), which needs root or user namespaces.

    python benchmarks/bench_ray.py                          # clips of 20 s, a 60 s video, 2 turns
    python benchmarks/bench_ray.py --quick                  # clips of 4 s, a 12 s video, 1 turn

Goals (issue 38): Ray on 2 CPUs within 10% of local with 2 workers on the same videos; one long
video on 2 CPUs at least 1.7x as fast as on 1.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from emo.edge_runtime.bench import device_fingerprint, fingerprint_md, make_test_video, save_result

REPO = Path(__file__).resolve().parents[1]
FPS = 30.0
PORT = 6393


def tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    return str(exe) if exe.exists() else name


def analyze(label: str, videos: list[Path], out: Path, extra: list[str], seconds: float, temp: Path, log) -> dict:
    cmd = [tool("emo-edge"), "analyze", *map(str, videos), "--out", str(out), "--force", "--no-progress", *extra]
    load = os.getloadavg()[0]
    cpu0 = _children_cpu()
    rss = WorkerRss(temp)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    rss.stop()
    if r.returncode != 0:
        raise SystemExit(f"bench_ray: {' '.join(cmd)} failed ({r.returncode}): {r.stderr[-800:]}")
    ss = [json.loads((out / v.stem / "summary.json").read_text()) for v in videos]
    timing = ss[0]["timing"]
    ray = "--ray" in extra
    # local: the command and its worker processes; Ray: the workers' CPU time over their chunks
    cpu = sum(s["timing"]["chunks_cpu_seconds"] for s in ss) if ray else _children_cpu() - cpu0
    log(f"{label}: {seconds:.0f} s of video in {wall:.1f} s = {seconds / wall:.2f} video s/s (load {load:.1f}, CPU {cpu:.1f} s)")
    return {"wall_seconds": wall, "load_before": load, "cpu_seconds": cpu, "chunks": sum(s["timing"].get("chunks", 0) for s in ss) if ray else None,
            "chunks_seeded": sum(s["timing"].get("chunks_seeded", 0) for s in ss) if ray else None,
            "detector": ss[0]["detector"]["name"], "worker_rss_mb": rss.peak if ray else None}


def _children_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class WorkerRss:
    """The largest RSS of any Ray worker of this cluster running ChunkWorker, sampled twice a second."""

    def __init__(self, temp: Path):
        self.temp, self.peak, self._stop = str(temp), 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            procs = {}
            for d in os.listdir("/proc"):
                if d.isdigit():
                    try:
                        cmd = Path(f"/proc/{d}/cmdline").read_bytes()
                        status = Path(f"/proc/{d}/status").read_text()
                    except OSError:
                        continue
                    ppid = int(status.split("PPid:")[1].split()[0])
                    rss = int(status.split("VmRSS:")[1].split()[0]) / 1024 if "VmRSS:" in status else 0.0
                    procs[int(d)] = (ppid, cmd, rss)
            raylets = {p for p, (_, cmd, _) in procs.items() if b"raylet" in cmd and self.temp.encode() in cmd}
            for p, (pp, cmd, rss) in procs.items():
                if pp in raylets and b"ChunkWorker" in cmd:
                    self.peak = max(self.peak, rss)

    def stop(self) -> None:
        self._stop.set()
        self.thread.join()


def start_cluster(temp: Path, log) -> None:
    common = ["--num-cpus", "1", "--object-store-memory", "200000000", "--disable-usage-stats"]
    for cmd in ([tool("ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(PORT), "--temp-dir", str(temp),
                 "--include-dashboard=false", *common],
                [tool("ray"), "start", "--address", f"127.0.0.1:{PORT}", "--node-ip-address", "127.0.0.1", *common]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise SystemExit(f"bench_ray: {' '.join(cmd)} failed: {r.stdout[-500:]} {r.stderr[-500:]}")
    log("cluster up: a head and a second node, 1 CPU each, on 127.0.0.1")


def inside(a) -> dict:
    log = lambda s: print(f"bench_ray: {s}", file=sys.stderr, flush=True)  # noqa: E731
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    det = ["--detector", a.detector, "--detect-every", str(a.detect_every)]
    with tempfile.TemporaryDirectory(prefix="emo-bench-ray-") as td:
        td = Path(td)
        (td / "home").mkdir()
        os.environ["HOME"] = str(td / "home")  # Ray keeps an auth token in ~/.ray: the user's stays out of this cluster
        log(f"building two clips of {a.clip_seconds:g} s and a {a.long_seconds:g} s video (640x480, 30 fps)")
        clip = make_test_video(a.photo, td / "clip1.avi", frames=int(a.clip_seconds * FPS), fps=FPS)
        clips = [clip, Path(shutil.copy(clip, td / "clip2.avi"))]
        long_video = make_test_video(a.photo, td / "long.avi", frames=int(a.long_seconds * FPS), fps=FPS)
        temp = Path(f"/tmp/emo-bench-ray-{os.getpid()}")
        start_cluster(temp, log)
        os.environ["RAY_ADDRESS"] = f"127.0.0.1:{PORT}"
        chunk = ["--chunk-seconds", str(a.chunk_seconds)] if a.chunk_seconds else []
        cases = [
            ("local, 1 worker", "clips", ["--workers", "1"]),
            ("local, 2 workers", "clips", ["--workers", "2"]),
            ("Ray, 2 nodes x 1 CPU", "clips", ["--ray", *chunk]),
            ("long video: local, 1 worker", "long", ["--workers", "1"]),
            ("long video: Ray, 1 worker", "long", ["--ray", "--workers", "1", *chunk]),
            ("long video: Ray, 2 nodes x 1 CPU", "long", ["--ray", *chunk]),
        ]
        runs: dict = {c[0]: [] for c in cases}
        try:
            for turn in range(a.repeat):
                for label, which, extra in (cases if turn % 2 == 0 else cases[::-1]):
                    videos = clips if which == "clips" else [long_video]
                    seconds = (2 * a.clip_seconds) if which == "clips" else a.long_seconds
                    r = analyze(label, videos, td / "out", [*det, *extra], seconds, temp, log)
                    runs[label].append({**r, "video_seconds": seconds})
        finally:
            subprocess.run([tool("ray"), "stop", "--force"], capture_output=True, timeout=120)
            shutil.rmtree(temp, ignore_errors=True)
    rows = []
    for label, _, extra in cases:
        rs = runs[label]
        wall = statistics.median(r["wall_seconds"] for r in rs)
        cpu = statistics.median(r["cpu_seconds"] for r in rs)
        rss = [r["worker_rss_mb"] for r in rs if r["worker_rss_mb"]]
        rows.append({"case": label, "args": extra, "video_seconds": rs[0]["video_seconds"], "walls": [round(r["wall_seconds"], 2) for r in rs],
                     "wall_seconds": round(wall, 2), "video_seconds_per_second": round(rs[0]["video_seconds"] / wall, 3),
                     "cpu_seconds": round(cpu, 2), "video_seconds_per_cpu_second": round(rs[0]["video_seconds"] / cpu, 3),
                     "loads_before": [round(r["load_before"], 2) for r in rs], "chunks": rs[0]["chunks"],
                     "chunks_seeded": rs[0]["chunks_seeded"], "detector": rs[0]["detector"],
                     "worker_rss_mb": round(max(rss), 1) if rss else None})
    by = {r["case"]: r["video_seconds_per_second"] for r in rows}
    ratios = {
        "ray_2cpu_over_local_2_workers": round(by["Ray, 2 nodes x 1 CPU"] / by["local, 2 workers"], 3),
        "long_video_ray_2cpu_over_ray_1cpu": round(by["long video: Ray, 2 nodes x 1 CPU"] / by["long video: Ray, 1 worker"], 3),
        "long_video_ray_2cpu_over_local_1_worker": round(by["long video: Ray, 2 nodes x 1 CPU"] / by["long video: local, 1 worker"], 3),
        "local_2_workers_over_1": round(by["local, 2 workers"] / by["local, 1 worker"], 3),
    }
    return {"rows": rows, "ratios": ratios}


def to_md(res: dict) -> str:
    s = "# emo-edge analyze --ray\n\n" + fingerprint_md(res["device"]) + "\n"
    s += f"Command: `{res['command']}`. {res['note']}\n\n"
    s += ("| case | video s | wall s (median) | walls | video s per s | CPU s | video s per CPU s | chunks | seeded | "
          "worker RSS MB | load before |\n")
    s += "|---|---|---|---|---|---|---|---|---|---|---|\n"
    for r in res["rows"]:
        s += (f"| {r['case']} | {r['video_seconds']:g} | {r['wall_seconds']:.1f} | {', '.join(f'{w:.1f}' for w in r['walls'])} | "
              f"**{r['video_seconds_per_second']:.2f}** | {r['cpu_seconds']:.1f} | {r['video_seconds_per_cpu_second']:.2f} | "
              f"{r['chunks'] or ''} | {r['chunks_seeded'] if r['chunks'] else ''} | {r['worker_rss_mb'] or ''} | "
              f"{', '.join(f'{x:.1f}' for x in r['loads_before'])} |\n")
    q = res["ratios"]
    s += (f"\nRay on 2 CPUs / local with 2 workers (same two clips): **{q['ray_2cpu_over_local_2_workers']:.2f}** "
          f"(goal: at least 0.90). One long video, Ray on 2 CPUs / Ray on 1: **{q['long_video_ray_2cpu_over_ray_1cpu']:.2f}x** "
          f"(goal: at least 1.7x); / local with 1 worker: {q['long_video_ray_2cpu_over_local_1_worker']:.2f}x. "
          f"Local 2 workers / 1: {q['local_2_workers_over_1']:.2f}x.\n")
    return s


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", type=Path, default=REPO / "examples" / "astronaut.png")
    ap.add_argument("--clip-seconds", type=float, default=20)
    ap.add_argument("--long-seconds", type=float, default=60)
    ap.add_argument("--chunk-seconds", type=float, default=0, help="passed to --ray (0: its own choice)")
    ap.add_argument("--detect-every", type=int, default=1)
    ap.add_argument("--detector", default="haar")
    ap.add_argument("--repeat", type=int, default=2, help="turns; each row's median is reported")
    ap.add_argument("--quick", action="store_true", help="clips of 4 s, a 12 s video, one turn: a smoke test")
    ap.add_argument("--note", default="", help="added to the result (e.g. what else ran on the machine)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results") / f"ray-{os.uname().nodename}.json")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)  # already in the network namespace
    a = ap.parse_args(argv)
    if a.quick:
        a.clip_seconds, a.long_seconds, a.repeat = 4, 12, 1
    if not a.inside:
        if not shutil.which("unshare"):
            raise SystemExit("bench_ray: needs unshare (util-linux) to run the cluster in a network namespace of its own")
        args = [sys.executable, os.path.abspath(__file__), "--inside", *(argv if argv is not None else sys.argv[1:])]
        script = 'ip link set lo up && exec "$@"'
        return subprocess.run(["unshare", "-n", "bash", "-c", script, "bench", *args]).returncode
    res = inside(a)
    shown = [x for x in sys.argv[1:] if x != "--inside"]
    shown = ['"..."' if i and shown[i - 1] == "--note" else x for i, x in enumerate(shown)]  # the note follows in full
    cmd = "python " + " ".join(["benchmarks/bench_ray.py", *shown])
    res = {"device": device_fingerprint(), "command": cmd,
           "note": ("Wall time of each command (model loading and, for Ray, connecting to the running cluster and "
                    "starting its workers, included); rows ran in turns and each gives its median. CPU s: for a local "
                    "run the command and its worker processes; for Ray the workers' CPU time over their chunks (lead-ins "
                    "included, their start and model loading not). Compare the ratios, which come from one run. "
                    + a.note).strip(),
           **res}
    save_result(res, a.out, to_md(res), "bench_ray")
    return 0


if __name__ == "__main__":
    sys.exit(main())
