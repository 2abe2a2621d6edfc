"""`emo-edge serve`: a real server on 127.0.0.1 over videos and streams made from real photos.

Each test starts its own `emo-edge serve` process on a free port and stops it; every loop that
waits on the network is bounded in count and time.
"""
from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from emo.edge_runtime import sources
from emo.edge_runtime.bench import MjpegTestStream, make_test_video
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.draw import COLORS
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.sources import VideoSource
from emo.edge_runtime.stopping import StopFlag

from conftest import REPO, bin_path
from test_edge import FakeCap, check_record

ASTRONAUT = REPO / "examples" / "astronaut.png"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def serving(*args, wait_frames: int = 1, token: str = ""):
    """Start `emo-edge serve ARGS --port 0 [--token TOKEN]`; yield (base URL, process) once it has
    ``wait_frames`` frames (0: once it answers); SIGTERM it afterwards."""
    p = subprocess.Popen([bin_path("emo-edge"), "serve", *map(str, args), "--port", "0", *(["--token", token] if token else [])],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    q = f"?token={token}" if token else ""
    try:
        line = p.stderr.readline()
        p.head = [line]  # the lines up to "serving http" (communicate() does not see them)
        deadline = time.monotonic() + 30
        while "serving http" not in line and time.monotonic() < deadline and p.poll() is None:
            line = p.stderr.readline()
            p.head.append(line)
        m = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
        assert m, line + (p.stderr.read() if p.poll() is not None else "")
        base = f"http://127.0.0.1:{m.group(1)}"
        try:
            if wait_frames:
                until(lambda: get(base + "/api/latest" + q)[0] == 200 and get(base + "/api/status" + q)[1]["frames"] >= wait_frames)
            else:
                until(lambda: get(base + "/healthz")[0] in (200, 503))
        except AssertionError:
            p.kill()
            raise AssertionError(f"serve did not get going: {p.communicate()[1][-2000:]}") from None
        yield base, p
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        if not hasattr(p, "captured"):
            try:
                p.captured = p.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.captured = p.communicate()


def get(url: str, headers: dict | None = None, timeout: float = 10):
    """(status, parsed JSON or text or bytes) of a GET."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            code, ctype, body = r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        code, ctype, body = e.code, e.headers.get("Content-Type", ""), e.read()
    if "json" in ctype:
        return code, json.loads(body)
    return code, body.decode() if ctype.startswith("text/") else body


def until(cond, seconds: float = 30, step: float = 0.2) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except (OSError, KeyError, TypeError):
            pass
        time.sleep(step)
    raise AssertionError(f"condition not met within {seconds} s")


def mjpeg_frames(url: str, n: int, timeout: float = 20) -> list[tuple[int, np.ndarray]]:
    """Read ``n`` JPEG parts of a multipart/x-mixed-replace response: (X-Emo-Frame, decoded image)."""
    u = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=timeout)
    conn.request("GET", u.path + ("?" + u.query if u.query else ""))
    r = conn.getresponse()
    assert r.status == 200 and r.headers["Content-Type"].startswith("multipart/x-mixed-replace"), r.status
    out, part = [], {}
    while len(out) < n:
        line = r.fp.readline()
        assert line, f"the stream ended after {len(out)} of {n} frames"
        if b":" in line:
            k, v = line.split(b":", 1)
            part[k.strip().lower()] = v.strip()
        elif line in (b"\r\n", b"\n") and b"content-length" in part:  # end of the part headers
            img = cv2.imdecode(np.frombuffer(r.fp.read(int(part[b"content-length"])), np.uint8), cv2.IMREAD_COLOR)
            out.append((int(part[b"x-emo-frame"]), img))
            part = {}
    conn.close()
    return out


def first_event(base: str, timeout: float = 2) -> dict:
    """The first record /api/events sends; then the client leaves."""
    conn = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=timeout)
    conn.request("GET", "/api/events")
    r = conn.getresponse()
    assert r.status == 200 and r.headers["Content-Type"] == "text/event-stream", r.status
    line = r.fp.readline()
    while not line.startswith(b"data: "):
        assert line, "the event stream ended before its first record"
        line = r.fp.readline()
    r.close()
    conn.close()
    return json.loads(line[6:])


def snapshot(base: str) -> tuple[int, np.ndarray]:
    """(X-Emo-Frame, image) of /snapshot.jpg."""
    with urllib.request.urlopen(base + "/snapshot.jpg", timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "image/jpeg"
        return int(r.headers["X-Emo-Frame"]), cv2.imdecode(np.frombuffer(r.read(), np.uint8), cv2.IMREAD_COLOR)


@pytest.fixture(scope="module")
def two_faces_video(tmp_path_factory, photos) -> Path:
    """Two real faces side by side (two_people.jpg), drifting, 1000 frames at 10 fps: 100 s at its own
    rate (serve's default), and with --fast (as fast as the machine can) still longer than the tests
    that wait for new frames; they stop it with SIGTERM."""
    return make_test_video(photos / "two_people.jpg", tmp_path_factory.mktemp("serve") / "two.avi", frames=1000, fps=10)


@pytest.fixture(scope="module")
def astronaut_stream():
    """A live MJPEG stream of the bundled example photo (her face, smiling), 15 fps."""
    jpg = cv2.imencode(".jpg", cv2.imread(str(ASTRONAUT)))[1].tobytes()
    s = MjpegTestStream([jpg], fps=15)
    yield s
    s.close()


def test_stream_snapshot_api_events_and_metrics(two_faces_video):
    with serving(two_faces_video, "--stream-fps", "5") as (base, p):
        frames = mjpeg_frames(base + "/stream.mjpg", 2)
        assert frames[0][0] < frames[1][0] and frames[-1][1].shape == (480, 640, 3)
        # the annotation is drawn: the top edge of each face box has its emotion's colour. The video
        # is read faster than real time, so pair the image with its own record by X-Emo-Frame.
        seen = {}

        def paired() -> bool:
            code, seen["rec"] = get(base + "/api/latest")
            index, seen["img"] = snapshot(base)
            return code == 200 and index == seen["rec"]["frame"]

        until(paired, seconds=20, step=0.1)
        rec, img = seen["rec"], seen["img"]
        check_record(rec)
        assert img.shape == (480, 640, 3) and rec["faces"]
        for f in rec["faces"]:
            x, y, w, h = f["box"]
            color = np.array(COLORS[LABELS.index(f["emotion"])])
            edge = img[max(0, y - 1): y + 2, x + w // 4: x + 3 * w // 4].reshape(-1, 3).astype(int)
            assert (np.abs(edge - color).sum(1) < 90).mean() > 0.3, f
        # server-sent events, one record per event
        conn = http.client.HTTPConnection("127.0.0.1", int(base.rsplit(":", 1)[1]), timeout=20)
        conn.request("GET", "/api/events?rate=20")
        r = conn.getresponse()
        assert r.headers["Content-Type"] == "text/event-stream"
        events = []
        while len(events) < 3:
            line = r.fp.readline()
            if line.startswith(b"data: "):
                events.append(json.loads(line[6:]))
        conn.close()
        for e in events:
            check_record(e)
        assert events[0]["frame"] < events[-1]["frame"]
        code, text = get(base + "/metrics")
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        frames_total = fams["emo_frames"].samples[0].value
        assert code == 200 and frames_total >= 3
        assert sum(s.value for s in fams["emo_detections"].samples) == fams["emo_faces"].samples[0].value > 0
        assert {s.labels["stage"] for s in fams["emo_stage_latency_ms"].samples} >= {"decode", "detect", "classify"}
        for name in ("emo_fps", "emo_dropped_frames", "emo_reconnects", "emo_source_up", "emo_unauthorized_requests"):
            assert name in fams, name
        code, st = get(base + "/api/status")
        assert st["detector"] == "haar" and st["precision"] == "int8" and st["up"]


def test_token_is_required_everywhere_but_healthz(astronaut_stream):
    # the token comes from the environment (EMO_TOKEN), as a systemd unit would pass it
    p = subprocess.Popen([bin_path("emo-edge"), "serve", astronaut_stream.url, "--port", "0"], stderr=subprocess.PIPE,
                         stdout=subprocess.DEVNULL, text=True, env={**os.environ, "EMO_TOKEN": "s3cret"})
    try:
        line = p.stderr.readline()
        while "serving http" not in line:
            line = p.stderr.readline()
        env_base = re.search(r"(http://127\.0\.0\.1:\d+)/", line).group(1)
        until(lambda: get(env_base + "/api/latest?token=s3cret")[0] == 200)
        for path in ("/", "/api/latest", "/api/status", "/metrics", "/snapshot.jpg", "/stream.mjpg", "/api/events"):
            assert get(env_base + path)[0] == 401, path
            assert get(env_base + path + "?token=wrong")[0] == 401, path
        assert get(env_base + "/healthz")[0] == 200
        assert get(env_base + "/api/latest?token=s3cret")[0] == 200
        assert get(env_base + "/api/latest", {"Authorization": "Bearer s3cret"})[0] == 200
        code, text = get(env_base + "/metrics?token=s3cret")
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert fams["emo_unauthorized_requests"].samples[0].value >= 14
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)


def _raw(port: int, data: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        try:
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        except socket.timeout:
            pass
    return b"".join(chunks)


def _status(answer: bytes) -> int:
    """The status of a raw answer (the standard library answers HTTP/0.9-style requests without a status line)."""
    if answer.startswith(b"HTTP/"):
        return int(answer.split(b" ")[1])
    m = re.search(rb"Error code: (\d+)", answer)
    return int(m.group(1)) if m else 0


def test_unknown_paths_traversal_and_malformed_requests(astronaut_stream):
    with serving(astronaut_stream.url) as (base, p):
        port = int(base.rsplit(":", 1)[1])
        for path in ("/etc/passwd", "/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd", "/static/../../x", "/index.html/..",
                     "//etc/passwd", "/api", "/api/latest/../../../etc/passwd", "/web/index.html", "/models/"):
            assert get(base + path)[0] == 404, path
        for raw, code in ((b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n", 404),
                          (b"GARBAGE\r\n\r\n", 400),
                          (b"GET / NOT-HTTP\r\n\r\n", 400),
                          (b"BREW /pot HTTP/1.1\r\n\r\n", 501),
                          (b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n", 414),
                          (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
                          (b"POST /api/latest HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 405),
                          (b"GET /api/events?rate=abc HTTP/1.1\r\n\r\n", 400),
                          (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(64) + b"\r\n\r\n", 400)):  # a TLS hello
            assert _status(_raw(port, raw)) == code, (raw[:40], code)
        for _ in range(3):  # a client that resets its kept-alive connection is no error
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET /api/status HTTP/1.1\r\nHost: x\r\n\r\n")
                s.recv(10)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with a reset
        assert get(base + "/api/latest")[0] == 200  # still serving
    assert "Traceback" not in p.captured[1] and "request failed" not in p.captured[1], p.captured[1]


def test_a_stalled_client_does_not_stop_others_or_the_loop(astronaut_stream):
    with serving(astronaut_stream.url, "--stream-fps", "15") as (base, p):
        port = int(base.rsplit(":", 1)[1])
        stalled = socket.create_connection(("127.0.0.1", port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads
        f0 = get(base + "/api/latest")[1]["frame"]
        frames = mjpeg_frames(base + "/stream.mjpg", 20)  # another viewer keeps getting frames
        assert len(frames) == 20 and all(img is not None for _, img in frames)
        until(lambda: get(base + "/api/latest")[1]["frame"] > f0 + 30, seconds=20)  # and the loop runs on
        until(lambda: "emo_dropped_clients_total 1" in get(base + "/metrics")[1], seconds=60)  # dropped once its buffers fill and 5 s pass
        stalled.close()


def test_healthz_follows_the_source(astronaut_stream):
    with serving(astronaut_stream.url, "--health-timeout", "1") as (base, p):
        assert get(base + "/healthz")[0] == 200
        astronaut_stream.set_up(False)
        try:
            until(lambda: get(base + "/healthz")[0] == 503, seconds=15)
            assert get(base + "/api/status")[1]["source_state"].startswith("reconnecting")
            for _ in range(2):  # viewers who come while the camera is down get the held frame at once, each of them
                t0 = time.monotonic()
                assert len(mjpeg_frames(base + "/stream.mjpg", 1, timeout=2)) == 1 and time.monotonic() - t0 < 2
        finally:
            astronaut_stream.set_up(True)
        until(lambda: get(base + "/healthz")[0] == 200, seconds=30)
        code, text = get(base + "/metrics")
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        assert fams["emo_reconnects"].samples[0].value >= 1 and fams["emo_source_up"].samples[0].value == 1


def test_sigterm_closes_cleanly_with_a_playable_save(two_faces_video, tmp_path):
    out = tmp_path / "served.avi"
    with serving(two_faces_video, "--save", out, "--format", "json", "--fast", wait_frames=10) as (base, p):
        assert get(base + "/api/status")[1]["pace"] == "fast"
        mjpeg_frames(base + "/stream.mjpg", 1)
        p.send_signal(signal.SIGTERM)
        stdout, err = p.captured = p.communicate(timeout=20)
    assert p.returncode == 143, err
    recs = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert len(recs) >= 10 and "Traceback" not in err and "stopped by SIGTERM" in err and "as fast as possible" in "".join(p.head)
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == len(recs) and cap.read()[0]
    cap.release()


def left(status: dict) -> bool:
    """No MJPEG viewer and no streaming client of any kind is left."""
    return status["viewers"] == 0 and status["streams"] == 0


def test_a_late_viewer_gets_the_held_frame_at_once_and_its_slot_back():
    """The image has ended before anyone watches: every viewer still gets its frame within 2 s, and
    each one that leaves frees its streaming slot, even though no new frame ever comes."""
    with serving(ASTRONAUT) as (base, p):
        until(lambda: get(base + "/api/status")[1]["source_state"] == "ended")
        frame = get(base + "/api/latest")[1]["frame"]
        for _ in range(20):  # more page loads than there are streaming slots
            assert get(base + "/")[0] == 200
            t0 = time.monotonic()
            assert mjpeg_frames(base + "/stream.mjpg", 1, timeout=2)[0][0] == frame
            assert first_event(base)["frame"] == frame
            assert time.monotonic() - t0 < 4
            until(lambda: left(get(base + "/api/status")[1]), seconds=2, step=0.05)  # they left: noticed at once


def test_a_video_file_plays_at_its_own_frame_rate(tmp_path):
    slow = make_test_video(ASTRONAUT, tmp_path / "two-fps.avi", frames=100, fps=2)  # 50 s at its own rate
    with serving(slow) as (base, p):
        f0, t0 = get(base + "/api/latest")[1]["frame"], time.monotonic()
        time.sleep(2)
        f1, t1 = get(base + "/api/latest")[1]["frame"], time.monotonic()
        assert f1 - f0 <= 2 * (t1 - t0) + 2, (f0, f1, t1 - t0)  # read as fast as it can, even a busy 2-core machine does 10+
        assert get(base + "/api/status")[1]["pace"] == "realtime"
    assert "at its own 2 fps" in "".join(p.head)


@pytest.mark.skipif(os.path.exists("/dev/video9"), reason="this machine has a /dev/video9")
def test_without_its_camera_serve_keeps_the_page_and_says_so():
    with serving("camera9", wait_frames=0) as (base, p):
        assert get(base + "/")[0] == 200
        code, health = get(base + "/healthz")
        assert code == 503 and health["status"] == "degraded" and health["source_state"] == "not found, retrying"
        assert "/dev/video9" in health["source_error"]
        st = get(base + "/api/status")[1]
        assert not st["up"] and st["source"] == "camera9" and st["source_state"] == "not found, retrying"
        t0 = time.monotonic()
        assert mjpeg_frames(base + "/stream.mjpg", 1, timeout=2)[0][0] == -1  # a card that says so
        assert time.monotonic() - t0 < 2 and get(base + "/api/latest")[0] == 503
    assert p.returncode == 143 and "camera9: not found, retrying" in "".join(p.head) and "Traceback" not in p.captured[1]


def test_a_stream_that_is_not_up_yet_is_waited_for(astronaut_stream):
    astronaut_stream.set_up(False)
    try:
        with serving(astronaut_stream.url, wait_frames=0) as (base, p):
            assert get(base + "/healthz")[1]["status"] == "degraded"
            astronaut_stream.set_up(True)
            until(lambda: get(base + "/api/latest")[0] == 200, seconds=20)
            code, health = get(base + "/healthz")
            assert code == 200 and health["status"] == "ok" and health["source_state"] == "up"
    finally:
        astronaut_stream.set_up(True)
    assert "not found, retrying" in "".join(p.head) and "is here" in p.captured[1]


def test_a_camera_that_appears_later_is_read(monkeypatch):
    """The camera path, through VideoSource's injectable opener: two failed opens, then frames."""
    monkeypatch.setattr(sources, "FIRST_DELAY", 0.01)
    failures = iter(["camera0: no such camera", "camera0: busy"])

    def open_camera():
        why = next(failures, None)
        if why:
            raise EmoError(why)
        return VideoSource(0, "camera0", live=True, reconnect=0, opener=lambda: FakeCap(3, 7))

    src = sources.WaitingSource("camera0", open_camera, 10, StopFlag(), "camera0: no such camera")
    assert src.state == "not found, retrying" and src.live
    frames = list(itertools.islice(src, 3))
    assert [int(f.image[0, 0, 0]) for f in frames] == [7, 7, 7] and src.state == "up" and src.error is None
    src.close()


def test_binding_beyond_loopback_warns_without_a_token():
    p = subprocess.Popen([bin_path("emo-edge"), "serve", str(ASTRONAUT), "--host", "0.0.0.0", "--port", "0"],
                         stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        lines = [p.stderr.readline() for _ in range(2)]
    finally:
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=20)
    assert "without --token" in lines[0] and "serving http://0.0.0.0:" in lines[1]


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian package chromium; .ci/run installs it)")
def test_the_page_in_a_real_browser_shows_the_top_emotion(tmp_path):
    with serving(ASTRONAUT) as (base, p):
        r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=4000", "--dump-dom",
                            base + "/?video=snapshot"], capture_output=True, text=True, timeout=60)
    faces = re.findall(r'data-top="(\w+)"', r.stdout)
    assert faces == ["happy"], r.stdout[-2000:]
    bars = dict(re.findall(r'data-emotion="(\w+)"><span>\w+</span><div class="bar"><span style="width: ([\d.]+)%', r.stdout))
    assert set(bars) == set(LABELS) and max(bars, key=lambda k: float(bars[k])) == "happy"
