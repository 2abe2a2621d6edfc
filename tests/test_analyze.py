"""`emo-edge analyze` and emo.edge_runtime.analyze: per-frame rows against the frames written,
--stride, track summaries against the rows, the timeline picture, a corrupt video in a batch,
exit statuses, resume after SIGINT, and the track rule itself.

Videos are made here with OpenCV: from the bundled astronaut photo (runs everywhere) and, with
EMO_SHARED_DATA, from real photos of two people who enter and leave the frame."""
from __future__ import annotations

import csv
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from conftest import REPO, bin_path, make_video, run_cli
from emo.edge_runtime.analyze import (EXIT_ALL, EXIT_NONE, EXIT_SOME, FRAME_COLUMNS, TRACK_COLUMNS, AnalyzeOptions, TrackStats,
                                      analyze_video, consolidate)
from emo.edge_runtime.analyze.timeline import picture_size
from emo.edge_runtime.appearance import BINS, look
from emo.edge_runtime.bench import make_test_video
from emo.edge_runtime.faces import HaarDetector
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.stopping import StopFlag
from emo.edge_runtime.tracking import IouTracker

ASTRONAUT = REPO / "examples" / "astronaut.png"


@pytest.fixture(scope="module")
def astro(tmp_path_factory) -> Path:
    """3 s of 640x480 at 10 fps: the astronaut's face drifting across the frame."""
    return make_test_video(ASTRONAUT, tmp_path_factory.mktemp("astro") / "astro.avi", frames=30, fps=10.0)


def analyze(*args, **kw) -> subprocess.CompletedProcess:
    return run_cli("emo-edge", "analyze", *args, "--no-progress", **kw)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def check_tracks_match_rows(out: Path) -> tuple[list[dict], list[dict], dict]:
    """tracks.csv says what frames.csv holds: per kept track, frame count, first/last seen,
    seconds, mean and peak of each score, dominant emotion."""
    frames, tracks = read_csv(out / "frames.csv"), read_csv(out / "tracks.csv")
    summary = json.loads((out / "summary.json").read_text())
    step = summary["parameters"]["stride"] / summary["video"]["fps"]
    for name, columns in (("frames.csv", FRAME_COLUMNS), ("tracks.csv", TRACK_COLUMNS)):
        assert (out / name).read_text().splitlines()[0].split(",") == list(columns)
    for t in tracks:
        rows = [r for r in frames if r["track"] == t["track"]]
        assert int(t["frames"]) == len(rows) > 0
        ts = [float(r["timestamp"]) for r in rows]
        assert float(t["first_seen"]) == pytest.approx(min(ts), abs=1e-4)
        assert float(t["last_seen"]) == pytest.approx(max(ts), abs=1e-4)
        assert float(t["seconds"]) == pytest.approx(len(rows) * step, abs=1e-3)
        scores = np.array([[float(r[e]) for e in LABELS] for r in rows])
        for j, e in enumerate(LABELS):
            assert float(t[f"mean_{e}"]) == pytest.approx(scores[:, j].mean(), abs=0.006)
            assert float(t[f"peak_{e}"]) == pytest.approx(scores[:, j].max(), abs=0.006)
        assert t["dominant"] == LABELS[int(np.argmax(scores.mean(0)))]
    kept = {t["track"] for t in tracks}
    dropped = {str(d["track"]) for d in summary["tracks"]["dropped"]}
    assert kept | dropped == {r["track"] for r in frames}, "every row belongs to a kept or a reported dropped track"
    return frames, tracks, summary


def check_timeline(out: Path, panels: int) -> None:
    img = cv2.imread(str(out / "timeline.png"))
    assert img is not None, "timeline.png is a real PNG"
    assert (img.shape[1], img.shape[0]) == picture_size(panels)
    assert img.std() > 10, "something is drawn"


