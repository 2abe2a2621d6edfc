"""Detectors: `emo-edge fetch yunet` against a local HTTP server, `--detector auto`, upright
faces (alignment), and the detection-quality evaluation in its quick mode."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest

from emo.edge_runtime.assets import ASSETS
from emo.edge_runtime.faces import make_detector
from emo.edge_runtime.preprocess import InputSpec, crop_face, to_gray
from emo.edge_runtime.recognizer import Recognizer

from conftest import REPO, YUNET, bin_path

ASTRONAUT = REPO / "examples" / "astronaut.png"
CACHE_NAME = ASSETS["yunet"].file


@pytest.fixture(scope="module")
def yunet_file() -> Path:
    if YUNET is None or not YUNET.is_file():
        pytest.skip("YuNet test file not found (../shared/models/face_detection_yunet.onnx); set EMO_SHARED_DATA")
    return YUNET


@contextmanager
def file_server(payload: bytes, cut_at: int | None = None):
    """Serve ``payload`` at /face.onnx on 127.0.0.1; with ``cut_at``, close the connection after
    that many bytes although Content-Length promises them all."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/face.onnx":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload[:cut_at] if cut_at is not None else payload)
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/face.onnx"
    finally:
        srv.shutdown()
        srv.server_close()


def fetch(cache: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([bin_path("emo-edge"), "fetch", "yunet", *map(str, args)], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "EMO_CACHE_DIR": str(cache)})


def one_line_error(r, *needles) -> None:
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


def test_fetch_good_file_wrong_checksum_cut_connection_and_server_down(tmp_path, yunet_file):
    data = yunet_file.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    cache = tmp_path / "cache"
    with file_server(data) as url:
        one_line_error(fetch(cache, "--url", url), "SHA-256", "nothing was saved")  # the pinned 2023mar checksum
        assert not cache.exists() or list(cache.iterdir()) == []
        r = fetch(cache, "--url", url, "--sha256", sha)
        assert r.returncode == 0 and str(cache / CACHE_NAME) in r.stdout, r.stderr
        assert (cache / CACHE_NAME).read_bytes() == data and sorted(p.name for p in cache.iterdir()) == [CACHE_NAME]
    cache2 = tmp_path / "cache2"
    with file_server(data, cut_at=len(data) // 2) as url:
        one_line_error(fetch(cache2, "--url", url, "--sha256", sha), "cannot download", "cut")
    assert not cache2.exists() or list(cache2.iterdir()) == []
    with file_server(data) as url:
        pass  # the server is gone now
    one_line_error(fetch(tmp_path / "cache3", "--url", url, "--sha256", sha, "--timeout", "5"),
                   "cannot download", ASSETS["yunet"].url, str(tmp_path / "cache3" / CACHE_NAME))
    one_line_error(fetch(tmp_path / "c4", "--url", url.replace("face", "nothing")), "cannot download")


def infer_detector(cache: Path, *args) -> str:
    r = subprocess.run([bin_path("emo-edge"), "infer", str(ASTRONAUT), *map(str, args)], capture_output=True, text=True,
                       timeout=60, env={**os.environ, "EMO_CACHE_DIR": str(cache)})
    assert r.returncode == 0, r.stderr
    rec = json.loads(r.stdout.splitlines()[0])
    assert len(rec["faces"]) == 1
    return rec["detector"]


def test_auto_takes_yunet_from_the_cache_or_the_option_else_haar(tmp_path, yunet_file):
    cache = tmp_path / "cache"
    assert infer_detector(cache) == "haar"
    assert infer_detector(cache, "--detector-model", yunet_file) == "yunet"
    info = subprocess.run([bin_path("emo-edge"), "info"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "EMO_CACHE_DIR": str(cache)}).stdout
    assert "auto: haar" in info and "emo-edge fetch yunet" in info
    cache.mkdir()
    shutil.copy(yunet_file, cache / CACHE_NAME)
    assert infer_detector(cache) == "yunet"
    assert infer_detector(cache, "--detector", "haar") == "haar"
    info = subprocess.run([bin_path("emo-edge"), "info"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "EMO_CACHE_DIR": str(cache)}).stdout
    assert f"auto: yunet ({cache / CACHE_NAME})" in info
    models = subprocess.run([bin_path("emo-edge"), "models", "--json"], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "EMO_CACHE_DIR": str(cache)})
    rows = {r["name"]: r for r in json.loads(models.stdout)}
    assert rows["yunet"]["cached"] and rows["default"]["precision"] == "int8"


