import json
import shutil

import cv2
import numpy as np
import onnx
import pytest
import torch

from emo.edge_runtime.classifier import Classifier
from emo.edge_runtime.dataset import load_split
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.preprocess import normalize
from emo.export.exporter import ExportOptions, Gates, check_gates, load_faces
from emo.train.checkpoint import load_checkpoint, model_from_checkpoint, save_atomic
from emo.train.models import REGISTRY

from conftest import emo_here, run_cli


def test_seed_export_passes_all_gates(seed_run):
    rep = json.loads((seed_run / "export-report.json").read_text())
    assert rep["passed"] and all(g["passed"] for g in rep["gates"].values())
    assert rep["max_abs_diff_fp32_vs_torch"] <= 1e-4
    assert rep["top1_agreement_int8_vs_fp32"] >= 0.98 and rep["n"] == 7 * 20  # all synthetic val faces
    assert rep["calibration"]["faces"] == 200 and rep["calibration"]["data"].endswith("train")
    assert rep["verification_data"].endswith("val")
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


def test_export_fits_a_temperature_and_scores_degraded_faces(seed_run, synthetic_fer):
    rep = json.loads((seed_run / "export-report.json").read_text())
    c = rep["confidence"]
    assert c["fitted"] and 0.05 <= c["temperature"] <= 20
    # fitted on the verification faces and a spoiled copy of each: the ECE is reported on both
    assert c["spoiled_faces"] and all(0 <= c[k] <= 1 for k in ("ece_before", "ece_after", "ece_spoiled_before", "ece_spoiled_after"))
    rb = rep["robustness_int8"]
    assert set(rb["accuracy"]) == {"dark", "bright", "blur", "motion", "jpeg", "face24", "face16", "noise", "rot+15", "rot-15"}
    assert rb["worst"] == min(rb["accuracy"].values()) and rb["worst"] <= rb["mean"] <= max(rb["accuracy"].values())
    clf = Classifier(seed_run / "model.int8.onnx")
    assert clf.meta.temperature == c["temperature"]
    assert clf.meta.metrics["val_ece_int8"] == c["ece_after"] and clf.meta.metrics["val_degraded_mean_int8"] == rb["mean"]
    # the runtime's confidence is the calibrated one: the ECE emo-edge evaluate reports is the export's
    r = run_cli("emo-edge", "evaluate", synthetic_fer, "--model", seed_run / "model.int8.onnx", "--json", seed_run.parent / "ev.json")
    assert r.returncode == 0, r.stderr
    assert json.loads((seed_run.parent / "ev.json").read_text())["ece"] == pytest.approx(c["ece_after"], abs=2e-3)


def test_fp32_onnx_matches_pytorch_and_int8_agrees(seed_run, fer_root):
    """The foundation's end-to-end contract on 500 real validation images (for a model trained on
    drawn faces: what matters here is that the three agree, not that they are right)."""
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
def test_export_each_registered_arch(arch, synthetic_fer, tmp_path):
    r = run_cli("emo-train", "fit", "--data", synthetic_fer, "--set", f"arch={arch}", "--set", "max_steps=12",
                "--set", "batch_size=32", "--out", tmp_path, "--name", arch, "--no-progress")
    assert r.returncode == 0, r.stderr
    # BN statistics from 12 steps are rough, so only the fp32 gate is held to its default here
    method = [] if arch == "emonet-s" else ["--calib-method", "minmax"]  # emonet-s: the default, auto (it tries each)
    r = run_cli("emo-export", tmp_path / arch / "model.pt", "--min-agreement", 0.5, "--max-acc-drop", 0.5, "--ort-format", *method)
    assert r.returncode == 0, r.stderr + r.stdout
    assert ("auto calibration" in r.stderr) == (not method)  # the default method tries each
    rep = json.loads((tmp_path / arch / "export-report.json").read_text())
    assert rep["gates"]["fp32_matches_torch"]["passed"]
    assert not any(n.op_type == "BatchNormalization" for n in onnx.load(str(tmp_path / arch / "model.onnx")).graph.node)
    assert (tmp_path / arch / "model.int8.ort").is_file()
    assert Classifier(tmp_path / arch / "model.int8.onnx").meta.arch == arch


