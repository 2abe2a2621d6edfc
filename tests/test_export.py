import json
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from emo.edge_runtime.classifier import Classifier
from emo.edge_runtime.dataset import load_split
from emo.edge_runtime.preprocess import normalize
from emo.train.checkpoint import load_checkpoint, model_from_checkpoint, save_atomic
from emo.train.models import REGISTRY

from conftest import run_cli


def test_seed_export_passes_all_gates(seed_run):
    rep = json.loads((seed_run / "export-report.json").read_text())
    assert rep["passed"] and all(g["passed"] for g in rep["gates"].values())
    assert rep["max_abs_diff_fp32_vs_torch"] <= 1e-4
    assert rep["top1_agreement_int8_vs_fp32"] >= 0.98 and rep["n"] == 500
    assert rep["bytes"]["int8"] < rep["bytes"]["fp32"] / 3
    assert rep["latency_ms_1thread"]["int8"] > 0
    for f in ("model.onnx", "model.int8.onnx"):
        onnx.checker.check_model(str(seed_run / f))


def test_metadata_round_trips_into_edge_runtime(seed_run):
    ck = load_checkpoint(seed_run / "model.pt")
    for name, prec in (("model.onnx", "fp32"), ("model.int8.onnx", "int8")):
        clf = Classifier(seed_run / name)
        m = clf.meta
        assert m.precision == prec and m.arch == "seed" and m.output == "logits"
        assert m.input.size == 48 and m.input.mean == ck["input"]["mean"] and m.input.std == ck["input"]["std"]
        assert len(m.checkpoint_sha256) == 64 and m.emo_version
        assert 0 <= m.metrics["val_accuracy_int8"] <= 1
    # dynamic batch axis
    out = Classifier(seed_run / "model.int8.onnx").predict(np.zeros((5, 1, 48, 48), np.float32))
    assert out.shape == (5, 7) and np.allclose(out.sum(1), 1, atol=1e-5)


def test_fp32_onnx_matches_pytorch_and_int8_agrees(seed_run, fer_root):
    """The foundation's end-to-end contract on 500 real validation images."""
    ck = load_checkpoint(seed_run / "model.pt")
    model = model_from_checkpoint(ck)
    val = load_split(fer_root, "val")
    idx = np.random.default_rng(1).choice(len(val.labels), 500, replace=False)
    x = normalize(val.images[idx], Classifier(seed_run / "model.onnx").spec)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    f32 = Classifier(seed_run / "model.onnx").logits(x)
    i8 = Classifier(seed_run / "model.int8.onnx").logits(x)
    assert np.abs(ref - f32).max() <= 1e-4
    assert (i8.argmax(1) == f32.argmax(1)).mean() >= 0.95


@pytest.mark.parametrize("arch", sorted(set(REGISTRY) - {"seed"}))
def test_export_each_registered_arch(arch, small_fer, tmp_path):
    r = run_cli("emo-train", "fit", "--data", small_fer, "--arch", arch, "--max-steps", 12, "--batch-size", 32,
                "--out", tmp_path, "--name", arch, "--no-progress")
    assert r.returncode == 0, r.stderr
    # BN statistics from 12 steps are rough, so only the fp32 gate is held to its default here
    r = run_cli("emo-export", tmp_path / arch / "model.pt", "--min-agreement", 0.5, "--max-acc-drop", 0.5, "--ort-format",
                "--calib-method", "auto")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "auto calibration" in r.stderr
    rep = json.loads((tmp_path / arch / "export-report.json").read_text())
    assert rep["gates"]["fp32_matches_torch"]["passed"]
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(str(tmp_path / arch / "model.onnx")).graph.node)
    assert (tmp_path / arch / "model.int8.ort").is_file()
    assert Classifier(tmp_path / arch / "model.int8.onnx").meta.arch == arch


