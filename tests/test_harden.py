"""`emo-train harden`: a twin of a trained emonet's first blocks learns spoiled faces, and a quality
gate sends each face through the stem that suits it. A fresh twin changes no answer; the gate tells
spoiled faces from clean ones and stays in float in the int8 model; the command trains, measures,
resumes, exports, and refuses what it cannot harden."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from emo.edge_runtime.degrade import random_degrade
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.preprocess import InputSpec, normalize
from emo.export.convert import quantize, run_onnx, torch_to_onnx
from emo.train.checkpoint import load_checkpoint, model_from_checkpoint
from emo.train.gated import fit_gate
from emo.train.harden import _batch
from emo.train.models import build_model

from conftest import emo_train_here, run_cli, synthetic_face

SMALL = {"arch": "emonet", "arch_args": {"widths": [8, 16, 32], "blocks": [1, 1]}}


def clean_and_spoiled(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    clean = np.stack([synthetic_face(i % 7, rng) for i in range(n)])
    return clean, np.stack([random_degrade(im, rng, min_px=12) for im in clean])


def test_a_fresh_twin_changes_nothing_and_the_gate_tells_spoiled_faces(tmp_path):
    torch.manual_seed(0)
    spec = InputSpec()
    model = build_model("dual-stem", base=SMALL, split=2).eval()
    clean, spoiled = clean_and_spoiled(300, 1)
    x = torch.from_numpy(normalize(np.concatenate([clean[:20], spoiled[:20]]), spec))
    with torch.no_grad():
        assert torch.allclose(model(x), model.net(x), atol=1e-5)  # the twin starts as the stem: same answers
        for p in model.twin.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    stats = fit_gate(model, normalize(spoiled, spec), normalize(clean, spec))
    assert stats["mine_to_copy"] > stats["other_to_copy"] + 0.3
    new_clean, new_spoiled = clean_and_spoiled(100, 2)
    with torch.no_grad():
        g_clean = model.routed(torch.from_numpy(normalize(new_clean, spec))).numpy()
        g_spoiled = model.routed(torch.from_numpy(normalize(new_spoiled, spec))).numpy()
        out = model(x)
        h, t = model.stems(x)
        g = model.routed(x)[:, None, None, None]
        mixed = model.rest(g * t + (1 - g) * h)
    assert g_spoiled.mean() > g_clean.mean() + 0.2  # faces the gate never saw
    assert torch.allclose(out, mixed, atol=1e-5)
    fp32, int8 = tmp_path / "dual.onnx", tmp_path / "dual.int8.onnx"
    torch_to_onnx(model, spec, fp32, 17)
    assert np.allclose(run_onnx(fp32, x.numpy()), out.numpy(), atol=1e-4)
    quantize(fp32, int8, normalize(np.concatenate([clean, spoiled]), spec)[::3], "minmax", per_channel=True)
    graph = onnx.load(str(int8)).graph
    made = {o: n for n in graph.node for o in n.output}
    gemm = [n for n in graph.node if n.name.startswith("/gate/") and n.op_type == "Gemm"]
    assert gemm and all(i not in made or made[i].op_type != "DequantizeLinear" for i in gemm[0].input[1:])  # float weights
    assert (run_onnx(int8, x.numpy()).argmax(1) == out.numpy().argmax(1)).mean() >= 0.9


def test_an_adapter_starts_at_zero_and_leaves_faces_the_gate_keeps_to_the_base(tmp_path):
    """--adapter: a branch of the spoiled path's own beside the block after the split, weighted by
    the gate. A fresh one changes nothing; at a weight of 0 the network is the base's whatever the
    branch learnt; it exports to ONNX with the same answers; and a block it cannot go beside is refused."""
    torch.manual_seed(0)
    model = build_model("dual-stem", base=SMALL, split=3, adapter=8).eval()
    x = torch.from_numpy(normalize(np.concatenate(clean_and_spoiled(20, 4)), InputSpec()))
    with torch.no_grad():
        assert torch.allclose(model(x), model.net(x), atol=1e-5)
        for p in model.trainable().parameters():
            p.add_(torch.randn_like(p) * 0.1)
        h, t = model.stems(x)
        g = model.routed(x)[:, None, None, None]
        out = model(x)
        assert torch.allclose(model.rest(h, 0.0), model.net(x), atol=1e-5)
        assert not torch.allclose(model.rest(h, 1.0), model.net(x), atol=1e-3)  # the branch counts where the gate says so
        assert torch.allclose(out, model.rest(h + g * (t - h), g), atol=1e-5)
    torch_to_onnx(model, InputSpec(), tmp_path / "a.onnx", 17)
    assert np.allclose(run_onnx(tmp_path / "a.onnx", x.numpy()), out.numpy(), atol=1e-4)
    with pytest.raises(EmoError, match="conv-BatchNorm-ReLU"):
        build_model("dual-stem", base=SMALL, split=2, adapter=8)  # block 2 is a residual block


def test_faces_that_training_jitter_pushes_below_black_keep_the_gradients_finite():
    """Training's brightness and contrast jitter can push a dark face below 0 (fine-tuning from the
    hardened default on a dim room's faces). The quality gate reads the face clipped to [0, 1], so
    its measures stay finite, and so do the output and every gradient; real faces read as before."""
    torch.manual_seed(0)
    spec = InputSpec()
    model = build_model("dual-stem", base=SMALL, split=2, adapter=0)
    dark = np.stack([(synthetic_face(i % 7, np.random.default_rng(i)) // 12).astype(np.uint8) for i in range(8)])
    x = torch.from_numpy(normalize(dark, spec))
    below = x - 0.3 / spec.std  # brightness -0.3: most pixels of these faces fall below black
    assert (below * spec.std + spec.mean).mean() < 0
    model.train()
    out = model(below)
    torch.nn.functional.cross_entropy(out, torch.arange(8) % 7).backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():  # for faces in [0, 1] the clip changes nothing
        px = (x * spec.std + spec.mean)
        assert torch.allclose(model.gate.features(x, model.pooled(x)),
                              torch.cat([model.gate.measures(px), torch.nn.functional.avg_pool2d(px, model.gate.pool).flatten(1),
                                         model.pooled(x)], 1))


def test_harden_trains_measures_resumes_and_exports(tmp_path, monkeypatch, capfd, synthetic_fer):
    args = ["harden", "models/large/emonet-kd3-bn.pt", "--data", str(synthetic_fer), "--out", str(tmp_path), "--name", "hard",
            "--epochs", "1", "--batch-size", "64", "--threads", "1", "--no-progress"]
    code, out, err = emo_train_here(monkeypatch, capfd, *args)
    assert code == 0, err + out
    run = tmp_path / "hard"
    ck = load_checkpoint(run / "model.pt")
    assert ck["arch"] == "dual-stem" and ck["config"]["harden"]["epochs"] == 1
    figures = ck["metrics"]["robustness"]
    assert set(figures) == {"base", "twin", "hardened"}
    assert all(0 <= f["worst"] <= f["mean"] <= 1 and 0 <= f["clean"] <= 1 for f in figures.values())
    base = load_checkpoint("models/large/emonet-kd3-bn.pt")["state_dict"]
    twin = {k.split(".", 1)[1]: v for k, v in ck["state_dict"].items() if k.startswith("twin.")}
    assert any(not torch.equal(v, base[f"features.{k}"]) for k, v in twin.items() if v.is_floating_point())  # it learnt
    assert "hardened" in out and "mean of the ten" in out
    code, out, err = emo_train_here(monkeypatch, capfd, *args)  # a rerun finds its last.pt: nothing to train again
    assert code == 0 and "has trained its 1 epoch;" in out + err
    r = run_cli("emo-export", run / "model.pt", "--val-size", "140", "--calib-size", "140", "--calib-method", "minmax")
    assert r.returncode == 0, r.stderr + r.stdout
    assert "spoiled copy" in r.stdout + r.stderr
    report = json.loads((run / "export-report.json").read_text())
    assert report["passed"] and report["arch"] == "dual-stem"


def test_harden_refuses_what_it_cannot_harden(tmp_path, monkeypatch, capfd, synthetic_fer, seed_run):
    code, out, err = emo_train_here(monkeypatch, capfd, "harden", str(seed_run / "model.pt"), "--data", str(synthetic_fer),
                                    "--out", str(tmp_path), "--no-progress")
    assert code != 0 and "Traceback" not in err and "emonet" in err
    code, out, err = emo_train_here(monkeypatch, capfd, "fit", "--data", str(synthetic_fer), "--set", "arch=dual-stem",
                                    "--out", str(tmp_path), "--no-progress")
    assert code != 0 and "Traceback" not in err and "emo-train harden" in err
    code, out, err = emo_train_here(monkeypatch, capfd, "harden", "models/large/emonet-kd3-bn.pt", "--data", str(tmp_path / "nowhere"),
                                    "--out", str(tmp_path), "--no-progress")
    assert code != 0 and "Traceback" not in err


def test_harden_with_a_hint_and_other_teachers(tmp_path, monkeypatch, capfd, synthetic_fer):
    """--hint and --teacher are part of the recipe: recorded in the checkpoint, and a rerun with
    another recipe is refused rather than mixed; a teacher that names other emotions is refused."""
    teacher = "models/large/emonet-dkd-bn.pt"
    args = ["harden", "models/large/emonet-kd3-bn.pt", "--data", str(synthetic_fer), "--out", str(tmp_path), "--name", "hint",
            "--epochs", "1", "--batch-size", "64", "--threads", "1", "--no-progress", "--turn", "0.5", "--exposure", "0.3",
            "--adapter", "8", "--hint", "1.5", "--teacher", teacher]
    code, out, err = emo_train_here(monkeypatch, capfd, *args)
    assert code == 0, err + out
    ck = load_checkpoint(tmp_path / "hint" / "model.pt")
    recipe = ck["config"]["harden"]
    base = load_checkpoint("models/large/emonet-kd3-bn.pt")["state_dict"]
    assert all(torch.equal(v, ck["state_dict"][f"net.{k}"]) for k, v in base.items())  # the base, BatchNorm statistics too, untouched
    assert recipe["turn"] == 0.5 and recipe["exposure"] == 0.3 and recipe["adapter"] == ck["arch_args"]["adapter"] == 8
    assert any(k.startswith("adapter.") for k in ck["state_dict"]) and model_from_checkpoint(ck).adapter[0].out_channels == 8
    assert recipe["hint"] == 1.5 and [t["path"] for t in recipe["teachers"]] == [teacher] and len(recipe["teachers"][0]["sha256"]) == 64
    code, out, err = emo_train_here(monkeypatch, capfd, *args[:-4])  # same name, no hint, no teacher: another recipe
    assert code != 0 and "another recipe" in err and "Traceback" not in err
    ck = torch.load(teacher, map_location="cpu", weights_only=True)
    ck["labels"] = list(reversed(ck["labels"]))
    torch.save(ck, tmp_path / "odd.pt")
    code, out, err = emo_train_here(monkeypatch, capfd, *args[:-1], str(tmp_path / "odd.pt"))
    assert code != 0 and "other emotions" in err and "Traceback" not in err


def test_turned_and_relit_faces_are_taught_as_upright_and_well_lit_ones():
    """--turn and --exposure: the twin sees the face turned or relit while its teacher sees it
    upright and as lit; without them the batch is drawn exactly as before the options."""
    rng = np.random.default_rng(3)
    faces = np.stack([synthetic_face(i % 7, rng) for i in range(40)])
    mirrored = lambda taught: all(np.array_equal(t, f) or np.array_equal(t, f[:, ::-1]) for t, f in zip(taught, faces))
    taught, seen = _batch(faces, np.random.default_rng(0), spoil=0.0, turn=1.0)
    assert mirrored(taught)  # the teacher's faces are upright (only mirrored)
    assert sum(not np.array_equal(t, s) for t, s in zip(taught, seen)) >= 36  # the twin's are turned
    taught, seen = _batch(faces, np.random.default_rng(0), spoil=0.0, exposure=1.0)
    ratio = [s.astype(float).mean() / t.astype(float).mean() for t, s in zip(taught, seen)]
    assert min(ratio) > 0.45 and max(ratio) < 1.65 and np.ptp(ratio) > 0.4  # darker and brighter
    assert all(np.corrcoef(t.ravel(), s.ravel())[0, 1] > 0.9 for t, s in zip(taught, seen))  # the same face, relit
    taught, seen = _batch(faces, np.random.default_rng(0), spoil=0.0)
    assert np.array_equal(taught, seen) and not mirrored(taught)  # the old recipe turns both alike
