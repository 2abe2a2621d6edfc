"""The robustness benchmark's conditions (fixed definitions) and the trainer's random camera."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from emo.edge_runtime.classifier import Classifier
from emo.edge_runtime.degrade import (CONDITIONS, degrade_images, face_height, parse_conditions, random_degrade,
                                      summarize)
from emo.edge_runtime.errors import EmoError
from emo.train.augment import degrade
from emo.train.config import TrainConfig

from conftest import run_cli, synthetic_face


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([synthetic_face(i % 7, rng) for i in range(14)])


def test_conditions_follow_their_definitions(faces):
    f = faces.astype(np.float32)
    assert np.array_equal(degrade_images(faces, "dark"), np.rint(f * 0.5).astype(np.uint8))
    assert np.array_equal(degrade_images(faces, "bright"), np.clip(np.rint(f * 1.5), 0, 255).astype(np.uint8))
    assert np.array_equal(degrade_images(faces, "motion")[0], cv2.blur(faces[0], (5, 1), borderType=cv2.BORDER_REFLECT_101))
    small = cv2.resize(faces[0], (16, 16), interpolation=cv2.INTER_AREA)
    assert np.array_equal(degrade_images(faces, "face16")[0], cv2.resize(small, (48, 48), interpolation=cv2.INTER_LINEAR))
    # rotations turn opposite ways and keep the size; a 4-fold turn of +15 is not the image
    plus, minus = degrade_images(faces, "rot+15"), degrade_images(faces, "rot-15")
    assert plus.shape == faces.shape and not np.array_equal(plus, minus)
    # the noise is one fixed draw: the same for every call, model and machine; sigma about 10
    n1, n2 = degrade_images(faces, "noise"), degrade_images(faces, "noise")
    assert np.array_equal(n1, n2)
    d = n1.astype(np.float32) - f
    inside = (faces > 40) & (faces < 215)
    assert 8.5 < d[inside].std() < 11.5
    j = degrade_images(faces, "jpeg")
    assert j.dtype == np.uint8 and not np.array_equal(j, faces) and np.abs(j.astype(int) - faces).mean() < 12
    for name in CONDITIONS:
        out = degrade_images(faces, name)
        assert out.shape == faces.shape and out.dtype == np.uint8 and not np.array_equal(out, faces), name


def test_condition_names_and_summary():
    assert parse_conditions("all") == list(CONDITIONS)
    assert parse_conditions("blur, face12") == ["blur", "face12"]
    for bad in ("", "fog", "face2", "blur,,x"):
        with pytest.raises(EmoError, match="degrad"):
            parse_conditions(bad)
    s = summarize({"clean": 0.9, "blur": 0.6, "jpeg": 0.8}, ["blur", "jpeg"])
    assert s == {"mean": pytest.approx(0.7), "worst": 0.6, "worst_condition": "blur"}
    face = np.full((48, 48), 100, np.uint8)
    assert face_height(face, 48) is face


def test_random_degrade_is_seeded_and_varied(faces):
    a = [random_degrade(im, np.random.default_rng(5)) for im in faces]
    b = [random_degrade(im, np.random.default_rng(5)) for im in faces]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    rng = np.random.default_rng(1)
    outs = [random_degrade(faces[0], rng) for _ in range(40)]
    assert all(o.shape == (48, 48) and o.dtype == np.uint8 for o in outs)
    changed = sum(not np.array_equal(o, faces[0]) for o in outs)
    assert 20 <= changed <= 40  # most draws spoil the face; the mix differs between draws
    assert len({o.tobytes() for o in outs}) > 20


def test_trainer_degrades_a_share_of_the_batch_from_its_generator(faces):
    cfg = TrainConfig(degrade=0.5)
    x = torch.from_numpy(((faces.astype(np.float32) / 255 - cfg.mean) / cfg.std)[:, None])
    g = lambda: torch.Generator().manual_seed(7)  # noqa: E731
    a, b = degrade(x, cfg, g()), degrade(x, cfg, g())
    assert torch.equal(a, b) and a.shape == x.shape
    changed = [not torch.equal(a[i], x[i]) for i in range(len(x))]
    assert 2 <= sum(changed) <= 12
    assert torch.equal(degrade(x, TrainConfig(degrade=0.0), g()), x)


def _fit(data, out, name, *sets):
    args = ["fit", "--data", data, "--out", out, "--name", name, "--no-progress", "--set", "arch=seed",
            "--set", "max_steps=3", "--set", "batch_size=32", "--set", "plots=false"]
    for s in sets:
        args += ["--set", s]
    return run_cli("emo-train", *args)


def test_robust_fit_selects_by_degraded_validation(seed_run, synthetic_fer, tmp_path):
    teacher = json.dumps(str(seed_run / "model.pt"))
    r = _fit(synthetic_fer, tmp_path, "rob", f"init_from={teacher}", f"teachers=[{teacher}]", "kd_alpha=0.5",
             "kd_clean=true", "degrade=0.5", "val_degrade=true", "select=robust")
    assert r.returncode == 0, r.stderr
    assert "degraded mean" in r.stdout
    m = json.loads((tmp_path / "rob" / "metrics.json").read_text())
    row = m["history"][0]
    assert row["val_robust"] == pytest.approx((row["val_accuracy"] + row["val_degraded_mean"]) / 2, abs=1e-5)
    assert row["val_degraded_worst"] <= row["val_degraded_mean"]
    assert m["best"]["val_robust"] == max(h["val_robust"] for h in m["history"])


@pytest.mark.parametrize("sets, says", [
    (["select=robust"], "needs val_degrade"),
    (["select=best"], "select must be one of"),
    (["degrade=1.5"], "within [0, 1]"),
    (["kd_clean=true"], "set degrade"),
])
def test_robust_settings_errors(synthetic_fer, tmp_path, sets, says):
    r = _fit(synthetic_fer, tmp_path, "bad", *sets)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_evaluate_prints_and_writes_the_robustness_table(synthetic_fer, tmp_path):
    out = tmp_path / "r.json"
    r = run_cli("emo-edge", "evaluate", synthetic_fer, "--model", "tiny", "--degrade", "blur,face16,noise", "--json", out)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    deg = res["degraded"]
    assert list(deg["accuracy"]) == ["clean", "blur", "face16", "noise"]
    assert deg["accuracy"]["clean"] == res["report"]["accuracy"]
    vals = [deg["accuracy"][n] for n in ("blur", "face16", "noise")]
    assert deg["mean"] == pytest.approx(sum(vals) / 3, abs=1e-4) and deg["worst"] == min(vals)
    assert 0.0 <= res["ece"] <= 1.0 and res["temperature"] == Classifier("tiny").meta.temperature and res["tta"] is False
    for word in ("face16", "mean", "worst", "ECE"):
        assert word in r.stdout
    # the old form (model first) still works and gives the same clean figure
    old = run_cli("emo-edge", "evaluate", "tiny", synthetic_fer, "--json", tmp_path / "o.json")
    assert old.returncode == 0, old.stderr
    assert json.loads((tmp_path / "o.json").read_text())["report"] == res["report"]
    both = run_cli("emo-edge", "evaluate", "tiny", synthetic_fer, "--model", "tiny")
    assert both.returncode == 2 and "give the model once" in both.stderr and "Traceback" not in both.stderr
    bad = run_cli("emo-edge", "evaluate", synthetic_fer, "--degrade", "fog")
    assert bad.returncode == 2 and "unknown degradation 'fog'" in bad.stderr and "Traceback" not in bad.stderr