def test_astronaut_clip_rows_tracks_timeline_and_rerun(astro, tmp_path):
    r = analyze(astro, "--out", tmp_path)
    assert r.returncode == EXIT_ALL, r.stderr
    out = tmp_path / "astro"
    assert "done    " in r.stderr and "1 analysed" in r.stderr and "Traceback" not in r.stderr
    frames, tracks, summary = check_tracks_match_rows(out)
    assert summary["frames"] == {"in_video": 30, "processed": 30, "with_faces": 30, "rows": len(frames)}
    assert summary["video"]["fps"] == 10.0 and summary["video"]["frames_reported"] == 30
    assert summary["model"]["arch"] and summary["detector"]["name"] == "haar"
    assert summary["timing"]["seconds"] > 0 and summary["timing"]["video_seconds"] == 3.0
    # one row per face per frame, every frame written has its rows, timestamps = frame / fps
    assert sorted({int(r["frame"]) for r in frames}) == list(range(30))
    for r in frames:
        assert float(r["timestamp"]) == pytest.approx(int(r["frame"]) / 10.0, abs=1e-4)
        assert sum(float(r[e]) for e in LABELS) == pytest.approx(100, abs=0.1)
        assert r["emotion"] == max(LABELS, key=lambda e: float(r[e]))
    assert len(tracks) == 1 and tracks[0]["dominant"] == "happy" and int(tracks[0]["frames"]) == 30
    check_timeline(out, 1)
    assert not [p for p in out.iterdir() if p.name.startswith(".emo-")], "no temporary files left"

    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    r = analyze(astro, "--out", tmp_path, "--threads", "2")  # speed options do not change the analysis
    assert r.returncode == EXIT_ALL and "skipped " in r.stderr and "1 already complete" in r.stderr
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    r = analyze(astro, "--out", tmp_path, "--force")
    assert r.returncode == EXIT_ALL and "done    " in r.stderr
    assert (out / "summary.json").stat().st_mtime_ns > before["summary.json"]


def test_stride_keeps_true_timestamps(astro, tmp_path):
    r = analyze(astro, "--out", tmp_path, "--stride", "4")
    assert r.returncode == 0, r.stderr
    frames, tracks, summary = check_tracks_match_rows(tmp_path / "astro")
    assert sorted({int(r["frame"]) for r in frames}) == list(range(0, 30, 4))
    assert all(float(r["timestamp"]) == pytest.approx(int(r["frame"]) / 10.0, abs=1e-4) for r in frames)
    assert summary["frames"]["processed"] == 8 and summary["frames"]["in_video"] == 30
    assert float(tracks[0]["seconds"]) == pytest.approx(8 * 0.4)
    # a different stride is a different analysis: a rerun without it redoes the video
    r = analyze(astro, "--out", tmp_path)
    assert "done    " in r.stderr and json.loads((tmp_path / "astro" / "summary.json").read_text())["frames"]["processed"] == 30


