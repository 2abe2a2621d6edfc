"""Hostile inputs, from the CLI and the Python API: file names, truncated and oversized images and
videos, model metadata, option values, API arrays, streams that stall or end, outputs that
cannot be written. For each: a one-line error with exit 2 and no traceback, or a correct result;
nothing reported as written that is not readable; nothing destroyed.

Most cases build their inputs from the bundled example photo, so they run without ../shared.
"""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import resource
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from emo.edge_runtime.bench import MjpegTestStream
from emo.edge_runtime.classifier import DEFAULT_MODEL, Classifier
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.files import read_image, shown
from emo.edge_runtime.recognizer import Recognizer
from emo.edge_runtime.sources import open_source

from conftest import REPO, bin_path, make_video, run_cli

ASTRONAUT = REPO / "examples" / "astronaut.png"
HYPO = settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))


def user_error(r: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit 2, exactly one line on stderr, no traceback, and the line names the problem."""
    err = r.stderr.strip()
    assert r.returncode == 2, (r.returncode, err[-800:])
    assert "Traceback" not in err and len(err.splitlines()) == 1, err[-800:]
    for n in needles:
        assert n in err, (n, err)
    return err


def cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    """``emo-edge`` with arguments passed as bytes, so names that are not UTF-8 arrive as they are."""
    argv = [os.fsencode(a) if isinstance(a, (str, os.PathLike)) else a for a in (bin_path("emo-edge"), *args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, errors="replace")


def jsonl(r) -> list[dict]:
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def face_frame() -> np.ndarray:
    return cv2.imread(str(ASTRONAUT))


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """12 frames of the astronaut photo (her face found by Haar in every one), MJPG at 10 fps."""
    img = cv2.resize(face_frame(), (320, 320))
    return make_video(tmp_path_factory.mktemp("clip") / "clip.avi", [img] * 12)


# --- 1. file names OpenCV cannot take --------------------------------------------------------------

BAD = os.fsdecode(b"caf\xe9")  # not valid UTF-8: OpenCV used to segfault on it


def test_non_utf8_names_in_every_source_kind(tmp_path, clip):
    d = tmp_path / f"in-{BAD}"
    d.mkdir()
    shutil.copy(ASTRONAUT, d / f"{BAD}.png")
    shutil.copy(clip, d / f"{BAD}.avi")
    for src in (d / f"{BAD}.png", d, str(d / "*.png")):
        r = cli("infer", src)
        assert r.returncode == 0, r.stderr
        recs = jsonl(r)
        assert len(recs) == 1 and len(recs[0]["faces"]) == 1
        assert recs[0]["file"] == shown(f"{BAD}.png") == "caf\\xe9.png"
    out = tmp_path / f"out-{BAD}.avi"
    r = cli("infer", d / f"{BAD}.avi", "--save", out)
    assert r.returncode == 0, r.stderr
    assert len(jsonl(r)) == 12 and "wrote 12" in r.stderr
    cap = cv2.VideoCapture(str(shutil.copy(out, tmp_path / "plain.avi")))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12 and cap.read()[0]


def test_non_utf8_names_in_evaluate(tmp_path):
    face = cv2.resize(cv2.cvtColor(face_frame()[66:162, 176:272], cv2.COLOR_BGR2GRAY), (48, 48))
    for c in ("happy", "sad"):
        (tmp_path / c).mkdir()
        for i in range(3):
            cv2.imencode(".png", face)[1].tofile(os.fsencode(tmp_path / c / f"{BAD}{i}.png"))
    r = run_cli("emo-edge", "evaluate", DEFAULT_MODEL, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "6 images" in r.stderr


@HYPO
@given(name=st.binary(min_size=1, max_size=60).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")))
def test_any_file_name_reads_or_fails_cleanly(tmp_path_factory, name):
    d = tmp_path_factory.mktemp("names")
    p = os.path.join(os.fsencode(d), name + b".png")
    shutil.copy(ASTRONAUT, p)
    frames = list(open_source(os.fsdecode(p)))
    assert len(frames) == 1 and frames[0].image.shape == (512, 512, 3)
    shown(frames[0].name).encode("utf-8")


# --- 2. --save must never overwrite its own input ---------------------------------------------------

def test_save_onto_the_input_is_refused(tmp_path, clip):
    vid = shutil.copy(clip, tmp_path / "v.avi")
    img = shutil.copy(ASTRONAUT, tmp_path / "a.png")
    d = tmp_path / "shots"
    d.mkdir()
    shutil.copy(ASTRONAUT, d / "a.jpg")
    before = {p: digest(Path(p)) for p in (vid, img, d / "a.jpg")}
    for src, save in ((vid, vid), (img, img), (d, d), (str(d / "*.jpg"), d)):
        r = run_cli("emo-edge", "infer", src, "--save", save)
        user_error(r, "--save")
        assert r.stdout == ""
    assert before == {p: digest(Path(p)) for p in before}


# --- 3. writes are checked ---------------------------------------------------------------------------

def _fsize_limit(n: int):
    def pre():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (n, n))
    return pre


def test_full_disk_is_reported_not_wrote(tmp_path, clip):
    out = tmp_path / "out.avi"
    r = subprocess.run([bin_path("emo-edge"), "infer", str(clip), "--save", str(out)], capture_output=True, text=True,
                       timeout=120, preexec_fn=_fsize_limit(150_000))
    user_error(r, "out.avi")
    assert "wrote" not in r.stderr and not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary file left behind
    r = subprocess.run([bin_path("emo-edge"), "infer", str(ASTRONAUT), "--save", str(tmp_path / "a.png")],
                       capture_output=True, text=True, timeout=120, preexec_fn=_fsize_limit(20_000))
    user_error(r, "a.png")
    assert not (tmp_path / "a.png").exists()


def test_folder_save_keeps_same_stem_inputs_apart(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(ASTRONAUT, d / "a.png")
    cv2.imwrite(str(d / "a.jpg"), cv2.flip(face_frame(), 1))
    r = run_cli("emo-edge", "infer", d, "--save", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    outs = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(outs) == 2 and "wrote 2" in r.stderr, (outs, r.stderr)
    assert all(cv2.imread(str(tmp_path / "out" / n)) is not None for n in outs)


def test_unwritable_container_fails_before_the_first_frame(tmp_path, clip):
    r = run_cli("emo-edge", "infer", clip, "--save", tmp_path / "out.webm")
    user_error(r, "out.webm")
    assert r.stdout == "" and not (tmp_path / "out.webm").exists()


# --- 4. one Recognizer shared by threads --------------------------------------------------------------

def test_shared_recognizer_gives_the_same_results_as_one_thread(tmp_path):
    frames = [face_frame(), cv2.flip(face_frame(), 1), cv2.resize(face_frame(), (300, 300)), np.full((200, 200, 3), 90, np.uint8)]
    ref = [[(f.box, f.scores) for f in Recognizer().process(fr)] for fr in frames]
    rec = Recognizer()
    got, errors = {}, []

    def work(t):
        try:
            for k in range(12):
                i = (t + k) % len(frames)
                got.setdefault(i, []).append([(f.box, f.scores) for f in rec.process(frames[i])])
        except Exception as e:  # noqa: BLE001 - the test reports any failure
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for i, outs in got.items():
        assert all(o == ref[i] for o in outs), i


# --- 5. errors that used to be tracebacks --------------------------------------------------------------

def test_evaluate_bad_options_fail_up_front(tmp_path):
    user_error(run_cli("emo-edge", "evaluate", DEFAULT_MODEL, tmp_path, "--split", "bogus"), "--split")
    t0 = time.monotonic()
    r = run_cli("emo-edge", "evaluate", DEFAULT_MODEL, ASTRONAUT.parent, "--json", tmp_path / "no" / "such" / "r.json")
    user_error(r, "--json")
    assert time.monotonic() - t0 < 30 and r.stdout == ""


def test_long_names_oversized_images_and_wrong_detector_files(tmp_path):
    user_error(run_cli("emo-edge", "infer", tmp_path / ("x" * 300 + ".jpg")), "too long")
    user_error(run_cli("emo-edge", "infer", ASTRONAUT, "--save", tmp_path / ("y" * 300 + ".jpg")), "too long")
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header_only(100_000, 100_000))
    user_error(run_cli("emo-edge", "infer", huge), "huge.png")
    d = tmp_path / "mixed"
    d.mkdir()
    shutil.copy(huge, d / "a_huge.png")
    shutil.copy(ASTRONAUT, d / "b.png")
    r = run_cli("emo-edge", "infer", d)
    assert r.returncode == 0 and [x["file"] for x in jsonl(r)] == ["b.png"] and "a_huge.png" in r.stderr
    user_error(run_cli("emo-edge", "infer", ASTRONAUT, "--detector", "yunet", "--detector-model", DEFAULT_MODEL), "YuNet")


def _png_header_only(w: int, h: int) -> bytes:
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _onnx():
    return pytest.importorskip("onnx", reason="editing a model needs onnx (the dev install); the edge install has none")


def _with_meta(dst: Path, **changes) -> Path:
    onnx = _onnx()
    m = onnx.load(str(DEFAULT_MODEL))
    for p in m.metadata_props:
        if p.key == "emo":
            d = json.loads(p.value)
            d.update(changes)
            p.value = json.dumps(d)
    onnx.save(m, str(dst))
    return dst


def _six_class_model(dst: Path) -> Path:
    """A valid ONNX classifier with emo metadata for 7 labels but only 6 outputs."""
    onnx = _onnx()
    from onnx import TensorProto, helper
    w = helper.make_tensor("w", TensorProto.FLOAT, [48 * 48, 6], np.zeros(48 * 48 * 6, np.float32).tolist())
    g = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"]), helper.make_node("MatMul", ["f", "w"], ["y"])], "six",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 48, 48])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    src = onnx.load(str(DEFAULT_MODEL))
    m.metadata_props.extend(src.metadata_props)
    onnx.save(m, str(dst))
    return dst


@pytest.mark.parametrize("changes", [
    {"labels": 5}, {"input": "48"}, {"input": {"size": "48"}}, {"metrics": [1, 2]}, {"extra": "x"}, {"arch": 3},
    {"precision": None}, {"format_version": "1"}, {"input": {"size": 48, "std": 0}}, {"labels": ["a"] * 7},
])
def test_model_metadata_of_the_wrong_type(tmp_path, changes):
    m = _with_meta(tmp_path / "m.onnx", **changes)
    for cmd in (["infer", ASTRONAUT, "--model", m], ["info", m]):
        user_error(run_cli("emo-edge", *cmd), "m.onnx")


def test_label_count_must_match_the_model_output(tmp_path):
    user_error(run_cli("emo-edge", "infer", ASTRONAUT, "--model", _six_class_model(tmp_path / "six.onnx")), "6", "7")


@HYPO
@given(meta=st.dictionaries(st.sampled_from(["arch", "precision", "input", "labels", "output", "metrics", "extra",
                                              "format_version", "checkpoint_sha256"]),
                            st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
                                         lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                                         max_leaves=6), max_size=4))
def test_any_metadata_loads_or_says_what_is_wrong(meta):
    from emo.edge_runtime.metadata import KEY, from_props

    base = json.loads(dict(onnx_meta_props())[KEY])
    base.update(meta)
    try:
        m = from_props({KEY: json.dumps(base)}, "m.onnx")
    except EmoError as e:
        assert "m.onnx" in str(e) and "\n" not in str(e)
        return
    assert isinstance(m.metrics, dict) and isinstance(m.extra, dict) and len(m.labels) == 7
    assert isinstance(m.input.size, int) and m.input.std > 0


def onnx_meta_props() -> list[tuple[str, str]]:
    return [(p.key, p.value) for p in _onnx().load(str(DEFAULT_MODEL)).metadata_props]


# --- 6. silent loss -------------------------------------------------------------------------------------

def test_truncated_jpeg_is_an_error_not_a_grey_frame(tmp_path):
    ok, buf = cv2.imencode(".jpg", face_frame())
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(buf.tobytes()[: len(buf) // 2])
    user_error(run_cli("emo-edge", "infer", cut), "cut.jpg", "truncated")
    d = tmp_path / "d"
    d.mkdir()
    shutil.copy(cut, d / "cut.jpg")
    shutil.copy(ASTRONAUT, d / "good.png")
    r = run_cli("emo-edge", "infer", d)
    assert r.returncode == 0 and [x["file"] for x in jsonl(r)] == ["good.png"]
    assert "cut.jpg" in r.stderr and "skipped 1 of 2" in r.stderr


def test_evaluate_says_what_it_dropped(tmp_path):
    face = cv2.resize(cv2.cvtColor(face_frame()[66:162, 176:272], cv2.COLOR_BGR2GRAY), (48, 48))
    (tmp_path / "happy").mkdir()
    for i in range(4):
        cv2.imwrite(str(tmp_path / "happy" / f"{i}.png"), face)
    (tmp_path / "happy" / "bad.png").write_bytes(b"not a png")
    r = run_cli("emo-edge", "evaluate", DEFAULT_MODEL, tmp_path)
    assert r.returncode == 0 and "skipped 1 unreadable" in r.stderr
    px = " ".join(map(str, face.ravel()))
    csv = tmp_path / "f.csv"
    csv.write_text(f"emotion,pixels,Usage\n3,{px},PublicTest\n3,1 2 3,PublicTest\nx,{px},PublicTest\n3,{px},PublicTest\n")
    r = run_cli("emo-edge", "evaluate", DEFAULT_MODEL, csv)
    assert r.returncode == 0 and "skipped 2 unreadable" in r.stderr and "f.csv:3" in r.stderr


# --- 7. blocking sources must stop on a signal -------------------------------------------------------------

@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    conns = []
    stop = threading.Event()

    def accept():
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(s.accept()[0])
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{s.getsockname()[1]}/live.mjpg"
    stop.set()
    t.join(2)
    for c in conns:
        c.close()
    s.close()


def _signal_after(args, delay, sig=signal.SIGTERM, timeout=20):
    p = subprocess.Popen([bin_path("emo-edge"), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    t0 = time.monotonic()
    p.send_signal(sig)
    out, err = p.communicate(timeout=timeout)
    return p.returncode, time.monotonic() - t0, out, err


def test_a_stream_that_never_answers_stops_on_sigterm_and_times_out(silent_server):
    rc, took, out, err = _signal_after(["infer", silent_server], 2.0)
    assert rc == 143 and took < 3, (rc, took, err)
    assert "Traceback" not in err
    r = run_cli("emo-edge", "infer", silent_server, "--timeout", "2", timeout=30)
    user_error(r, "no answer")


def test_sigterm_during_reconnect_backoff_exits_at_once():
    jpg = cv2.imencode(".jpg", cv2.resize(face_frame(), (320, 320)))[1].tobytes()
    stream = MjpegTestStream([jpg], fps=20)
    try:
        p = subprocess.Popen([bin_path("emo-edge"), "infer", stream.url, "--reconnect", "20"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        first = p.stdout.readline()
        stream.set_up(False)  # the camera goes away; emo-edge starts its backoff
        time.sleep(3.0)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=20)
        assert json.loads(first)["faces"], first
        assert p.returncode == 143 and time.monotonic() - t0 < 3, (p.returncode, err)
        assert "reopening" in err and "Traceback" not in err
    finally:
        stream.close()


def test_fifo_and_symlink_loops(tmp_path):
    fifo = tmp_path / "pipe.avi"
    os.mkfifo(fifo)
    user_error(run_cli("emo-edge", "infer", fifo, timeout=20), "pipe.avi", "FIFO")
    d = tmp_path / "tree"
    (d / "sub").mkdir(parents=True)
    shutil.copy(ASTRONAUT, d / "sub" / "a.png")
    os.symlink(d, d / "sub" / "loop")
    os.symlink(d, d / "loop2")
    r = run_cli("emo-edge", "infer", str(d / "**" / "*.png"), timeout=60)
    assert r.returncode == 0 and [x["file"] for x in jsonl(r)] == ["a.png"], r.stderr[-400:]


# --- 8. a finite video over http ends ------------------------------------------------------------------

def test_http_url_to_a_video_file_ends(tmp_path, clip):
    shutil.copy(clip, tmp_path / "clip.avi")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(tmp_path), **kw)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        r = run_cli("emo-edge", "infer", f"http://127.0.0.1:{srv.server_address[1]}/clip.avi", timeout=60)
    finally:
        srv.shutdown()
        srv.server_close()
    assert r.returncode == 0, r.stderr
    recs = jsonl(r)
    assert len(recs) == 12 and recs[-1]["timestamp"] == pytest.approx(1.1, abs=1e-3)


# --- 9. API and option edges ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rec():
    return Recognizer()


@pytest.mark.parametrize("bad,exc", [
    (None, TypeError), ([[1, 2]], TypeError), (np.zeros((0, 0, 3), np.uint8), ValueError),
    (np.zeros((10, 10, 3), np.float32), TypeError), (np.zeros((4, 4, 4, 4), np.uint8), ValueError),
    (np.zeros((10, 10, 2), np.uint8), ValueError),
])
def test_process_checks_its_input(rec, bad, exc):
    with pytest.raises(exc, match="BGR"):
        rec.process(bad)


@HYPO
@given(shape=st.lists(st.integers(0, 64), min_size=1, max_size=4),
       dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.int64, bool]))
def test_process_any_array(rec, shape, dtype):
    a = np.zeros(shape, dtype)
    try:
        faces = rec.process(a)
    except (TypeError, ValueError) as e:
        assert "BGR" in str(e)
        return
    assert faces == []  # a valid blank frame has no faces


def test_option_values_are_checked(tmp_path, clip):
    user_error(run_cli("emo-edge", "infer", ASTRONAUT, "--detect-size", "1"), "--detect-size")
    user_error(run_cli("emo-edge", "infer", ASTRONAUT, "--detector", "haar", "--detector-model", DEFAULT_MODEL), "--detector-model")
    user_error(run_cli("emo-edge", "infer", ""), "empty")
    user_error(run_cli("emo-edge", "infer", ASTRONAUT, "--threads", "0"), "--threads")
    r = run_cli("emo-edge", "infer", ASTRONAUT, "--threads", "1000")
    assert r.returncode == 0 and "--threads 1000" in r.stderr and "Traceback" not in r.stderr
    empty = tmp_path / "empty.avi"
    cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 64)).release()
    user_error(run_cli("emo-edge", "infer", empty), "empty.avi", "no frames")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(4000))
    user_error(run_cli("emo-edge", "infer", junk), "junk.mp4")  # and no FFmpeg lines around it


def test_broken_pipe_stops_cleanly_with_a_summary(tmp_path, clip):
    out = tmp_path / "o.avi"
    sh = f"'{bin_path('emo-edge')}' infer '{clip}' --save '{out}' | head -1; echo \"rc=${{PIPESTATUS[0]}}\" >&2"
    r = subprocess.run(["bash", "-c", sh], capture_output=True, text=True, timeout=120)
    assert len(r.stdout.splitlines()) == 1
    assert "rc=0" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "output closed" in r.stderr and "wrote" in r.stderr
    cap = cv2.VideoCapture(str(out))
    assert cap.read()[0]


# --- more of each class, found while fixing the above -------------------------------------------------------

def test_save_video_into_a_folder_whose_name_is_not_utf8(tmp_path, clip):
    d = tmp_path / f"out-{BAD}"
    r = cli("infer", clip, "--save", d / "a.avi")
    assert r.returncode == 0 and "wrote 12" in r.stderr, r.stderr
    assert [p.name for p in d.iterdir()] == ["a.avi"]  # no temporary or probe file left


def test_evaluate_json_never_overwrites_an_input(tmp_path):
    model = shutil.copy(DEFAULT_MODEL, tmp_path / "m.onnx")
    before = digest(Path(model))
    user_error(run_cli("emo-edge", "evaluate", model, ASTRONAUT.parent, "--json", model), "--json")
    assert digest(Path(model)) == before


def test_stdout_on_a_full_disk_is_one_line(tmp_path, clip):
    with open(tmp_path / "out.jsonl", "w") as out:
        r = subprocess.run([bin_path("emo-edge"), "infer", str(clip), "--format", "json"], stdout=out, stderr=subprocess.PIPE,
                           text=True, timeout=120, preexec_fn=_fsize_limit(3000))
    user_error(r, "JSON Lines")


def test_classifier_checks_its_batch():
    clf = Classifier()
    with pytest.raises(ValueError, match="batch"):
        clf.predict(np.zeros((2, 48, 48), np.float32))
    with pytest.raises(TypeError, match="uint8"):
        clf.predict_crops(np.zeros((2, 48, 48), np.float32))
    assert clf.predict(np.zeros((0, 1, 48, 48), np.float32)).shape == (0, 7)


# --- round 3: analyze under hostile names and models ----------------------------------------------------

def _model_without_emo_metadata(dst: Path) -> Path:
    onnx = _onnx()
    m = onnx.load(str(DEFAULT_MODEL))
    del m.metadata_props[:]
    onnx.save(m, str(dst))
    return dst


@pytest.mark.parametrize("model", ["not-onnx", "no-emo-metadata", "missing", "unknown-name"])
def test_analyze_refuses_a_bad_model_before_any_work(tmp_path, clip, model):
    path = {"not-onnx": tmp_path / "model.onnx", "missing": tmp_path / "nowhere.onnx", "unknown-name": "huge"}.get(model)
    if model == "not-onnx":
        path.write_bytes(b"this is not a model\n")
    elif model == "no-emo-metadata":
        path = _model_without_emo_metadata(tmp_path / "plain.onnx")
    r = cli("analyze", clip, "--out", tmp_path / "out", "--model", path, "--workers", "2", "--no-progress")
    user_error(r, Path(path).name)
    assert not (tmp_path / "out").exists(), "nothing is done for a model that cannot be used"


_NAME_PIECES = st.sampled_from(["..", ".", "/", "\\", "~", "C:", " ", ".emo-raw-1", "frames.csv", "summary.json", "timeline.png",
                                "CON", "nul.txt", BAD, "e\u0301", "\u00e9", "\u00c9", "\u540d\u524d", "\n", "*", "x" * 120, ".mp4", ".avi"])


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(names=st.lists(st.lists(_NAME_PIECES | st.text(st.characters(blacklist_characters="\x00"), max_size=12), max_size=8).map("".join),
                      min_size=1, max_size=6))
def test_analyze_output_folders_stay_inside_out_whatever_the_names(tmp_path_factory, names):
    from emo.edge_runtime.analyze.jobs import NAME_BYTES, plan

    tmp = tmp_path_factory.mktemp("names")
    out, outside = tmp / "out", tmp / "outside"
    out.mkdir(), outside.mkdir()
    (out / "escape").symlink_to(outside)  # a link in --out is never written through
    (out / "video").write_text("a file, not a folder")
    jobs = plan([Path(n) for n in names + ["escape.avi"]], out, count_frames=False)
    folders = [j.out.name for j in jobs]
    assert len({f.casefold() for f in folders}) == len(jobs), folders
    for j in jobs:
        assert j.out.parent == out and os.path.realpath(j.out) == os.path.join(os.path.realpath(out), j.out.name), j.out
        assert not j.out.name.startswith(".") and len(j.out.name.encode("utf-8")) <= NAME_BYTES + 4
        assert not j.out.exists() or (j.out.is_dir() and not j.out.is_symlink())


def test_analyze_writes_only_inside_out_for_hostile_names(tmp_path):
    video = make_video(tmp_path / "v.avi", [np.full((48, 64, 3), 90, np.uint8)] * 3)
    inputs, out, outside = tmp_path / "in", tmp_path / "deep" / "out", tmp_path / "outside"
    inputs.mkdir(), outside.mkdir(), out.mkdir(parents=True)
    (out / "escape").symlink_to(outside)
    names = ["...avi", "..avi", ".avi", ".hidden.avi", "frames.csv.avi", "summary.json.avi", "a b.avi", "A B.mp4",
             "e\u0301.avi", "\u00e9.avi", "x" * 250 + ".avi", "C:\\evil.avi", f"{BAD}.avi", "escape.avi", "CON.avi"]
    for n in names:
        shutil.copy(video, inputs / n)
    before = sorted(p for p in tmp_path.rglob("*") if out not in p.parents)
    r = cli("analyze", *[inputs / n for n in names], "--out", out, "--no-progress", "--detector", "haar")
    assert r.returncode == 0 and f"{len(names)} analysed" in r.stderr, r.stderr[-2000:]
    assert sorted(p for p in tmp_path.rglob("*") if out not in p.parents) == before, "nothing written outside --out"
    done = [p for p in out.iterdir() if (p / "summary.json").is_file()]
    assert len(done) == len(names) and not [p for p in done if p.name.startswith(".")] and not list(outside.iterdir())


# --- round 3: serve under hostile query parameters ---------------------------------------------------

def _hostile_value():
    """What a hostile or careless client puts in a query value: extreme, malformed or very long."""
    numbers = st.one_of(st.integers(min_value=-10**400, max_value=10**400).map(str), st.floats().map(repr),
                        st.sampled_from(["nan", "NaN", "inf", "-inf", "Infinity", "1e999", "-1e999", "1e-320", "5e-324",
                                         "-0", "0x10", "1_000", " 1", "1 ", "+", ".", "1e", "\u0661", "0" * 5000]))
    long = st.integers(min_value=1000, max_value=70000).map(lambda n: "9" * n)
    good = st.sampled_from(["s3cret", "0", "1000", "1e-300", "0.001", "999.999", "snapshot", "off", "mjpeg"])  # to get past the checks
    return st.one_of(good, numbers, st.text(max_size=200), long, st.binary(max_size=64))


def _query(pairs) -> str:
    from urllib.parse import quote, quote_from_bytes

    return "&".join(f"{quote(k, safe='')}=" + (quote_from_bytes(v, safe="") if isinstance(v, bytes) else quote(v, safe=""))
                    for k, v in pairs)


def _ask(port: int, target: str, headers: dict) -> int:
    """The status of GET ``target``; a stream that answers 200 must send its first frame or record within 2 s."""
    import contextlib
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    t0 = time.monotonic()
    conn.request("GET", target, headers={"Connection": "close", **headers})
    with contextlib.closing(conn), contextlib.closing(conn.getresponse()) as r:
        if r.status == 200 and r.headers["Content-Type"] in ("text/event-stream", "multipart/x-mixed-replace; boundary=frame"):
            line = r.fp.readline()
            while not (line.startswith(b"data: ") or line.lower().startswith(b"x-emo-frame")):
                assert line, f"the stream ended before its first frame: {target[:300]}"
                line = r.fp.readline()
            assert time.monotonic() - t0 < 2, target[:300]
        else:
            r.read()
        return r.status


def test_any_query_parameter_gets_an_answer_not_a_traceback():
    """Every parameter of every endpoint (and a repeated or unknown one) with hostile values: a 2xx or
    4xx answer, never a traceback; every stream is freed once its client leaves."""
    from emo.edge_runtime.serve.http import ROUTES
    from emo.edge_runtime.serve.params import PARAMS

    from test_serve import get, serving, until

    names = sorted({n for spec in PARAMS.values() for n in spec} | {"token", "rate", "video", "t", "x"})
    with serving(ASTRONAUT, token="s3cret") as (base, p):
        port = int(base.rsplit(":", 1)[1])

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
        @given(path=st.sampled_from(sorted(ROUTES)), pairs=st.lists(st.tuples(st.sampled_from(names), _hostile_value()), max_size=4),
               bearer=st.booleans())
        @example(path="/api/events", pairs=[("rate", "1e-320")], bearer=True)  # used to sleep "forever": a stuck slot
        @example(path="/api/events", pairs=[("rate", "5e-324")], bearer=True)
        @example(path="/api/events", pairs=[("rate", "1e-300"), ("token", "s3cret")], bearer=False)
        @example(path="/api/events", pairs=[("rate", "1"), ("rate", "2")], bearer=True)
        @example(path="/stream.mjpg", pairs=[("token", "s3cret"), ("token", "s3cret")], bearer=False)
        def one(path, pairs, bearer):
            target = path + ("?" + _query(pairs) if pairs else "")
            status = _ask(port, target, {"Authorization": "Bearer s3cret"} if bearer else {})
            event(f"{path} {status}")
            assert 200 <= status < 500, (status, target[:300])
            until(lambda: get(base + "/api/status?token=s3cret")[1]["streams"] == 0, seconds=2, step=0.02)

        one()
        assert get(base + "/api/status?token=s3cret")[1]["viewers"] == 0
    err = "".join(p.head) + p.captured[1]
    assert "Traceback" not in err and "request failed" not in err, err[-3000:]
