"""Honest confidence: temperature in the model's metadata, ECE, and mirror averaging (TTA)."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from emo.edge_runtime.classifier import Classifier, bundled_models
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.metadata import KEY
from emo.edge_runtime.metrics import expected_calibration_error, fit_temperature
from emo.edge_runtime.preprocess import normalize

from conftest import synthetic_face


def _with_metadata(src, dst, **changes):
    m = onnx.load(str(src))
    for p in m.metadata_props:
        if p.key == KEY:
            d = json.loads(p.value)
            d.update(changes)
            p.value = json.dumps(d)
    onnx.save(m, str(dst))
    return dst


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    rng = np.random.default_rng(3)
    return np.stack([synthetic_face(i % 7, rng) for i in range(21)])


def _softmax(z):
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def test_the_runtime_applies_the_models_temperature(crops, tmp_path):
    plain = Classifier("tiny")
    hot = Classifier(_with_metadata(bundled_models()["tiny"], tmp_path / "t.onnx", temperature=2.5))
    x = np.ascontiguousarray(crops)
    z = plain.logits(normalize(x, plain.spec))
    assert np.allclose(plain.predict_crops(x), _softmax(z / plain.meta.temperature), atol=1e-5)
    assert np.allclose(hot.predict_crops(x), _softmax(z / 2.5), atol=1e-5)
    assert np.array_equal(hot.predict_crops(x).argmax(1), plain.predict_crops(x).argmax(1))


@pytest.mark.parametrize("bad", [0.0, -1.0, 100.0, "2", None])
def test_a_bad_temperature_is_refused(tmp_path, bad):
    with pytest.raises(EmoError, match="temperature"):
        Classifier(_with_metadata(bundled_models()["tiny"], tmp_path / "t.onnx", temperature=bad))


def test_tta_averages_each_face_with_its_mirror_in_one_call(crops):
    plain, tta = Classifier("tiny"), Classifier("tiny", tta=True)
    calls = []
    run = tta.session.run
    tta.session = type("S", (), {"run": lambda self, o, feed: calls.append(len(next(iter(feed.values())))) or run(o, feed)})()
    got = tta.predict_crops(crops)
    want = (plain.predict_crops(crops) + plain.predict_crops(np.ascontiguousarray(crops[:, :, ::-1]))) / 2
    assert np.allclose(got, want, atol=1e-5) and np.allclose(got.sum(1), 1, atol=1e-5)
    assert calls == [2 * len(crops)]
    assert tta.predict_crops(crops[:0]).shape == (0, 7)


def test_fitted_temperature_calibrates_overconfident_logits():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 7, 4000)
    z = rng.normal(size=(4000, 7))
    z[np.arange(4000), y] += 1.5
    sharp = z * 4  # the same ranking, far too confident
    before = expected_calibration_error(_softmax(sharp), y)
    t = fit_temperature(sharp, y)
    after = expected_calibration_error(_softmax(sharp / t), y)
    assert 2.0 < t < 5.0 and before > 0.15 and after < 0.03
    # ECE by hand on a tiny case: two bins, confidence 0.9 right and 0.6 wrong
    p = np.array([[0.9, 0.1], [0.6, 0.4]])
    assert expected_calibration_error(p, np.array([0, 1]), bins=15) == pytest.approx((0.1 + 0.6) / 2)


def test_tta_reaches_infer_and_the_python_api():
    from emo.edge_runtime.files import read_image
    from emo.edge_runtime.recognizer import Recognizer

    from conftest import REPO, run_cli

    photo = REPO / "examples" / "astronaut.png"
    plain = Recognizer(model="tiny", detector="haar").process(read_image(photo))
    both = Recognizer(model="tiny", detector="haar", tta=True).process(read_image(photo))
    assert [f.box for f in both] == [f.box for f in plain] and both[0].scores != plain[0].scores
    r = run_cli("emo-edge", "infer", photo, "--model", "tiny", "--detector", "haar", "--tta", "--format", "json")
    assert r.returncode == 0, r.stderr
    face = json.loads(r.stdout)["faces"][0]
    assert face["emotion"] == "happy" and face["scores"] == pytest.approx(both[0].scores, abs=0.011)
