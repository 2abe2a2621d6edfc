"""The edge runtime: sources, detection, batching, tracking, outputs and errors, on real photos."""
import json
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from emo.edge_runtime.classifier import DEFAULT_MODEL, Classifier
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.recognizer import Recognizer
from emo.edge_runtime.sources import VideoSource, open_source
from emo.edge_runtime.tracking import IouTracker

from conftest import REPO, YUNET, bin_path, make_video, photo_video, run_cli

ASTRONAUT = REPO / "examples" / "astronaut.png"


def check_record(rec: dict) -> None:
    """The JSON Lines schema documented in README.md."""
    assert set(rec) >= {"source", "frame", "timestamp", "faces", "timing_ms"}
    assert isinstance(rec["frame"], int) and isinstance(rec["timestamp"], (int, float))
    assert set(rec["timing_ms"]) >= {"decode", "detect", "preprocess", "classify"}
    for f in rec["faces"]:
        assert set(f) == {"box", "track", "emotion", "confidence", "scores"}
        assert len(f["box"]) == 4 and all(isinstance(v, int) for v in f["box"]) and f["box"][2] > 0
        assert list(f["scores"]) == list(LABELS)
        assert abs(sum(f["scores"].values()) - 100) < 0.1
        assert f["emotion"] == max(f["scores"], key=f["scores"].get)
        assert isinstance(f["track"], int)


def infer(*args, **kw):
    r = run_cli("emo-edge", "infer", *args, **kw)
    lines = [json.loads(l) for l in r.stdout.splitlines() if l.strip()] if r.returncode in (0, 130) else []
    for rec in lines:
        check_record(rec)
    return r, lines


def test_bundled_model_is_valid():
    clf = Classifier()
    assert clf.path == DEFAULT_MODEL and clf.meta.precision == "int8"
    assert DEFAULT_MODEL.stat().st_size <= 1_000_000


def test_astronaut_exactly_one_face_with_default_model():
    r, recs = infer(ASTRONAUT)
    assert r.returncode == 0, r.stderr
    assert len(recs) == 1 and len(recs[0]["faces"]) == 1
    x, y, w, h = recs[0]["faces"][0]["box"]
    assert 150 < x + w / 2 < 300 and 50 < y + h / 2 < 200  # her face, in the 512x512 frame


def test_process_timed_returns_the_faces_and_each_steps_time():
    """The loop takes its timings from what process_timed returns (no side channel); process() gives the same faces."""
    img = cv2.imread(str(ASTRONAUT))
    done = Recognizer().process_timed(img)
    assert done.faces == Recognizer().process(img) and len(done.faces) == 1
    assert set(done.timings) == {"detect_ms", "preprocess_ms", "classify_ms", "track_ms"}
    assert all(v >= 0 for v in done.timings.values()) and not hasattr(Recognizer(), "timings")


def test_table_format_is_readable():
    r = run_cli("emo-edge", "infer", ASTRONAUT, "--format", "table")
    assert r.returncode == 0 and "happy" in r.stdout and "%" in r.stdout


def test_edge_never_imports_torch_or_onnx(tmp_path):
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from emo.edge_runtime.cli import app\n"
        f"r = CliRunner().invoke(app, ['infer', r'{ASTRONAUT}', '--format', 'json'])\n"
        "assert r.exit_code == 0, r.output\n"
        f"r = CliRunner().invoke(app, ['info'])\n"
        "assert r.exit_code == 0, r.output\n"
        "bad = [m for m in ('torch', 'onnx', 'emo.train', 'emo.export') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('clean')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "clean" in r.stdout, r.stderr


def test_multi_face_batching(photos, monkeypatch):
    rec = Recognizer()
    calls = []
    real_run = rec.classifier.session.run

    def counting_run(out, feeds):
        calls.append(next(iter(feeds.values())).shape[0])
        return real_run(out, feeds)

    monkeypatch.setattr(rec.classifier.session, "run", counting_run)
    faces = rec.process(cv2.imread(str(photos / "two_people.jpg")))
    assert len(faces) == 2 and calls == [2]
    assert faces[0].track != faces[1].track


@pytest.mark.parametrize("name,n", [("obama_and_biden.jpg", 2), ("kit_with_rose.jpg", 2), ("obama.jpg", 1),
                                     ("alex-lacamoire.png", 1), ("obama_partial_face.jpg", 0)])
def test_face_counts_on_real_photos(photos, name, n):
    r, recs = infer(photos / name)
    assert r.returncode == 0 and len(recs[0]["faces"]) == n


