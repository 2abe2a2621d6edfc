"""`emo-train recalibrate`: BatchNorm statistics re-estimated on clean faces, weights untouched."""
import json

import pytest
import torch

from emo.edge_runtime.errors import EmoError
from emo.train.checkpoint import load_checkpoint, model_from_checkpoint
from emo.train.models import build_model
from emo.train.recalibrate import batchnorm_layers, recalibrate_bn

from conftest import emo_train_here, run_cli


def test_statistics_become_those_of_the_data():
    torch.manual_seed(0)
    model = build_model("emonet-s").eval()
    bn = batchnorm_layers(model)[0]
    bn.running_mean.fill_(5.0)  # stale statistics, as if from other data
    bn.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    seen = []
    hook = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    x = torch.randn(300, 1, 48, 48) * 0.7 + 0.2
    n = recalibrate_bn(model, x, flip=False, batch=64)
    hook.remove()
    assert n == 300 and not model.training and bn.momentum == 0.1  # mode and momentum restored
    feats = torch.cat(seen)  # the first BN layer's inputs over all 300 faces
    assert torch.allclose(bn.running_mean, feats.mean((0, 2, 3)), atol=1e-4)
    assert torch.allclose(bn.running_var, feats.var((0, 2, 3)), rtol=0.05)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert recalibrate_bn(model, x, flip=True, batch=64) == 600


def test_model_without_batchnorm_is_refused():
    with pytest.raises(EmoError, match="no BatchNorm"):
        recalibrate_bn(build_model("seed"), torch.zeros(4, 1, 48, 48))


def test_recalibrate_cli_writes_a_new_checkpoint(synthetic_fer, seed_run, tmp_path, monkeypatch, capfd):
    r = run_cli("emo-train", "fit", "--data", synthetic_fer, "--set", "arch=emonet-s", "--set", "max_steps=6", "--set", "batch_size=32",
                "--out", tmp_path, "--name", "s", "--no-progress")
    assert r.returncode == 0, r.stderr
    r = run_cli("emo-train", "recalibrate", tmp_path / "s" / "model.pt", "--data", synthetic_fer, "--out", tmp_path, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "val accuracy with the trained statistics" in r.stdout and "with recalibrated statistics" in r.stdout
    src, new = load_checkpoint(tmp_path / "s" / "model.pt"), load_checkpoint(tmp_path / "s-bn" / "model.pt")
    rec = new["bn_recalibration"]
    assert rec["faces"] == 2 * src["data"]["train_report"]["count"] and rec["flip"] and rec["source_sha256"]
    assert new["metrics"]["best"]["val_accuracy"] == rec["val_accuracy_after"]
    moved = [k for k in src["state_dict"] if not torch.equal(src["state_dict"][k], new["state_dict"][k])]
    assert moved and all("running_" in k or "num_batches" in k for k in moved)  # only statistics change
    m = json.loads((tmp_path / "s-bn" / "metrics.json").read_text())
    assert m["val_report"]["n"] == src["data"]["val_report"]["count"] and (tmp_path / "s-bn" / "confusion.png").is_file()
    # user errors: one line, no traceback (refused before any work: emo-train in this process)
    for args, why in (([tmp_path / "s" / "model.pt", "--out", tmp_path, "--name", "s"], "input checkpoint"),
                      ([seed_run / "model.pt", "--out", tmp_path], "no BatchNorm"), ([tmp_path / "nope.pt"], "does not exist")):
        code, _, err = emo_train_here(monkeypatch, capfd, "recalibrate", *args, "--data", synthetic_fer)
        assert code == 2 and why in err and "Traceback" not in err and err.count("\n") == 1, err
    # --half: float16 storage, about half the file, loads as float32, the accuracy printed is that of the float16 weights
    r = run_cli("emo-train", "recalibrate", tmp_path / "s" / "model.pt", "--data", synthetic_fer, "--out", tmp_path, "--name", "h",
                "--half", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "rounded to float16" in r.stdout
    half = load_checkpoint(tmp_path / "h" / "model.pt")
    assert half["storage"] == "float16" and all(v.dtype == torch.float16 for v in half["state_dict"].values() if v.is_floating_point())
    assert (tmp_path / "h" / "model.pt").stat().st_size < 0.7 * (tmp_path / "s-bn" / "model.pt").stat().st_size
    full = model_from_checkpoint(new)
    model = model_from_checkpoint(half)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    x = torch.randn(8, 1, 48, 48)
    with torch.no_grad():
        assert torch.allclose(model(x), full(x), atol=0.05)
    assert half["metrics"]["best"]["val_accuracy"] == half["bn_recalibration"]["val_accuracy_after"]


def test_fit_can_validate_and_save_recalibrated_statistics(synthetic_fer, tmp_path):
    from emo.edge_runtime.preprocess import InputSpec, normalize
    from emo.train.checkpoint import model_from_checkpoint
    from emo.edge_runtime.dataset import load_split

    r = run_cli("emo-train", "fit", "--data", synthetic_fer, "--set", "arch=emonet-s", "--set", "max_steps=8", "--set", "batch_size=32",
                "--set", "bn_recalibrate=true", "--out", tmp_path, "--name", "r", "--no-progress")
    assert r.returncode == 0, r.stderr
    best, last = load_checkpoint(tmp_path / "r" / "model.pt"), load_checkpoint(tmp_path / "r" / "last.pt")
    assert best["metrics"]["best"]["epoch"] == 1 and last["trainer_state"]["epoch"] == 1  # one epoch: the same weights
    # model.pt = the trained weights with statistics recalibrated on the plain training faces
    want = model_from_checkpoint(last)
    spec = InputSpec.from_dict(last["input"])
    recalibrate_bn(want, torch.from_numpy(normalize(load_split(synthetic_fer, "train", 48).images, spec)), seed=0)
    for k, v in want.state_dict().items():
        assert torch.allclose(v.float(), best["state_dict"][k].float(), rtol=1e-4, atol=1e-5), k
    assert not torch.equal(last["state_dict"]["features.0.1.running_mean"], best["state_dict"]["features.0.1.running_mean"])
    r = run_cli("emo-train", "fit", "--data", synthetic_fer, "--set", "arch=seed", "--set", "max_steps=1", "--set", "bn_recalibrate=true",
                "--out", tmp_path, "--name", "s", "--no-progress")
    assert r.returncode == 2 and "no BatchNorm" in r.stderr and "Traceback" not in r.stderr
