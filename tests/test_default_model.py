"""The bundled default model: accuracy on FER2013 PublicTest (int8, single crop) and real photos."""
import hashlib
import json

import pytest

from emo.edge_runtime.classifier import DEFAULT_MODEL, Classifier

from conftest import REPO, run_cli

# The target; the measured figure is in MODEL_CARD.md.
MIN_ACCURACY = 0.70


def test_bundled_model_accuracy_on_publictest(fer_root, tmp_path):
    r = run_cli("emo-edge", "evaluate", DEFAULT_MODEL, fer_root, "--split", "val", "--json", tmp_path / "r.json")
    assert r.returncode == 0, r.stderr
    rep = json.loads((tmp_path / "r.json").read_text())["report"]
    assert rep["n"] == 3589
    assert rep["accuracy"] >= MIN_ACCURACY
    meta = Classifier().meta
    assert abs(rep["accuracy"] - meta.metrics["val_accuracy_int8"]) < 0.002  # the metadata tells the truth
    assert meta.metrics["val_accuracy_fp32"] - rep["accuracy"] <= 0.005  # int8 within 0.5 points of fp32


def test_bundled_model_is_small():
    assert DEFAULT_MODEL.stat().st_size <= 1_000_000
    assert Classifier().meta.arch == "emonet"


@pytest.mark.parametrize("photo", ["astronaut.png", "obama.jpg", "biden2.jpg", "alex-lacamoire.png"])
def test_smiling_faces_are_happy(photos, photo):
    r = run_cli("emo-edge", "infer", photos / photo, "--format", "json")
    faces = json.loads(r.stdout)["faces"]
    assert len(faces) == 1 and faces[0]["emotion"] == "happy"


def test_bundled_example_is_happy():
    r = run_cli("emo-edge", "infer", REPO / "examples" / "astronaut.png", "--format", "json")
    assert json.loads(r.stdout)["faces"][0]["emotion"] == "happy"


def test_checkpoint_is_kept_for_re_export():
    ckpt = REPO / "models" / "emo_default.pt"
    assert Classifier().meta.checkpoint_sha256 == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    torch = pytest.importorskip("torch", reason="reading the checkpoint needs the training install (.[train])")
    ck = torch.load(ckpt, weights_only=True)
    assert ck["arch"] == "emonet" and ck["format"] == "emo-checkpoint"