def test_failed_gate_keeps_good_export(seed_run_copy, synthetic_fer, tmp_path):
    """Calibrating on (nearly) blank images breaks int8; the earlier good export must survive."""
    run = seed_run_copy
    good = run / "model.int8.onnx"
    before = good.read_bytes()
    blank = tmp_path / "blank" / "train" / "neutral"
    blank.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(60):  # nearly blank: grey with one-level noise (fully constant ones are skipped)
        cv2.imwrite(str(blank / f"b{i}.png"), (128 + rng.integers(0, 2, (48, 48))).astype(np.uint8))
    r = run_cli("emo-export", run / "model.pt", "--calib-data", tmp_path / "blank", "--val-data", synthetic_fer,
                "--calib-method", "minmax")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "verification failed" in r.stderr and "Traceback" not in r.stderr
    assert "FAIL" in r.stdout
    assert good.read_bytes() == before
    assert (run / "model.int8.FAILED.onnx").is_file()
    rep = json.loads((run / "export-report.json").read_text())
    assert not rep["passed"]


def test_calibration_faces_are_never_the_verification_faces(seed_run, synthetic_fer, tmp_path):
    flat = synthetic_fer / "val"  # a folder of class folders: no splits, all of it answers both
    r = run_cli("emo-export", seed_run / "model.pt", "--calib-data", flat, "--out-dir", tmp_path)
    assert r.returncode == 2 and "would both use" in r.stderr and "--val-data" in r.stderr and "Traceback" not in r.stderr
    opts, log = ExportOptions(calib_size=10, val_size=10), []
    with pytest.raises(EmoError, match="would both use"):  # the same folder, named two ways
        load_faces(str(synthetic_fer), str(synthetic_fer / "train"), 48, opts, log.append)
    only_train = tmp_path / "only_train"
    shutil.copytree(synthetic_fer / "train", only_train / "train")
    with pytest.raises(EmoError, match="no 'val' folder"):  # no silent fallback to the train faces
        load_faces(str(only_train), str(only_train), 48, opts, log.append)
    calib, val = load_faces(str(only_train), str(flat), 48, opts, log.append)
    assert len(calib.labels) == len(val.labels) == 10
    assert log == [f"calibration faces: {only_train / 'train'}; verification faces: {flat} (a folder of class folders, "
                   "no split folders: all of it)"]


def test_gate_checks():
    labels = np.array([0, 1, 2, 3])
    ref = np.eye(7)[labels] * 5.0
    r = check_gates(ref, ref + 1e-6, ref, labels, Gates())
    assert r["n"] == 4 and r["accuracy_torch"] == r["accuracy_fp32"] == r["accuracy_int8"] == 1.0
    assert all(g["passed"] for g in r["gates"].values()) and r["max_abs_diff_fp32_vs_torch"] == pytest.approx(1e-6)
    wrong = ref.copy()
    wrong[0] = np.eye(7)[6] * 5.0  # int8 gets one of four wrong
    r = check_gates(ref, ref, wrong, labels, Gates())
    assert r["top1_agreement_int8_vs_fp32"] == 0.75 and r["accuracy_drop_int8"] == 0.25
    assert not r["gates"]["int8_agrees_with_fp32"]["passed"] and not r["gates"]["int8_accuracy_drop"]["passed"]
    assert r["gates"]["fp32_matches_torch"]["passed"]
    r = check_gates(ref, ref + np.nan, ref, labels, Gates())
    assert not r["gates"]["fp32_matches_torch"]["passed"]  # NaN never passes
    r = check_gates(ref, ref, wrong, labels, Gates(min_agreement=0.75, max_acc_drop=0.25))
    assert all(g["passed"] for g in r["gates"].values())  # thresholds are inclusive


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
    rep = ex.export(tmp_path / "m.pt", ex.ExportOptions(val_size=200, calib_size=100, calib_method="minmax"), log=lambda s: None)
    assert not rep["passed"] and not rep["gates"]["fp32_matches_torch"]["passed"]
    assert not (tmp_path / "m.onnx").exists() and (tmp_path / "m.FAILED.onnx").exists()


