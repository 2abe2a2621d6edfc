"""`emo-train finetune --gated`: the base and a plainly fine-tuned copy in one graph, mixed per face
by a domain gate. The gate learns to tell the user's faces (here: the suite's cartoon faces drawn
darker, at 96 px) from FER2013's (the suite's stand-in); faces like FER2013's keep the base's answer,
so an emotion DATA lacks (neutral) keeps working there; the gate stays in float in the int8 model."""
from __future__ import annotations

import json

import numpy as np
import onnx
import torch

from emo.edge_runtime.classifier import Classifier
from emo.edge_runtime.labels import LABELS
from emo.edge_runtime.preprocess import InputSpec, normalize
from emo.export.convert import quantize, run_onnx, torch_to_onnx
from emo.train.checkpoint import load_checkpoint, model_from_checkpoint
from emo.train.gated import fit_gate
from emo.train.models import build_model

from conftest import emo_train_here, synthetic_face
from test_finetune import FAST, NEUTRAL, write_user_faces


def faces(n: int, seed: int, dark: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([(synthetic_face(i % 7, rng) * (0.6 if dark else 1.0)).astype(np.uint8) for i in range(n)])


def test_the_gate_tells_the_rooms_apart_and_stays_float_in_int8(tmp_path):
    torch.manual_seed(0)
    spec = InputSpec()
    small = {"arch": "emonet", "arch_args": {"widths": [8, 16, 32], "blocks": [1, 1]}}
    pair = build_model("gated", base=small, copy=small).eval()
    mine, other = normalize(faces(120, 1, dark=True), spec), normalize(faces(400, 2, dark=False), spec)
    stats = fit_gate(pair, mine, other)
    assert stats["mine_to_copy"] > 0.9 and stats["other_to_copy"] < 0.1
    with torch.no_grad():  # new faces of each room go where their room's faces went
        new_mine = pair.routed(torch.from_numpy(normalize(faces(50, 3, dark=True), spec))).numpy()
        new_other = pair.routed(torch.from_numpy(normalize(faces(50, 4, dark=False), spec))).numpy()
        x = torch.from_numpy(normalize(np.concatenate([faces(20, 5, True), faces(20, 6, False)]), spec))
        out = pair(x)
        pb, pc, g = pair.base(x).softmax(1), pair.copy(x).softmax(1), pair.routed(x)[:, None]
    assert (new_mine > 0.5).mean() > 0.9 and (new_other < 0.5).mean() > 0.9
    assert torch.allclose(out.exp(), g * pc + (1 - g) * pb, atol=1e-5)  # the mixed probabilities
    assert torch.allclose(out.exp().sum(1), torch.ones(len(x)), atol=1e-5)
    fp32, int8 = tmp_path / "pair.onnx", tmp_path / "pair.int8.onnx"
    torch_to_onnx(pair, spec, fp32, 17)
    assert np.allclose(run_onnx(fp32, x.numpy()), out.numpy(), atol=1e-4)
    quantize(fp32, int8, np.concatenate([mine, other])[::4], "minmax", per_channel=True)
    graph = onnx.load(str(int8)).graph
    made = {o: n for n in graph.node for o in n.output}
    gate_nodes = [n for n in graph.node if n.name.startswith("/gate/")]
    assert gate_nodes and any(n.op_type == "Gemm" for n in gate_nodes)
    for n in gate_nodes:  # nothing of the gate reads a dequantised tensor, but for what the networks give it
        assert n.op_type not in ("QuantizeLinear", "DequantizeLinear")
        assert all(made[i].op_type != "DequantizeLinear" or not made[i].name.startswith("/gate/") for i in n.input if i in made)
    gemm = next(n for n in gate_nodes if n.op_type == "Gemm")
    assert all(i not in made or made[i].op_type != "DequantizeLinear" for i in gemm.input[1:])  # float weights
    assert (run_onnx(int8, x.numpy()).argmax(1) == out.numpy().argmax(1)).mean() >= 0.9


def test_gated_finetune_keeps_the_base_for_fer_faces_and_exports(seed_run, tmp_path, monkeypatch, capfd):
    data = write_user_faces(tmp_path / "user", people=6, per_class=4)
    args = ["finetune", data, "--from", seed_run / "model.pt", "--out", tmp_path, "--name", "pair", "--gated", *FAST, "--set", "max_steps=40"]
    code, out, err = emo_train_here(monkeypatch, capfd, *args, "--export")
    assert code == 0, out + err
    assert "gated: a copy of the base learns your faces' labels" in out and "fitting the gate" in out
    run = tmp_path / "pair"
    ck, copy = load_checkpoint(run / "model.pt"), load_checkpoint(run / "copy.pt")
    assert ck["arch"] == "gated" and copy["arch"] == "seed" and ck["finetune"]["gate"] == ck["gate"]
    assert ck["gate"]["mine_to_copy"] > 0.8 and ck["gate"]["other_to_copy"] < 0.2
    res = json.loads((run / "finetune.json").read_text())
    fer = res["figures"]["fer2013_publictest"]
    assert fer["after"]["accuracy"] >= fer["before"]["accuracy"] - 0.02  # FER2013-like faces: the base's answers
    assert fer["after"]["missing_classes_recall"] >= fer["before"]["missing_classes_recall"] - 0.05
    assert res["figures"]["user_val"]["after"]["accuracy"] >= res["figures"]["user_val"]["before"]["accuracy"]
    base = model_from_checkpoint(load_checkpoint(seed_run / "model.pt"))
    pair = model_from_checkpoint(ck)
    assert all(torch.equal(a, b) for a, b in zip(base.state_dict().values(), pair.base.state_dict().values()))
    clf = Classifier(run / "model.int8.onnx")  # as emo-edge loads it
    neutral = np.stack([synthetic_face(NEUTRAL, np.random.default_rng(i)) for i in range(20)])
    assert (clf.predict_crops(neutral).argmax(1) == NEUTRAL).mean() >= 0.8  # DATA has no neutral; FER2013-like ones still read
    assert json.loads(clf.meta.extra["finetune"])["classes_seen"] == list(LABELS[:6])
    assert json.loads((run / "export-report.json").read_text())["passed"]
    code, out, err = emo_train_here(monkeypatch, capfd, *args)  # a rerun finds the copy done and pairs it again
    assert code == 0 and "already finished" in out + err
    again = load_checkpoint(run / "model.pt")
    assert all(torch.equal(ck["state_dict"][k], again["state_dict"][k]) for k in ck["state_dict"])


def test_gated_needs_fer2013_and_refuses_a_pair_as_base(seed_run, tmp_path, monkeypatch, capfd):
    data = write_user_faces(tmp_path / "user", people=4, per_class=2)
    code, out, err = emo_train_here(monkeypatch, capfd, "finetune", data, "--from", seed_run / "model.pt", "--out", tmp_path,
                                    "--gated", "--replay", "none", *FAST)
    assert code == 2 and err.count("\n") == 1 and "--gated tells your faces from FER2013's" in err, (out, err)
    fake = tmp_path / "pair.pt"
    ck = load_checkpoint(seed_run / "model.pt")
    ck["arch"] = "gated"
    torch.save(ck, fake)
    code, out, err = emo_train_here(monkeypatch, capfd, "finetune", data, "--from", fake, "--out", tmp_path, *FAST)
    assert code == 2 and "already a gated pair" in err, (out, err)


def test_a_pair_is_not_a_family_fit_trains(synthetic_fer, tmp_path, monkeypatch, capfd):
    code, out, err = emo_train_here(monkeypatch, capfd, "fit", "--data", synthetic_fer, "--set", "arch=gated", "--set", "max_steps=2",
                                    "--out", tmp_path, "--no-progress")
    assert code == 2 and "emo-train finetune DATA --gated" in err and "Traceback" not in err, (out, err)