def _rotate(img: np.ndarray, angle: float) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.warpAffine(img, cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0), (w, h), borderMode=cv2.BORDER_REPLICATE)


def _photo(photos: Path, name: str, side: int = 800) -> np.ndarray:
    img = cv2.imread(str(photos / name))
    s = side / max(img.shape[:2])
    return cv2.resize(img, (round(img.shape[1] * s), round(img.shape[0] * s)), interpolation=cv2.INTER_AREA)


def test_aligned_crops_of_tilted_faces_look_like_the_upright_face(photos, yunet_file):
    det = make_detector("yunet", yunet_file)
    corr = {"aligned": [], "plain": []}
    for name in ("obama.jpg", "biden2.jpg", "alex-lacamoire.png", "obama_small.jpg"):
        img = _photo(photos, name, 640)
        up = det.detect_faces(img)[0]
        upright = crop_face(to_gray(img), up.box, InputSpec(), up.angle).astype(float).ravel()
        for ang in (-30, -15, 15, 30):
            r = _rotate(img, ang)
            d = max(det.detect_faces(r), key=lambda x: x.box[2] * x.box[3])
            assert abs(d.angle) > 5 and np.sign(d.angle) == -np.sign(ang), (name, ang, d)  # the tilt is seen, its way
            for key, a in (("aligned", d.angle), ("plain", 0.0)):
                corr[key].append(np.corrcoef(crop_face(to_gray(r), d.box, InputSpec(), a).astype(float).ravel(), upright)[0, 1])
    assert np.mean(corr["aligned"]) > np.mean(corr["plain"]) + 0.15, {k: np.round(v, 2) for k, v in corr.items()}


def test_tilted_faces_keep_their_top_emotion(photos, yunet_file, capsys):
    recs = {a: Recognizer(detector="yunet", detector_model=str(yunet_file), align=a) for a in (True, False)}
    agree = {True: [], False: []}
    for name in sorted(p.name for p in photos.iterdir() if p.suffix in (".jpg", ".png", ".jpeg")):
        img = _photo(photos, name)
        up = recs[True].process(img)
        recs[True].reset()
        if len(up) != 1 or up[0].confidence < 60:  # only faces the model is sure about upright
            continue
        for ang in (-30, -15, 15, 30):
            for a, rec in recs.items():
                got = rec.process(_rotate(img, ang))
                rec.reset()
                agree[a].append(bool(got) and max(got, key=lambda f: f.box[2] * f.box[3]).emotion == up[0].emotion)
    with capsys.disabled():
        print(f"\nagreement with the upright top emotion over +-15/30 deg: aligned {np.mean(agree[True]):.2f}, "
              f"not aligned {np.mean(agree[False]):.2f} ({len(agree[True])} rotated faces)")
    assert len(agree[True]) >= 16 and np.mean(agree[True]) >= 0.75 and np.mean(agree[True]) >= np.mean(agree[False]) - 0.05


def test_the_evaluation_runs_in_quick_mode(tmp_path, photos, yunet_file):
    pytest.importorskip("skimage", reason="scikit-image (its non-face images) is in the dev extra")
    out = tmp_path / "det.json"
    r = subprocess.run([sys.executable, str(REPO / "research" / "scripts" / "eval_detectors.py"), "--photos", str(photos),
                        "--yunet", str(yunet_file), "--quick", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    rows = {(x["detector"], x["detect_size"], x["setting"]): x for x in res["rows"]}
    assert len(rows) == 4 and res["faces"] >= 8 and all(0 <= x["recall"] <= 1 for x in rows.values())
    best = {d: max(x["recall"] for k, x in rows.items() if k[0] == d) for d in ("haar", "yunet")}
    assert best["yunet"] > best["haar"]
    assert res["crop_ms"]["aligned"] < 1.0 and "| haar |" in out.with_suffix(".md").read_text()