def test_nan_weights_are_refused(seed_run, tmp_path):
    ck = load_checkpoint(seed_run / "model.pt")
    ck["state_dict"]["classifier.4.weight"][:] = float("nan")
    save_atomic(ck, tmp_path / "broken.pt")
    r = run_cli("emo-export", tmp_path / "broken.pt")
    assert r.returncode == 2 and "NaN or infinite weights" in r.stderr and "Traceback" not in r.stderr


def test_tight_threshold_flag_fails_the_gate(seed_run, tmp_path):
    r = run_cli("emo-export", seed_run / "model.pt", "--out-dir", tmp_path, "--calib-size", 100, "--calib-method", "minmax",
                "--min-agreement", 1.01)
    assert r.returncode == 1 and "int8_agrees_with_fp32" in r.stderr


def test_clear_errors(tmp_path, seed_run, monkeypatch, capfd):
    (tmp_path / "x.pt").write_text("hello")
    ck = load_checkpoint(seed_run / "model.pt")
    ck["arch"] = "vgg99"
    save_atomic(ck, tmp_path / "arch.pt")
    (tmp_path / "afile").write_text("x")
    r = run_cli("emo-export", tmp_path / "x.pt")  # one through the installed command
    assert r.returncode == 2 and "not a PyTorch checkpoint" in r.stderr and "Traceback" not in r.stderr
    for args, why in (([tmp_path / "arch.pt"], ["unknown architecture 'vgg99'"]),
                      ([seed_run / "model.pt", "--calib-data", tmp_path / "nowhere"], ["nowhere", "does not exist"]),
                      ([seed_run / "model.pt", "--out-dir", tmp_path / "afile" / "sub"], ["cannot create output folder"])):
        code, _, err = emo_here("emo-export", monkeypatch, capfd, *args)
        assert code == 2 and all(w in err for w in why) and "Traceback" not in err and err.count("\n") == 1, err


def test_equalisation_keeps_the_function_and_evens_the_ranges():
    from emo.export.equalize import equalize_separable, separable_pairs

    torch.manual_seed(0)
    model = REGISTRY["emonet-s"]().eval()
    for m in model.modules():  # uneven channels, as training leaves them
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.05, 3.0), m.running_var.data.uniform_(0.5, 2)
    x = torch.randn(64, 1, 48, 48)
    pairs = separable_pairs(model)
    assert len(pairs) == 2 * 5  # two depthwise -> 1x1 pairs in each of emonet-s's five separable blocks
    eq, n = equalize_separable(model, x)
    assert n == len(pairs) and eq is not model
    def ranges(m):
        seen = []
        hooks = [bn.register_forward_hook(lambda mod, i, o: seen.append(o.abs().amax(dim=(0, 2, 3)))) for _, bn, _ in separable_pairs(m)]
        with torch.no_grad():
            out = m(x)
        for h in hooks:
            h.remove()
        return out, seen

    (ref, before), (out, after) = ranges(model), ranges(eq)
    assert torch.allclose(out, ref, atol=1e-4)
    for b, a in zip(before, after):  # each channel scaled up to the widest one's range (at most 100x)
        want = torch.minimum(b * 100, b.max().expand_as(b))
        assert torch.allclose(a, want, rtol=1e-3, atol=1e-6)
    plain = REGISTRY["emonet"]().eval()
    same, n = equalize_separable(plain, x)
    assert n == 0 and same is plain  # nothing separable: untouched
