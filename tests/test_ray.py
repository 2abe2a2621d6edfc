"""`emo-edge analyze --ray`: chunks stitched into the outputs of an unsplit run (in this process,
without Ray), and a real two-node Ray cluster that the test starts and stops itself.

The cluster runs inside `unshare -n`, a network namespace with only loopback: a head
(`ray start --head --node-ip-address 127.0.0.1`) and a second node, 1 CPU each, with the driver
in the same namespace, so Ray never probes a public address or binds this machine's own. On
it: outputs equal to a local run, row for row (a video cut into three chunks, two faces crossing
the boundaries); a worker SIGKILLed mid-chunk (its chunk runs again: no row lost or doubled); an
unreadable video failing alone; a video read by URL, Ctrl-C exiting 130, and the rerun skipping
the chunks done. Videos are made here from the bundled astronaut photo."""
from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO, bin_path
from emo.edge_runtime.analyze import AnalyzeOptions, analyze_video
from emo.edge_runtime.analyze.chunks import ChunkSpec, check_input, plan_chunks
from emo.edge_runtime.analyze.stitch import CHUNKS_DIR, analyze_chunked
from emo.edge_runtime.bench import make_test_video
from emo.edge_runtime.errors import EmoError

ASTRONAUT = REPO / "examples" / "astronaut.png"
FILES = ("frames.csv", "tracks.csv", "timeline.png")
CLUSTER_TIMEOUT = 240  # the whole cluster test, start and stop included (about 60 s here)