def test_folder_source_skips_corrupt_files(photos, tmp_path):
    d = tmp_path / "shots"
    d.mkdir()
    for n in ("obama.jpg", "two_people.jpg", "alex-lacamoire.png"):
        shutil.copy(photos / n, d / n)
    (d / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    r, recs = infer(d)
    assert r.returncode == 0
    assert [x["file"] for x in recs] == ["alex-lacamoire.png", "obama.jpg", "two_people.jpg"]
    assert [len(x["faces"]) for x in recs] == [1, 1, 2]
    assert "zz_corrupt.jpg" in r.stderr and "warning" in r.stderr
    r, recs = infer(str(d / "*.jpg"))
    assert len(recs) == 2


def test_video_tracks_stay_stable_and_save_video(photos, tmp_path):
    vid = photo_video(photos, tmp_path, n=20)
    out = tmp_path / "annotated.avi"
    r, recs = infer(vid, "--save", out, "--smooth", "0.6")
    assert r.returncode == 0, r.stderr
    assert len(recs) == 20 and [x["frame"] for x in recs] == list(range(20))
    tracks = {f["track"] for x in recs for f in x["faces"]}
    assert sum(len(x["faces"]) for x in recs) >= 18 and tracks == {1}
    assert recs[1]["timestamp"] == pytest.approx(0.1, abs=1e-3)
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 20 and cap.read()[0]
    cap.release()


def test_detect_every_tracks_between_detections(photos, tmp_path):
    vid = photo_video(photos, tmp_path, n=12)
    r, recs = infer(vid, "--detect-every", "4")
    assert r.returncode == 0
    assert all(len(x["faces"]) == 1 for x in recs)
    assert {x["faces"][0]["track"] for x in recs} == {1}
    # frames between detections reuse the box: it changes only on detection frames
    assert recs[1]["faces"][0]["box"] == recs[0]["faces"][0]["box"]


def test_smoothing_damps_score_changes():
    a = np.array([[0.9, 0.02, 0.02, 0.02, 0.02, 0.01, 0.01]], np.float32)
    b = np.array([[0.02, 0.02, 0.02, 0.9, 0.02, 0.01, 0.01]], np.float32)
    raw, smooth = IouTracker(smooth=0.0), IouTracker(smooth=0.7)
    box = [(10, 10, 50, 50)]
    for t in (raw, smooth):
        t.update(box, a)
    r, s = raw.update(box, b)[0], smooth.update(box, b)[0]
    assert np.allclose(r.scores, b[0])
    assert np.allclose(s.scores, 0.7 * a[0] + 0.3 * b[0])
    assert r.id == s.id == 1


def test_tracker_ids_follow_moving_boxes_and_expire():
    t = IouTracker(max_missed=1)
    p = np.full((2, 7), 1 / 7, np.float32)
    ids = [x.id for x in t.update([(0, 0, 50, 50), (200, 0, 50, 50)], p)]
    ids2 = [x.id for x in t.update([(205, 2, 50, 50), (4, 3, 50, 50)], p)]
    assert ids == [1, 2] and ids2 == [2, 1]
    t.update([], p[:0])
    t.update([], p[:0])
    assert [x.id for x in t.update([(0, 0, 50, 50)], p[:1])] == [3]


def test_save_image_and_folder(photos, tmp_path):
    r, _ = infer(photos / "two_people.jpg", "--save", tmp_path / "a.jpg")
    img = cv2.imread(str(tmp_path / "a.jpg"))
    assert r.returncode == 0 and img.shape == cv2.imread(str(photos / "two_people.jpg")).shape
    assert not np.array_equal(img, cv2.imread(str(photos / "two_people.jpg")))  # boxes were drawn
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(photos / "obama.jpg", d)
    shutil.copy(photos / "biden.jpg", d)
    r, _ = infer(d, "--save", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["biden.jpg", "obama.jpg"]


def test_max_frames_and_ended_video(photos, tmp_path):
    vid = photo_video(photos, tmp_path, n=8)
    r, recs = infer(vid, "--max-frames", "3")
    assert r.returncode == 0 and len(recs) == 3
    r, recs = infer(vid)
    assert r.returncode == 0 and len(recs) == 8


def test_sigint_mid_video_flushes_and_closes(photos, tmp_path):
    vid = photo_video(photos, tmp_path, n=400)
    out = tmp_path / "partial.avi"
    p = subprocess.Popen([bin_path("emo-edge"), "infer", str(vid), "--save", str(out)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()
    time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    rest, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    lines = [first] + rest.splitlines()
    recs = [json.loads(l) for l in lines if l.strip()]
    assert 1 <= len(recs) < 400
    for x in recs:
        check_record(x)
    assert "stopped by SIGINT" in err and "Traceback" not in err
    cap = cv2.VideoCapture(str(out))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    assert n == len(recs) and cap.read()[0]


class FakeCap:
    """A capture that delivers ``n`` frames, then fails (a camera dropping out)."""

    def __init__(self, n, value):
        self.n, self.value = n, value

    def isOpened(self):
        return True

    def read(self):
        if self.n <= 0:
            return False, None
        self.n -= 1
        return True, np.full((48, 64, 3), self.value, np.uint8)

    def get(self, prop):
        return 0

    def release(self):
        pass


def test_every_source_says_what_the_source_protocol_names(tmp_path):
    """Callers read a source's attributes directly (no getattr probes), so every source has them all."""
    from typing import get_type_hints

    from emo.edge_runtime.frames import Source
    from emo.edge_runtime.sources import WaitingSource
    from emo.edge_runtime.stopping import StopFlag

    shutil.copy(ASTRONAUT, tmp_path / "a.png")
    names = set(get_type_hints(Source)) | {"close", "__iter__"}
    waiting = WaitingSource("camera0", lambda: None, 1, StopFlag(), "no camera")
    sources = [open_source(str(ASTRONAUT)), open_source(str(tmp_path)),
               VideoSource(0, "camera0", live=True, reconnect=0, opener=lambda: FakeCap(1, 1)), waiting]
    for src in sources:
        assert not [n for n in names if not hasattr(src, n)], type(src).__name__
        src.close()
    image, folder, camera, _ = sources
    assert image.stills and image.files == [ASTRONAUT] and folder.stills and not camera.stills and camera.files == []
    assert waiting.state == "not found, retrying" and waiting.error == "no camera" and waiting.reconnects == 0


def test_camera_dropout_reopens_with_backoff(monkeypatch, capsys):
    caps = iter([FakeCap(3, 1), FakeCap(2, 2), FakeCap(0, 3)])
    monkeypatch.setattr("time.sleep", lambda s: None)
    src = VideoSource(0, "camera0", live=True, reconnect=2, opener=lambda: next(caps, FakeCap(0, 9)))
    got = []
    with pytest.raises(EmoError, match="stopped delivering frames"):
        for f in src:
            got.append(int(f.image[0, 0, 0]))
    assert got == [1, 1, 1, 2, 2]
    err = capsys.readouterr().err
    assert "dropped out; reopening" in err and "is back" in err


def test_yunet_detector(photos):
    if YUNET is None or not YUNET.is_file():
        pytest.skip("YuNet model not found (../shared/models/face_detection_yunet.onnx); set EMO_SHARED_DATA")
    r, recs = infer(photos / "two_people.jpg", "--detector", "yunet", "--detector-model", YUNET)
    assert r.returncode == 0, r.stderr
    assert len(recs[0]["faces"]) == 2
    r, recs = infer(ASTRONAUT, "--detector", "yunet", "--detector-model", YUNET)
    assert len(recs[0]["faces"]) == 1


def test_no_faces_is_an_empty_list(tmp_path):
    p = tmp_path / "wall.png"
    cv2.imwrite(str(p), np.full((240, 320, 3), 128, np.uint8))
    r, recs = infer(p)
    assert r.returncode == 0 and recs[0]["faces"] == []


def _strip_metadata(src, dst, size=None):
    onnx = pytest.importorskip("onnx", reason="editing a model needs onnx (the dev install); the edge install has none")
    m = onnx.load(str(src))
    if size is None:
        del m.metadata_props[:]
    else:
        for p in m.metadata_props:
            if p.key == "emo":
                d = json.loads(p.value)
                d["input"]["size"] = size
                p.value = json.dumps(d)
    onnx.save(m, str(dst))
    return dst


def test_bad_inputs_get_one_line_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (tmp_path / "empty").mkdir()
    (tmp_path / "model.onnx").write_text("not onnx")
    cases = [
        ([tmp_path / "missing.jpg"], "not found"),
        ([tmp_path / "broken.jpg"], "OpenCV can decode"),
        ([tmp_path / "notes.txt"], "neither an image nor a video"),
        ([tmp_path / "empty"], "holds no images"),
        (["camera9"], "no such camera"),
        (["ftp://example.com/x.mp4"], "unsupported URL scheme"),
        (["picam0"], "needs picamera2"),
        ([ASTRONAUT, "--model", tmp_path / "model.onnx"], "not a loadable ONNX model"),
        ([ASTRONAUT, "--model", _strip_metadata(DEFAULT_MODEL, tmp_path / "nometa.onnx")], "no emo metadata"),
        ([ASTRONAUT, "--model", _strip_metadata(DEFAULT_MODEL, tmp_path / "size.onnx", 64)], "does not match its metadata"),
        ([ASTRONAUT, "--model", tmp_path / "nope.onnx"], "does not exist"),
        ([ASTRONAUT, "--detector", "yunet"], "emo-edge fetch yunet"),
        ([ASTRONAUT, "--detector", "yunet", "--detector-model", tmp_path / "notes.txt"], "not a YuNet model"),
    ]
    for args, msg in cases:
        r = run_cli("emo-edge", "infer", *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        err = r.stderr.strip()
        assert msg in err and "Traceback" not in err and len(err.splitlines()) == 1, (args, err)


def test_evaluate_and_info(small_fer, tmp_path):
    r = run_cli("emo-edge", "evaluate", DEFAULT_MODEL, small_fer / "val", "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())["report"]
    assert rep["n"] == 84 and "accuracy" in r.stdout
    r = run_cli("emo-edge", "info", "--json")
    meta = json.loads(r.stdout)["metadata"]
    assert meta["precision"] == "int8" and meta["labels"] == list(LABELS)
    r = run_cli("emo-edge", "evaluate", DEFAULT_MODEL, tmp_path / "nothing")
    assert r.returncode == 2 and "does not exist" in r.stderr


def _with_exif_orientation(jpeg: bytes, orientation: int) -> bytes:
    """Insert a minimal EXIF APP1 segment carrying only the Orientation tag."""
    import struct

    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + struct.pack("<I", 0)
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + app1 + jpeg[2:]


def test_exif_rotated_photo_is_upright(photos, tmp_path):
    """A phone photo stored sideways with EXIF Orientation=6 must be turned upright before detection."""
    img = cv2.imread(str(photos / "obama_small.jpg"))
    sideways = cv2.rotate(img, cv2.ROTATE_90_COUNTERCLOCKWISE)  # as the sensor stored it
    ok, buf = cv2.imencode(".jpg", sideways, [cv2.IMWRITE_JPEG_QUALITY, 95])
    raw = tmp_path / "raw.jpg"
    raw.write_bytes(buf.tobytes())
    tagged = tmp_path / "tagged.jpg"
    tagged.write_bytes(_with_exif_orientation(buf.tobytes(), 6))
    r, recs = infer(tagged)
    assert r.returncode == 0 and len(recs[0]["faces"]) == 1
    x, y, w, h = recs[0]["faces"][0]["box"]
    assert x + w <= img.shape[1] and y + h <= img.shape[0]  # coordinates of the upright (320x240) image
    r, recs = infer(raw)
    assert recs[0]["faces"] == []  # the same pixels without the tag: the face is sideways, Haar misses it


def test_truncated_video_ends_cleanly(photos, tmp_path):
    """A recording cut off mid-file (camera unplugged while writing) plays what it has, then ends."""
    vid = photo_video(photos, tmp_path, n=30)
    data = vid.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    r, recs = infer(cut)
    assert r.returncode == 0, r.stderr
    assert 5 <= len(recs) < 30 and "Traceback" not in r.stderr


def test_models_by_name(tmp_path):
    from emo.edge_runtime.classifier import bundled_models

    assert "default" in bundled_models()
    assert Classifier("default").path == DEFAULT_MODEL == Recognizer(model="default").classifier.path
    r, recs = infer(ASTRONAUT, "--model", "default")
    assert r.returncode == 0 and recs[0]["faces"][0]["emotion"] == "happy"
    missing = next((n for n in ("tiny", "large") if n not in bundled_models()), None)
    if missing:
        r = run_cli("emo-edge", "infer", ASTRONAUT, "--model", missing)
        assert r.returncode == 2 and "not bundled" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("emo-edge", "models", "--json")
    rows = {m["name"]: m for m in json.loads(r.stdout)}
    assert {"default", "yunet"} <= set(rows)
    # each bundled model names the terms of its training data; the text list ends with them in one line
    assert all("FER2013" in rows[n]["data_terms"] and "research" in rows[n]["data_terms"] for n in bundled_models())
    assert all(0 < rows[n]["val_degraded_mean"] < rows[n]["val_accuracy"] and rows[n]["val_ece"] <= 0.03 for n in bundled_models())
    assert "data_terms" not in rows["yunet"]
    r = run_cli("emo-edge", "models")
    assert r.returncode == 0 and "FER2013" in r.stdout.splitlines()[-1] and "commercial" in r.stdout.splitlines()[-1]


@pytest.mark.parametrize("module", ["emo.edge_runtime.cli", "emo.train.cli", "emo.export.cli"])
def test_every_help_page_renders(module):
    """--help of each CLI and each of its commands prints usage (a help text with brackets, like
    mqtt://[user@]host, once crashed the rich help formatter: help is plain text now)."""
    import importlib

    import typer
    from typer.testing import CliRunner

    app = importlib.import_module(module).app
    cmd = typer.main.get_command(app)
    names = [[]] + [[n] for n in getattr(cmd, "commands", {})]
    for args in names:
        r = CliRunner().invoke(app, [*args, "--help"])
        assert r.exit_code == 0 and "Usage" in r.output, (module, args, r.output[-300:])