def test_corrupt_video_in_a_batch_of_three_with_workers(astro, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "a.avi").write_bytes(astro.read_bytes())
    (videos / "b.avi").write_bytes(astro.read_bytes()[: len(astro.read_bytes()) // 2])  # cut off half way: still plays
    (videos / "broken.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(3000))
    r = analyze(videos, "--out", tmp_path / "out", "--workers", "2")
    assert r.returncode == EXIT_SOME, r.stderr
    failed = [line for line in r.stderr.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "broken.mp4" in failed[0] and "Traceback" not in r.stderr
    assert "2 analysed" in r.stderr and "1 failed" in r.stderr
    for name in ("a", "b"):
        check_tracks_match_rows(tmp_path / "out" / name)
    assert not (tmp_path / "out" / "broken").exists(), "nothing is left for the failed video"


def test_exit_status_none_and_usage_errors(tmp_path):
    for name in ("x.mp4", "y.avi"):
        (tmp_path / name).write_bytes(b"not a video at all")
    r = analyze(tmp_path / "x.mp4", tmp_path / "y.avi", "--out", tmp_path / "out")
    assert r.returncode == EXIT_NONE and r.stderr.count("FAILED") == 2 and "Traceback" not in r.stderr
    for args in ([tmp_path / "missing.mp4", "--out", tmp_path / "o"],  # no such file: nothing is done
                 [tmp_path / "x.mp4", "--out", tmp_path / "x.mp4"],  # --out is a file
                 [tmp_path / "x.mp4", "--out", tmp_path / "o", "--stride", "0"],
                 [ASTRONAUT, "--out", tmp_path / "o"]):  # an image
        r = analyze(*args)
        assert r.returncode == 2, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "error:" in r.stderr and "Traceback" not in r.stderr


def test_parquet_only_when_asked_and_available(astro, tmp_path):
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        r = analyze(astro, "--out", tmp_path, "--parquet")
        assert r.returncode == 2 and 'pip install "emo-fer[parquet]"' in r.stderr and not (tmp_path / "astro").exists()
        return
    r = analyze(astro, "--out", tmp_path, "--parquet")
    assert r.returncode == 0
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "astro" / "frames.parquet").num_rows == len(read_csv(tmp_path / "astro" / "frames.csv"))


@pytest.fixture(scope="module")
def batch(tmp_path_factory) -> Path:
    """A short clip, then two of 40 s at 10 fps (--stride 5 makes 80 processed frames of each)."""
    videos = tmp_path_factory.mktemp("batch")
    make_test_video(ASTRONAUT, videos / "v1.avi", frames=40, fps=10.0)
    for name in ("v2.avi", "v3.avi"):
        make_test_video(ASTRONAUT, videos / name, frames=400, fps=10.0)
    return videos


@pytest.mark.parametrize("workers", [1, 2])
def test_sigint_mid_batch_then_rerun_resumes(batch, tmp_path, workers):
    out = tmp_path / "out"
    args = [batch, "--out", out, "--stride", 5, "--workers", workers]
    p = subprocess.Popen([bin_path("emo-edge"), "analyze", *map(str, args), "--no-progress"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "v1" / "summary.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # v2 is under way
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert "stopped by SIGINT" in err and "run the same command again" in err and "Traceback" not in err
    assert (out / "v1" / "summary.json").exists()
    assert not (out / "v2").exists() and not (out / "v3").exists(), "stopped videos leave nothing"
    assert not list(out.rglob(".emo-*")), "no temporary files left"
    v1 = {f.name: f.stat().st_mtime_ns for f in (out / "v1").iterdir()}
    r = analyze(*args)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert [line for line in lines if line.startswith("emo-edge: skipped") and "v1.avi" in line], r.stderr
    assert len([line for line in lines if line.startswith("emo-edge: done")]) == 2, r.stderr
    assert {f.name: f.stat().st_mtime_ns for f in (out / "v1").iterdir()} == v1, "the finished video was not redone"
    for name in ("v1", "v2", "v3"):
        check_tracks_match_rows(out / name)


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children, their children, ...), from /proc."""
    parent = {}
    for d in Path("/proc").iterdir():
        try:
            parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (ValueError, OSError, IndexError):
            pass
    found, todo = set(), [pid]
    while todo:
        up = todo.pop()
        kids = {p for p, pp in parent.items() if pp == up}
        todo += kids - found
        found |= kids
    return found


def running(pids: set[int]) -> set[int]:
    """The processes of ``pids`` that still run (a zombie has ended: only its parent's wait is missing)."""
    alive = set()
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                alive.add(pid)
        except OSError:
            pass
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the worker processes through /proc (Linux)")
def test_sigkill_of_analyze_ends_its_workers(batch, tmp_path):
    out = tmp_path / "out"
    p = subprocess.Popen([bin_path("emo-edge"), "analyze", str(batch), "--out", str(out), "--workers", "2", "--no-progress"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        while not list(out.rglob(".emo-raw-*")) and time.monotonic() < deadline:  # a worker is mid-video
            time.sleep(0.05)
        workers = descendants(p.pid)
        assert len(workers) >= 2 and p.poll() is None, "analyze runs with its worker processes"
        p.kill()
        p.wait(timeout=10)
        deadline = time.monotonic() + 5
        while running(workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(workers), "every worker ended within 5 s of its parent's SIGKILL"
    finally:
        for pid in running(workers):  # only what this test started
            os.kill(pid, signal.SIGKILL)
        if p.poll() is None:
            p.kill()
            p.wait()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the processes through /proc (Linux)")
def test_the_parent_watch_alone_ends_an_orphaned_worker():
    """The portable fallback on its own (as where prctl is missing): a worker's watcher thread
    notices that its parent was killed and ends the worker."""
    child = ("import os, sys, time; from emo.edge_runtime.analyze import workers; workers._ask_kernel = lambda: None; "
             "workers.PARENT_POLL = 0.05; workers.die_with_parent(os.getppid()); print(os.getpid(), flush=True); time.sleep(60)")
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    p = subprocess.Popen([sys.executable, "-c", parent], stdout=subprocess.PIPE, text=True)
    worker = {int(p.stdout.readline())}
    try:
        p.kill()
        p.wait(timeout=10)
        deadline = time.monotonic() + 5
        while running(worker) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not running(worker), "the orphaned worker ended by itself"
    finally:
        for pid in running(worker):
            os.kill(pid, signal.SIGKILL)
        p.stdout.close()


def test_python_api_and_stop(astro, tmp_path):
    res = analyze_video(astro, tmp_path / "api", AnalyzeOptions(stride=2))
    assert res.status == "done" and res.frames == 15 and res.tracks == 1 and res.video_seconds == 3.0
    assert analyze_video(astro, tmp_path / "api", AnalyzeOptions(stride=2)).status == "skipped"
    stop = StopFlag()
    stop.set("SIGINT")
    res = analyze_video(astro, tmp_path / "stopped", stop=stop)
    assert res.status == "stopped" and not (tmp_path / "stopped").exists()
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / "api" / f".emo-raw-{gone.pid}.csv"  # left by a killed run
    stale.write_text("timestamp\n")
    assert analyze_video(astro, tmp_path / "api", AnalyzeOptions(stride=3)).status == "done" and not stale.exists()
    other = tmp_path / "other.avi"
    other.write_bytes(astro.read_bytes())
    with pytest.raises(Exception, match="holds the analysis of another video"):
        analyze_video(other, tmp_path / "api", AnalyzeOptions(stride=2))


def ts(first, last, frames, box=(100, 100, 50, 50), last_box=None, tid=1, look=None):
    s = TrackStats(tid, first, last, box, last_box or box, frames, first_look=look, last_look=look)
    s.sums[:] = frames * 10.0
    return s


def looks(n: int = 2) -> list[np.ndarray]:
    """Looks (see appearance.py) with nothing in common."""
    return [np.eye(BINS * BINS, dtype=np.float32)[i * 17] for i in range(n)]


def test_track_rule_merges_split_tracks_and_drops_flicker():
    step = 0.1
    a = ts(0.0, 2.0, 20, tid=1)
    b = ts(2.5, 4.0, 15, box=(110, 105, 50, 50), tid=2)  # same place, 0.5 s later: continues a
    c = ts(2.6, 2.7, 2, box=(400, 300, 50, 50), tid=3)  # elsewhere, 0.2 s: flicker, dropped
    d = ts(6.0, 7.0, 10, box=(105, 100, 50, 50), tid=4)  # same place but 2 s after: a new track
    e = ts(1.0, 3.0, 20, box=(300, 100, 50, 50), tid=5)  # a second face at the same time as a
    kept, merged, dropped = consolidate([a, b, c, d, e], step, min_seconds=0.5, merge_gap=1.0)
    assert [s.id for s in kept] == [1, 5, 4] and merged == {2: 1} and [s.id for s in dropped] == [3]
    assert kept[0].frames == 35 and kept[0].last == 4.0 and kept[0].merged_from == [2]
    assert consolidate([a, b], step, 0.5, merge_gap=0)[1] == {}, "--merge-gap 0 merges nothing"


def test_seconds_on_screen_are_frames_seen_times_the_step_gaps_not_counted():
    """The track ledger (ledger.py, shared with MQTT): a track seen in frames 0-9 and 15-19 at
    0.1 s a frame is 1.5 s on screen, not last - first (1.9 s); merging adds frames, not gaps."""
    from emo.edge_runtime.ledger import TrackLedger

    ledger = TrackLedger(LABELS)
    scores = np.full(len(LABELS), 100 / len(LABELS))
    for i in range(20):  # every processed frame is added, with faces or without
        ledger.add_frame(i, i / 10, [(1, (100, 100, 50, 50), scores, None)] if not 10 <= i < 15 else [])
    s = ledger.tracks[1]
    assert s.frames == 15 and s.last - s.first == pytest.approx(1.9)
    assert s.seconds(0.1) == pytest.approx(1.5) and ledger.seconds(s) == pytest.approx(1.5)
    assert TrackLedger(LABELS, step=0.3).step == 0.3, "a recording's step (stride / fps) is given, not measured"
    a, b = ts(0.0, 0.9, 10, tid=1), ts(1.5, 1.9, 5, box=(105, 100, 50, 50), tid=2)
    kept, merged, _ = consolidate([a, b], 0.1, min_seconds=0.5, merge_gap=1.0)
    assert merged == {2: 1} and kept[0].seconds(0.1) == pytest.approx(1.5)


def face_crop(photo: Path, face_px: int = 110) -> np.ndarray:
    img = cv2.imread(str(photo))
    x, y, w, h = max(HaarDetector(max_side=max(img.shape[:2])).detect(img), key=lambda b: b[2] * b[3])
    cx, cy, r = x + w // 2, y + h // 2, int(1.5 * w)
    crop = img[max(0, cy - r): cy + r, max(0, cx - r): cx + r]
    s = face_px / h
    return cv2.resize(crop, (int(crop.shape[1] * s), int(crop.shape[0] * s)), interpolation=cv2.INTER_AREA)


def test_two_people_enter_and_leave(photos, tmp_path):
    """obama from 0.5 s to 3.5 s on the left, biden from 2.0 s to 5.5 s on the right (10 fps, 6 s)."""
    a, b = face_crop(photos / "obama.jpg"), face_crop(photos / "biden.jpg")
    frames = []
    for i in range(60):
        c = np.full((480, 640, 3), 90, np.uint8)
        if 5 <= i < 35:
            c[60: 60 + a.shape[0], 20 + i: 20 + i + a.shape[1]] = a
        if 20 <= i < 55:
            c[80: 80 + b.shape[0], 600 - b.shape[1] - i: 600 - i] = b
        frames.append(c)
    video = make_video(tmp_path / "two people.avi", frames, fps=10.0)
    r = analyze(video, "--out", tmp_path / "out", "--detect-every", "2")
    assert r.returncode == 0, r.stderr
    frame_rows, tracks, summary = check_tracks_match_rows(tmp_path / "out" / "two people")
    assert len(tracks) == 2, tracks
    first, second = tracks
    assert float(first["first_seen"]) == pytest.approx(0.5, abs=0.25) and float(first["last_seen"]) == pytest.approx(3.4, abs=0.25)
    assert float(second["first_seen"]) == pytest.approx(2.0, abs=0.25) and float(second["last_seen"]) == pytest.approx(5.4, abs=0.25)
    both = {int(r["frame"]) for r in frame_rows if r["track"] == first["track"]} & {int(r["frame"]) for r in frame_rows if r["track"] == second["track"]}
    assert both and min(both) >= 19 and max(both) <= 35, "both on screen only while both are there"
    assert not [r for r in frame_rows if int(r["frame"]) < 4 or int(r["frame"]) > 55], "no faces before or after"
    per_frame = {i: sum(int(r["frame"]) == i for r in frame_rows) for i in range(60)}
    assert sum(per_frame[i] == 1 for i in range(6, 19)) >= 10, per_frame  # one person on screen
    assert sum(per_frame[i] == 2 for i in range(21, 34)) >= 10, per_frame  # both
    assert sum(per_frame[i] == 1 for i in range(37, 54)) >= 13, per_frame  # the second alone
    assert all(float(r["timestamp"]) == pytest.approx(int(r["frame"]) / 10.0, abs=1e-4) for r in frame_rows)
    check_timeline(tmp_path / "out" / "two people", 2)


def test_track_rule_never_merges_another_size_or_look():
    step, (one, other) = 0.1, looks()
    a = ts(0.0, 2.0, 20, box=(100, 100, 296, 296), tid=1, look=one)
    b = ts(2.1, 3.0, 9, box=(150, 200, 77, 77), tid=2, look=one)  # just after, near, but 3.8x smaller: another face
    c = ts(4.0, 5.0, 10, box=(300, 100, 100, 100), tid=3, look=one)
    d = ts(5.1, 6.0, 9, box=(300, 100, 100, 100), tid=4, look=other)  # same place and size, another look: a cut
    e = ts(6.1, 7.0, 9, box=(310, 105, 110, 110), tid=5, look=other)  # continues d
    f = ts(7.1, 8.0, 9, box=(315, 110, 120, 120), tid=6)  # no look (a gray video): place and size decide
    kept, merged, _ = consolidate([a, b, c, d, e, f], step, min_seconds=0.5, merge_gap=1.0)
    assert [s.id for s in kept] == [1, 2, 3, 4] and merged == {5: 4, 6: 4}


def test_tracker_starts_a_new_track_for_another_size_or_look():
    p, (one, other) = np.full((1, 7), 1 / 7, np.float32), looks()
    t = IouTracker()
    assert t.update([(0, 0, 100, 100)], p, looks=[one])[0].id == 1
    assert t.update([(3, 2, 104, 104)], p, looks=[one])[0].id == 1  # the same face, moving
    assert t.update([(3, 2, 104, 104)], p, looks=[None])[0].id == 1  # look unknown: place and size decide
    assert t.update([(3, 2, 104, 104)], p, looks=[other])[0].id == 2  # a cut to another face in the same place
    assert t.update([(3, 2, 64, 64)], p, looks=[other])[0].id == 3  # overlapping (IoU 0.38) but 1.6x smaller
    assert look(np.zeros((60, 60), np.uint8), (5, 5, 50, 50)) is None  # a gray frame has no look


def face_patch(photo: Path, face_px: int) -> np.ndarray:
    """The largest face of ``photo`` with half a face of margin, scaled so the face is ``face_px`` high."""
    crop, h = _face_region(photo)
    s = face_px / h
    return cv2.resize(crop, (round(crop.shape[1] * s), round(crop.shape[0] * s)), interpolation=cv2.INTER_AREA)


@functools.lru_cache(maxsize=None)
def _face_region(photo: Path) -> tuple[np.ndarray, int]:
    img = cv2.imread(str(photo))
    x, y, w, h = max(HaarDetector(max_side=max(img.shape[:2])).detect(img), key=lambda b: b[2] * b[3])
    img = cv2.copyMakeBorder(img, h, h, w, w, cv2.BORDER_REPLICATE)  # room for the margin at the photo's edges
    return img[y + h // 2: y + 2 * h + h // 2, x + w // 2: x + 2 * w + w // 2], h


def scene(patch: np.ndarray, cx: int, cy: int, size=(600, 800), grey: int = 90) -> np.ndarray:
    """A frame with ``patch`` centred at (cx, cy), cut off by the frame's edges."""
    frame = np.full((*size, 3), grey, np.uint8)
    ph, pw = patch.shape[:2]
    x0, y0 = cx - pw // 2, cy - ph // 2
    fx0, fy0, fx1, fy1 = max(0, x0), max(0, y0), min(size[1], x0 + pw), min(size[0], y0 + ph)
    frame[fy0:fy1, fx0:fx1] = patch[fy0 - y0: fy1 - y0, fx0 - x0: fx1 - x0]
    return frame


def test_scene_cuts_split_people_and_one_moving_person_stays_one_track(photos, tmp_path):
    """cuts.avi, four shots of 0.8 s: obama (296 px face), then lin-manuel-miranda (77 px) nearby;
    obama2 (150 px), then lin-manuel-miranda (150 px) in the very same place: four tracks, one per
    shot. walk.avi (25 fps): one person growing from 120 to 140 px while crossing the frame, lost
    for half a second (longer than the tracker waits) on the way: one track, merged from two."""
    lin = photos / "lin-manuel-miranda.png"
    shots = [(face_patch(photos / "obama.jpg", 296), 300, 280), (face_patch(lin, 77), 420, 330),
             (face_patch(photos / "obama2.jpg", 150), 560, 300), (face_patch(lin, 150), 560, 300)]
    cuts = make_video(tmp_path / "cuts.avi", [scene(p, x, y) for p, x, y in shots for _ in range(8)], fps=10.0)
    walk = [np.full((600, 800, 3), 90, np.uint8) if 15 <= i < 28 else
            scene(face_patch(photos / "alex-lacamoire.png", 120 + i // 2), 200 + 8 * i, 300) for i in range(40)]
    walk_video = make_video(tmp_path / "walk.avi", walk, fps=25.0)
    r = analyze(cuts, walk_video, "--out", tmp_path / "out", "--detector", "haar")
    assert r.returncode == 0, r.stderr
    _, tracks, _ = check_tracks_match_rows(tmp_path / "out" / "cuts")
    spans = [(float(t["first_seen"]), float(t["last_seen"])) for t in tracks]
    assert [(round(a * 10) // 8, round(b * 10) // 8) for a, b in spans] == [(0, 0), (1, 1), (2, 2), (3, 3)], spans  # the shots
    _, tracks, summary = check_tracks_match_rows(tmp_path / "out" / "walk")
    assert len(tracks) == 1 and tracks[0]["merged_from"], (tracks, summary["tracks"])
    assert float(tracks[0]["first_seen"]) <= 0.2 and float(tracks[0]["last_seen"]) >= 1.4


def test_benchmark_script_runs(tmp_path):
    out = tmp_path / "analyze-test.json"
    r = subprocess.run([sys.executable, REPO / "benchmarks" / "bench_analyze.py", "--clips", "2", "--clip-seconds", "1",
                        "--workers", "2", "--detect-every", "3", "--memory-minutes", "0.05", "--out", out],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert [(t["workers"], t["detect_every"], t["frames"]) for t in res["throughput"]] == [(2, 3, 60)]
    assert res["throughput"][0]["realtime_factor"] > 0 and res["memory"]["frames"] == 90
    assert "| haar" in out.with_suffix(".md").read_text()


def test_video_without_faces(tmp_path):
    video = make_video(tmp_path / "empty room.avi", [np.full((240, 320, 3), 90, np.uint8)] * 10, fps=10.0)
    res = analyze_video(video, tmp_path / "out", AnalyzeOptions(detector="haar"))
    assert res.status == "done" and res.frames == 10 and res.rows == 0 and res.tracks == 0
    assert len((tmp_path / "out" / "frames.csv").read_text().splitlines()) == 1  # the header
    assert len((tmp_path / "out" / "tracks.csv").read_text().splitlines()) == 1
    check_timeline(tmp_path / "out", 0)


def test_track_rule_scales_to_many_tracks():
    """Thousands of one-frame false detections over an hour stay fast to consolidate and are all dropped."""
    rng = np.random.default_rng(0)
    tracks = [ts(t, t, 1, box=(int(rng.integers(0, 600)), int(rng.integers(0, 400)), 40, 40), tid=i)
              for i, t in enumerate(np.sort(rng.uniform(0, 3600, 20000)))]
    t0 = time.perf_counter()
    kept, merged, dropped = consolidate(tracks, 1 / 30, min_seconds=0.5, merge_gap=1.0)
    assert time.perf_counter() - t0 < 5 and len(kept) + len(dropped) + len(merged) == 20000