def scene_video(path: Path, seconds: float = 12, fps: float = 10.0) -> Path:
    """320x180: the astronaut's face on the left from 1 to 7 s, a mirrored, smaller copy on the
    right from 3 to 9.5 s, hidden behind a bar from 5.5 to 6.2 s (lost, then found again)."""
    img = cv2.imread(str(ASTRONAUT))[30:200, 140:310]
    a = cv2.resize(img, None, fx=0.6, fy=0.6, interpolation=cv2.INTER_AREA)
    b = cv2.resize(img, None, fx=0.55, fy=0.55, interpolation=cv2.INTER_AREA)[:, ::-1]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (320, 180))
    backdrop = np.random.default_rng(0).integers(40, 160, (180, 320, 3), dtype=np.uint8)  # Haar equalises the frame
    for i in range(int(seconds * fps)):
        t, c = i / fps, backdrop.copy()
        if 1 <= t < 7:
            x = 14 + int(12 * np.sin(t))
            c[10:10 + a.shape[0], x:x + a.shape[1]] = a
        if 3 <= t < 9.5:
            x = 310 - b.shape[1] - int(10 * np.sin(t))
            c[60:60 + b.shape[0], x:x + b.shape[1]] = b
            if 5.5 <= t < 6.2:
                c[60 + b.shape[0] // 3:60 + b.shape[0] // 2 + 10, x:x + b.shape[1]] = 140
        vw.write(c)
    vw.release()
    return path


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("ray-videos")
    bad = d / "bad.avi"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00AVI this is not a video" * 20)
    return {"scene": scene_video(d / "scene.avi"), "bad": bad,
            "astro": make_test_video(ASTRONAUT, d / "astro.avi", frames=50, size=(320, 240), fps=10.0, face_px=60)}


@pytest.fixture(scope="module")
def local(videos, tmp_path_factory) -> dict:
    """The outputs of a local run (analyze_video) of each good video: what --ray must give."""
    root = tmp_path_factory.mktemp("ray-local")
    o = AnalyzeOptions(detector="haar")
    return {name: _run_local(videos[name], root / name, o) for name in ("scene", "astro")}


def _run_local(video: Path, out: Path, o: AnalyzeOptions) -> Path:
    r = analyze_video(video, out, o)
    assert r.status == "done"
    return out


def assert_same_outputs(a: Path, b: Path, url: bool = False) -> None:
    """The same files, byte for byte, and the same summary.json but for its timing (and, when ``b``
    read the video by URL, where the video is)."""
    for n in FILES:
        assert filecmp.cmp(a / n, b / n, shallow=False), f"{n} differs: {a / n} {b / n}"
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    sa.pop("timing"), sb.pop("timing")
    if url:
        va, vb = sa.pop("video"), sb.pop("video")
        assert vb["path"].startswith("http://127.0.0.1:") and vb["name"] == va["name"] and vb["bytes"] == va["bytes"]
        assert [va[k] for k in ("fps", "size", "frames_reported")] == [vb[k] for k in ("fps", "size", "frames_reported")]
    assert sa == sb
    assert not (b / CHUNKS_DIR).exists(), "finished chunks are removed with the video done"


# --- chunks in this process (no Ray) ------------------------------------------------------------

def test_chunks_stitch_into_the_unsplit_run(videos, local, tmp_path):
    """Cut at 4.4 s (both faces on screen) and 8.8 s (the right one flickering in and out), read
    by URL from a server that answers byte ranges: the same rows, tracks (merged_from too),
    timeline and summary as one pass over the file; no boundary ends a track."""
    from http_range import serve

    specs = plan_chunks(str(videos["scene"]), 1, 120, 10.0, AnalyzeOptions(), 2.2)
    assert [(s.start, s.end, s.lead) for s in specs] == [(0, 44, 0), (44, 88, 22), (88, None, 66)]  # twice the lead-in at least
    server, base = serve(videos["scene"].parent)
    try:
        r = analyze_chunked(f"{base}/scene.avi", tmp_path / "scene", AnalyzeOptions(detector="haar"), chunk_seconds=2.2)
        with pytest.raises(EmoError, match="nope.avi cannot be read: HTTP 404"):
            analyze_video(f"{base}/nope.avi", tmp_path / "nope", AnalyzeOptions(detector="haar"))
    finally:
        server.shutdown()
    summary = json.loads((tmp_path / "scene" / "summary.json").read_text())
    assert summary["timing"]["chunks"] == 3 and r.rows > 100
    assert_same_outputs(local["scene"], tmp_path / "scene", url=True)


def test_smoothing_and_a_seek_that_misses_still_stitch_exactly(videos, tmp_path, monkeypatch):
    """--smooth carries every earlier frame, so each boundary with a face on screen reruns its
    chunk from the previous chunk's end state; a container whose seek lands one frame late is
    caught by the overlap's frame digests and read from the start instead. Both: exact."""
    from emo.edge_runtime.sources import VideoSource

    o = AnalyzeOptions(detector="haar", smooth=0.5, detect_every=2)
    ref = _run_local(videos["scene"], tmp_path / "local", o)
    analyze_chunked(videos["scene"], tmp_path / "smooth", o, chunk_seconds=2.2)
    assert json.loads((tmp_path / "smooth" / "summary.json").read_text())["timing"]["chunks_seeded"] >= 1
    assert_same_outputs(ref, tmp_path / "smooth")

    seek = VideoSource._seek

    def late(self, exact_seek):
        seek(self, exact_seek)
        if exact_seek:
            self.cap.grab()  # one frame too far, as some containers do

    monkeypatch.setattr(VideoSource, "_seek", late)
    analyze_chunked(videos["scene"], tmp_path / "late", o, chunk_seconds=2.2)
    assert_same_outputs(ref, tmp_path / "late")


def test_a_node_that_sees_another_file_or_model_refuses(videos):
    from emo.edge_runtime.analyze.chunks import ChunkWorker

    o = AnalyzeOptions(detector="haar")
    params = o.parameters()
    assert ChunkWorker(o, params).where()[1] == ""
    worker = ChunkWorker(o, {**params, "detector_used": "yunet"})  # the driver has YuNet fetched, this node not
    assert worker.where()[1].startswith("the analysis would differ on node ") and "detector_used differs" in worker.where()[1]
    assert worker.run(ChunkSpec(str(videos["astro"]), 1, 0, 0, None, 0, 1, 22)) == worker.where()[1]
    spec = ChunkSpec(str(videos["astro"]), 123, 0, 0, None, 0, 1, 22)
    with pytest.raises(EmoError, match="is .* bytes, not 123 .* every node must see the same inputs"):
        check_input(spec)
    with pytest.raises(EmoError, match="cannot be read on node .* shared file system"):
        check_input(ChunkSpec("/no/such/video.avi", 1, 0, 0, None, 0, 1, 22))


def test_analyze_without_ray_never_imports_it_and_ray_without_it_says_what_to_install(videos, tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from typer.testing import CliRunner
        from emo.edge_runtime.cli import app
        r = CliRunner().invoke(app, ["analyze", r"{videos['astro']}", "--out", r"{tmp_path / 'out'}", "--no-progress",
                                     "--detector", "haar", "--stride", "5"])
        assert r.exit_code == 0, r.output
        assert "ray" not in sys.modules, "analyze without --ray imported ray"
        print("clean", flush=True)
        sys.modules["ray"] = None  # as if not installed
        sys.argv = ["emo-edge", "analyze", r"{videos['astro']}", "--out", r"{tmp_path / 'out2'}", "--ray"]
        from emo.edge_runtime.cli import main
        main()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout == "clean\n" and r.returncode == 2, r.stderr
    assert r.stderr.splitlines() == ['emo-edge: error: --ray needs Ray, which is not installed: pip install "emo-fer[ray]" '
                                     '(or leave --ray off: --workers N runs on this machine)']
    r = subprocess.run([bin_path("emo-edge"), "analyze", str(videos["astro"]), "--out", str(tmp_path / "o3"),
                        "--chunk-seconds", "5"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--chunk-seconds applies with --ray only" in r.stderr


def test_ray_address_is_taken_from_the_inputs(tmp_path):
    from emo.edge_runtime.analyze.ray_runner import split_address

    assert split_address(["a.mp4", "10.0.0.5:6379", "b/"]) == ("10.0.0.5:6379", ["a.mp4", "b/"])
    assert split_address(["ray://head:10001", "a.mp4"]) == ("ray://head:10001", ["a.mp4"])
    assert split_address(["a.mp4"]) == (None, ["a.mp4"])
    (tmp_path / "auto").write_bytes(b"")  # a file of that name is an input, not an address
    assert split_address([str(tmp_path / "auto")])[0] is None
    with pytest.raises(EmoError, match="one address"):
        split_address(["auto", "local", "a.mp4"])


def test_the_deployment_examples_are_valid():
    """docs/ray/cluster.yaml passes Ray's own schema for `ray up`; in docs/ray/kuberay.yaml every
    pod mounts the one ReadWriteMany volume; both install emo-fer[ray]."""
    pytest.importorskip("ray", reason='ray is not installed (pip install "emo-fer[ray]")')
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    cluster = yaml.safe_load((REPO / "docs" / "ray" / "cluster.yaml").read_text())
    validate_config(prepare_config(cluster))
    assert any('"emo-fer[ray]"' in c for c in cluster["setup_commands"])
    assert cluster["available_node_types"][cluster["head_node_type"]]["resources"] == {"CPU": 0}
    text = (REPO / "docs" / "ray" / "kuberay.yaml").read_text()
    claim, ray_cluster = yaml.safe_load_all(text)
    assert claim["kind"] == "PersistentVolumeClaim" and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert ray_cluster["apiVersion"] == "ray.io/v1" and ray_cluster["kind"] == "RayCluster"
    pods = [ray_cluster["spec"]["headGroupSpec"]["template"]["spec"],
            *(g["template"]["spec"] for g in ray_cluster["spec"]["workerGroupSpecs"])]
    for pod in pods:
        assert pod["volumes"] == [{"name": "data", "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]}}]
        assert {"name": "data", "mountPath": "/data"} in pod["containers"][0]["volumeMounts"]
    assert 'pip install --no-cache-dir "emo-fer[ray]"' in text


def test_the_committed_benchmark_is_the_scripts_own_table():
    """benchmarks/results/ray-*.md is what bench_ray.py makes of its JSON (no figure typed by hand),
    and its ratios are those of its rows."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ray", REPO / "benchmarks" / "bench_ray.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    results = sorted((REPO / "benchmarks" / "results").glob("ray-*.json"))
    assert results
    for path in results:
        res = json.loads(path.read_text())
        assert bench.to_md(res) == path.with_suffix(".md").read_text()
        by = {r["case"]: r["video_seconds_per_second"] for r in res["rows"]}
        assert res["ratios"]["ray_2cpu_over_local_2_workers"] == round(by["Ray, 2 nodes x 1 CPU"] / by["local, 2 workers"], 3)


# --- a real cluster ------------------------------------------------------------------------------

def _cluster_skip_reason() -> str:
    try:
        import ray  # noqa: F401
    except ImportError:
        return 'ray is not installed (pip install "emo-fer[ray]"; the dev extra has it)'
    if not shutil.which("unshare") or not shutil.which("ip"):
        return "needs unshare and ip (util-linux, iproute2) for a network namespace with only loopback"
    r = subprocess.run(["unshare", "-n", "ip", "link", "set", "lo", "up"], capture_output=True, text=True)
    if r.returncode:
        return f"cannot make a network namespace (unshare -n: {r.stderr.strip()[:100]}); needs root or user namespaces"
    return ""


DRIVER = r'''
import json, os, signal, subprocess, sys, time
from pathlib import Path

temp, scene, astro, bad, out, tests = sys.argv[1:7]
sys.path.insert(0, tests)
from http_range import serve  # noqa: E402
EMO = os.path.join(os.path.dirname(sys.executable), "emo-edge")
ARGS = ["--ray", "--no-progress", "--detector", "haar", "--chunk-seconds", "2.2"]
report = {}


def procs():
    found = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
                ppid = int(open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            found[int(d)] = (ppid, cmd)
    return found


def our_workers(busy):
    """Ray workers of this test's cluster (children of its raylets) running ChunkWorker."""
    ps = procs()
    raylets = {p for p, (_, cmd) in ps.items() if "raylet" in cmd and temp in cmd}
    return [p for p, (pp, cmd) in ps.items() if pp in raylets and "ChunkWorker" in cmd and (not busy or ".run" in cmd)]


def wait_for(what, timeout):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        v = what()
        if v:
            return v
        time.sleep(0.05)
    return None


# 1. three videos, one unreadable; a worker SIGKILLed while it runs a chunk
p = subprocess.Popen([EMO, "analyze", scene, astro, bad, "--out", f"{out}/one", *ARGS], stderr=subprocess.PIPE, text=True)
victims = wait_for(lambda: our_workers(busy=True), 60)
time.sleep(0.3)
if victims:
    os.kill(victims[0], signal.SIGKILL)
report["killed"] = victims[0] if victims else None
_, err = p.communicate(timeout=120)
report["one"] = {"rc": p.returncode, "stderr": err}

# 2. by URL (a server in this namespace): Ctrl-C once the first chunk is done; then the same command again
server, base = serve(Path(scene).parent)
cmd = [EMO, "analyze", f"{base}/scene.avi", "--out", f"{out}/two", *ARGS]
p = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
chunks = Path(out, "two", "scene", ".emo-chunks")
report["chunk_seen"] = bool(wait_for(lambda: chunks.is_dir() and any(chunks.iterdir()), 60))
t0 = time.monotonic()
p.send_signal(signal.SIGINT)
_, err = p.communicate(timeout=60)
report["two"] = {"rc": p.returncode, "stderr": err, "stop_seconds": time.monotonic() - t0}
r = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, timeout=120)
report["three"] = {"rc": r.returncode, "stderr": r.stderr}
print(json.dumps(report))
'''

CLUSTER = r'''
set -u
ip link set lo up
export RAY_USAGE_STATS_ENABLED=0 PATH="$BIN:$PATH"
trap 'ray stop --force >/dev/null 2>&1' EXIT
ray start --head --node-ip-address 127.0.0.1 --port 6391 --num-cpus 1 --temp-dir "$TEMP" --include-dashboard=false \
  --disable-usage-stats --object-store-memory 100000000 >"$LOGS/head.log" 2>&1 || { cat "$LOGS/head.log"; exit 90; }
ray start --address 127.0.0.1:6391 --node-ip-address 127.0.0.1 --num-cpus 1 --object-store-memory 100000000 \
  >"$LOGS/node.log" 2>&1 || { cat "$LOGS/node.log"; exit 91; }
export RAY_ADDRESS=127.0.0.1:6391
python "$LOGS/driver.py" "$TEMP" "$@"
'''


def test_on_a_two_node_cluster(videos, local, tmp_path):
    reason = _cluster_skip_reason()
    if reason:
        pytest.skip(reason)
    temp = Path(f"/tmp/emo-ray-{os.getpid()}")  # short: Ray's socket paths live under it
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "driver.py").write_text(DRIVER)
    (tmp_path / "home").mkdir()  # Ray keeps an auth token in ~/.ray (a local ray.init writes one): not the user's
    env = {**os.environ, "BIN": str(Path(sys.executable).parent), "TEMP": str(temp), "LOGS": str(logs),
           "HOME": str(tmp_path / "home")}
    try:
        r = subprocess.run(["timeout", "-k", "10", str(CLUSTER_TIMEOUT), "unshare", "-n", "bash", "-c", CLUSTER, "cluster",
                            str(videos["scene"]), str(videos["astro"]), str(videos["bad"]), str(tmp_path / "out"),
                            str(REPO / "tests")],
                           capture_output=True, text=True, env=env, timeout=CLUSTER_TIMEOUT + 30)
    finally:
        _end_leftovers(temp)
        shutil.rmtree(temp, ignore_errors=True)
    assert r.returncode == 0, f"rc {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    (tmp_path / "report.json").write_text(json.dumps(rep, indent=1))
    one, two, three = rep["one"], rep["two"], rep["three"]

    # the unreadable video fails alone, with its reason; the worker killed mid-chunk costs nothing
    assert one["rc"] == 1, one["stderr"]
    assert "2 node(s), 2 CPU(s)" in one["stderr"]
    assert rep["killed"] and "its worker was lost" in one["stderr"] and "it runs again" in one["stderr"], one["stderr"]
    assert "FAILED  " + str(videos["bad"]) + ": " in one["stderr"] and "not a video OpenCV can decode" in one["stderr"]
    assert one["stderr"].count("emo-edge: done ") == 2, one["stderr"]
    for name in ("scene", "astro"):
        assert_same_outputs(local[name], tmp_path / "out" / "one" / name)  # 0 rows lost or doubled

    # by URL, Ctrl-C: exit 130, the chunks done are kept; the rerun skips them and ends as a local run does
    assert rep["chunk_seen"] and two["rc"] == 130, two["stderr"]
    assert two["stop_seconds"] < 20 and "stopped by SIGINT" in two["stderr"] and "finished chunk(s)" in two["stderr"], two
    assert three["rc"] == 0 and "done by an earlier run" in three["stderr"], three["stderr"]
    assert_same_outputs(local["scene"], tmp_path / "out" / "two" / "scene", url=True)


def _end_leftovers(temp: Path) -> None:
    """Kill what this test's cluster left running (processes naming its temp folder), should
    `ray stop` not have run; nothing else."""
    import signal

    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes()
        except OSError:
            continue
        if str(temp).encode() in cmd:
            try:
                os.kill(int(d), signal.SIGKILL)
            except OSError:
                pass