def test_failed_gate_keeps_good_export(seed_run, tmp_path, fer_root):
    """Calibrating on (nearly) blank images breaks int8; the earlier good export must survive."""
    good = seed_run / "model.int8.onnx"
    before = good.read_bytes()
    blank = tmp_path / "blank" / "train" / "neutral"
    blank.mkdir(parents=True)
    import cv2

    rng = np.random.default_rng(0)
    for i in range(60):  # nearly blank: grey with one-level noise (fully constant ones are skipped)
        cv2.imwrite(str(blank / f"b{i}.png"), (128 + rng.integers(0, 2, (48, 48))).astype(np.uint8))
    r = run_cli("emo-export", seed_run / "model.pt", "--calib-data", tmp_path / "blank", "--val-data", fer_root, "--val-size", 300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "verification failed" in r.stderr and "Traceback" not in r.stderr
    assert "FAIL" in r.stdout
    assert good.read_bytes() == before
    assert (seed_run / "model.int8.FAILED.onnx").is_file()
    rep = json.loads((seed_run / "export-report.json").read_text())
    assert not rep["passed"]
    # restore the passing report for other tests
    r = run_cli("emo-export", seed_run / "model.pt", "--val-size", 500, "--calib-size", 200)
    assert r.returncode == 0


def test_fp32_gate_fails_on_corrupted_onnx_weights(seed_run, tmp_path, monkeypatch):
    """Corrupt one weight tensor of the exported fp32 graph: the fp32 gate must catch it."""
    from onnx import numpy_helper

    import emo.export.exporter as ex

    real = ex.torch_to_onnx

    def corrupting(model, spec, path, opset):
        real(model, spec, path, opset)
        m = onnx.load(str(path))
        init = max(m.graph.initializer, key=lambda t: np.prod(t.dims))
        w = numpy_helper.to_array(init).copy()
        w.flat[::7] *= -3.0
        init.CopyFrom(numpy_helper.from_array(w, init.name))
        onnx.save(m, str(path))

    monkeypatch.setattr(ex, "torch_to_onnx", corrupting)
    shutil.copy(seed_run / "model.pt", tmp_path / "m.pt")
    rep = ex.export(tmp_path / "m.pt", ex.ExportOptions(val_size=200, calib_size=100), log=lambda s: None)
    assert not rep["passed"] and not rep["gates"]["fp32_matches_torch"]["passed"]
    assert not (tmp_path / "m.onnx").exists() and (tmp_path / "m.FAILED.onnx").exists()


def test_nan_weights_are_refused(seed_run, tmp_path):
    ck = load_checkpoint(seed_run / "model.pt")
    ck["state_dict"]["classifier.4.weight"][:] = float("nan")
    save_atomic(ck, tmp_path / "broken.pt")
    r = run_cli("emo-export", tmp_path / "broken.pt")
    assert r.returncode == 2 and "NaN or infinite weights" in r.stderr and "Traceback" not in r.stderr


def test_tight_threshold_flag_fails_the_gate(seed_run, tmp_path):
    r = run_cli("emo-export", seed_run / "model.pt", "--out-dir", tmp_path, "--val-size", 200, "--calib-size", 100,
                "--min-agreement", 1.01)
    assert r.returncode == 1 and "int8_agrees_with_fp32" in r.stderr


def test_clear_errors(tmp_path, seed_run):
    (tmp_path / "x.pt").write_text("hello")
    r = run_cli("emo-export", tmp_path / "x.pt")
    assert r.returncode == 2 and "not a PyTorch checkpoint" in r.stderr and "Traceback" not in r.stderr
    ck = load_checkpoint(seed_run / "model.pt")
    ck["arch"] = "vgg99"
    save_atomic(ck, tmp_path / "arch.pt")
    r = run_cli("emo-export", tmp_path / "arch.pt")
    assert r.returncode == 2 and "unknown architecture 'vgg99'" in r.stderr
    r = run_cli("emo-export", seed_run / "model.pt", "--calib-data", tmp_path / "nowhere")
    assert r.returncode == 2 and "nowhere" in r.stderr and "does not exist" in r.stderr
    (tmp_path / "afile").write_text("x")
    r = run_cli("emo-export", seed_run / "model.pt", "--out-dir", tmp_path / "afile" / "sub")
    assert r.returncode == 2 and "cannot create output folder" in r.stderr and "Traceback" not in r.stderr
