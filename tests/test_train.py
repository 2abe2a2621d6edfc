import json
import math
import os
import signal
import subprocess
import time

import pytest
import torch

from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.classifier import Classifier
from emo.edge_runtime.dataset import load_split
from emo.edge_runtime.preprocess import InputSpec, normalize
from emo.train.checkpoint import file_sha256, load_checkpoint, model_from_checkpoint
from emo.train.models import REGISTRY, build_model, count_macs, count_params, grow_state_dict
from emo.train.augment import augment, mixup, step_generator
from emo.train.config import TrainConfig
from emo.train.distill import ema_decay, ema_update, make_ema, teacher_probs
from emo.train.optim import lr_factor
from emo.train.trainer import RunState

from conftest import bin_path, emo_train_here, run_cli, write_synthetic_fer


def test_seed_is_the_original_design():
    m = build_model("seed")
    convs = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d)]
    fcs = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.padding) for c in convs] == [(1, 32, (5, 5), (2, 2)), (32, 64, (3, 3), (1, 1))]
    assert [(f.in_features, f.out_features) for f in fcs] == [(9216, 256), (256, 7)]
    assert count_params(m) == 2_380_679
    m.eval()  # dropout only in training: eval output is deterministic
    x = torch.randn(4, 1, 48, 48)
    assert torch.equal(m(x), m(x))


@pytest.mark.parametrize("arch", sorted(REGISTRY))
def test_registered_archs_are_small_and_run(arch):
    m = build_model(arch).eval()
    assert m(torch.zeros(3, 1, 48, 48)).shape == (3, 7)
    if arch == "vgg":  # a member for the large rung (<= 8 MB int8), not an edge model by itself
        assert count_params(m) <= 2_000_000 and count_macs(m) < 150e6
    elif arch != "seed":
        assert count_params(m) <= 1_000_000 and count_macs(m) < 70e6


def test_vgg_keeps_the_spatial_map_and_checks_its_input_size():
    m = build_model("vgg", widths=[8, 16], convs=1, fc=32).eval()
    assert m.head[2].in_features == 16 * 12 * 12  # 48 px after two pools, flattened: no global average
    assert m(torch.zeros(2, 1, 48, 48)).shape == (2, 7)
    with pytest.raises(EmoError, match="divisible"):
        build_model("vgg", widths=[8, 16, 32, 64, 128])  # 48 is not divisible by 2^5


def test_emonet_layout_options():
    base = build_model("emonet", widths=[16, 32, 64], blocks=[1, 1])
    strided = build_model("emonet", widths=[16, 32, 64], blocks=[1, 1], stem_stride=2)
    assert count_params(strided) == count_params(base) and count_macs(strided) < count_macs(base) / 3
    mixed = build_model("emonet", widths=[16, 32, 64], blocks=[1, 2], sep=[False, True], stem_blocks=1)
    kinds = [len(b.body) for b in mixed.features if hasattr(b, "body")]
    assert kinds == [2, 2, 4, 4]  # the stem block follows the first stage (plain), the second stage is separable
    assert mixed(torch.zeros(2, 1, 48, 48)).shape == (2, 7)
    with pytest.raises(EmoError, match="one per stage"):
        build_model("emonet", widths=[16, 32, 64], blocks=[1, 1], sep=[True])


def test_grown_emonet_starts_as_the_small_one():
    torch.manual_seed(0)
    small = build_model("emonet", widths=[8, 16, 32], blocks=[1, 1])
    for m in small.modules():  # trained-looking weights: non-zero residual branches and BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5), m.running_mean.data.normal_(0, 0.1), m.running_var.data.uniform_(0.5, 2)
    big = build_model("emonet", widths=[8, 16, 32], blocks=[2, 3], stem_blocks=1)
    big.load_state_dict(grow_state_dict(small, big))
    x = torch.randn(4, 1, 48, 48)
    with torch.no_grad():
        assert torch.allclose(small.eval()(x), big.eval()(x), atol=1e-6)
    for other in (build_model("emonet", widths=[8, 16, 48], blocks=[2, 2]), build_model("emonet", widths=[8, 16, 32], blocks=[2, 2], sep=True),
                  build_model("emonet", widths=[8, 16, 32], blocks=[0, 2]), build_model("emonet-s")):
        assert grow_state_dict(small, other) is None


def test_fit_grows_a_smaller_emonet(synthetic_fer, tmp_path):
    args = ["--set", "arch=emonet", "--set", "max_steps=1", "--set", "batch_size=16"]
    r = _fit(synthetic_fer, tmp_path, "small", *args, "--set", 'arch_args={"widths": [8, 16, 32], "blocks": [1, 1]}')
    assert r.returncode == 0, r.stderr
    init = json.dumps(str(tmp_path / "small" / "model.pt"))
    r = _fit(synthetic_fer, tmp_path, "big", *args, "--set", 'arch_args={"widths": [8, 16, 32], "blocks": [2, 2]}', "--set", f"init_from={init}")
    assert r.returncode == 0, r.stderr
    assert "grown to" in r.stdout


def test_ensemble_averages_its_members_and_exports(synthetic_fer, tmp_path, monkeypatch, capfd):
    args = ["--set", "max_steps=2", "--set", "batch_size=16"]
    for name, arch in (("a", "emonet-s"), ("b", "mini-xception")):
        r = _fit(synthetic_fer, tmp_path, name, "--set", f"arch={arch}", *args)
        assert r.returncode == 0, r.stderr
    a, b = tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt"
    code, out, err = emo_train_here(monkeypatch, capfd, "ensemble", a, b, "--data", synthetic_fer, "--out", tmp_path, "--name", "e")
    assert code == 0, err
    assert "ensemble of 2: val accuracy" in out and out.count("member ") == 2
    code, out, err = emo_train_here(monkeypatch, capfd, "ensemble", a, b, "--flip", "--data", synthetic_fer, "--out", tmp_path, "--name", "ef")
    assert code == 0, err
    assert "ensemble of 2 with mirrored faces: val accuracy" in out
    ens, ensf = (model_from_checkpoint(load_checkpoint(tmp_path / n / "model.pt")) for n in ("e", "ef"))
    ma, mb = (model_from_checkpoint(load_checkpoint(p)).eval() for p in (a, b))
    x = torch.randn(3, 1, 48, 48)
    xm = torch.flip(x, dims=[3])
    with torch.no_grad():
        assert torch.allclose(ens(x), (ma(x) + mb(x)) / 2, atol=1e-5)
        assert torch.allclose(ensf(x), (ma(x) + mb(x) + ma(xm) + mb(xm)) / 4, atol=1e-5)
        assert torch.allclose(ensf(x), ensf(xm), atol=1e-5)  # mirroring the face changes nothing
    # the mirrored ensemble is the harder graph (a reversed slice, a concat): its export must pass the gates
    r = run_cli("emo-export", tmp_path / "ef" / "model.pt", "--min-agreement", 0.5, "--max-acc-drop", 0.5)
    assert r.returncode == 0, r.stderr + r.stdout
    # the metadata names the members by hash: the ensemble's own checkpoint is rebuilt from them
    members = json.loads(Classifier(tmp_path / "ef" / "model.int8.onnx").meta.extra["members"])
    assert [(m["checkpoint"], m["sha256"]) for m in members] == [(str(p), file_sha256(p)) for p in (a, b)]
    # user errors: one line each
    for members, name, why in (([a], "one", "at least two"), ([a, tmp_path / "e" / "model.pt"], "nested", "already an ensemble"),
                               ([a, b], "a", "folder of a member")):
        code, out, err = emo_train_here(monkeypatch, capfd, "ensemble", *members, "--data", synthetic_fer, "--out", tmp_path, "--name", name)
        assert code == 2 and why in err and "Traceback" not in err and err.count("\n") == 1, err


def test_weight_average_forgets_the_random_start_within_a_hundred_steps():
    """A run from scratch: the average must follow the trained weights, not keep the initial ones
    for thousands of steps (with a fixed 0.999, 90% of them would remain after 100 steps)."""
    torch.manual_seed(0)
    start, trained = build_model("emonet-s"), build_model("emonet-s")
    avg = make_ema(start)
    for step in range(100):
        ema_update(avg, trained, ema_decay(0.999, step))
    a, s0, t = (torch.cat([p.flatten() for p in m.parameters()]) for m in (avg, start, trained))
    assert (a - t).norm() < 1e-6 * (s0 - t).norm()
    assert ema_decay(0.999, 0) == 0.1 and ema_decay(0.999, 10**5) == 0.999 and ema_decay(0.5, 100) == 0.5
    assert all(ema_decay(0.999, n) <= ema_decay(0.999, n + 1) for n in range(0, 20000, 7))


def test_unknown_arch():
    with pytest.raises(EmoError, match="unknown architecture"):
        build_model("resnet152")


def _fit(data, out, name, *extra):
    return run_cli("emo-train", "fit", "--data", data, "--out", out, "--name", name, "--no-progress", *extra)


def _same_weights(a, b, atol=0.0):
    sa, sb = load_checkpoint(a)["state_dict"], load_checkpoint(b)["state_dict"]
    return all(torch.allclose(sa[k].float(), sb[k].float(), atol=atol, rtol=0) for k in sa)


def test_fit_writes_a_complete_run(synthetic_fer, tmp_path):
    r = _fit(synthetic_fer, tmp_path, "r", "--set", "arch=emonet-s", "--set", "epochs=2", "--set", "batch_size=32", "--set", "tta=true")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "r"
    for f in ("model.pt", "last.pt", "metrics.json", "log.csv", "curves.png", "confusion.png", "config.json"):
        assert (run / f).is_file(), f
    ck = torch.load(run / "model.pt", weights_only=True)
    assert ck["format"] == "emo-checkpoint" and ck["arch"] == "emonet-s" and len(ck["metrics"]["history"]) >= 1
    assert "train_fingerprint" in ck["data"] and ck["labels"][3] == "happy"
    m = json.loads((run / "metrics.json").read_text())
    assert "val_accuracy_tta" in m["history"][0]
    assert (run / "log.csv").read_text().count("\n") == 3
    model_from_checkpoint(ck)


def test_sigint_saves_and_resume_matches_uninterrupted_run(synthetic_fer, tmp_path):
    # ema on: the weight average is part of the state that must survive the interruption
    args = ["--set", "arch=seed", "--set", "epochs=4", "--set", "batch_size=16", "--set", "seed=3", "--set", "optimizer=adam",
            "--set", "lr=0.0005", "--set", "ema=0.9"]
    full = _fit(synthetic_fer, tmp_path, "full", *args)
    assert full.returncode == 0, full.stderr
    p = subprocess.Popen([bin_path("emo-train"), "fit", "--data", str(synthetic_fer), "--out", str(tmp_path), "--name", "cut",
                          "--no-progress", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in p.stdout:
        if line.startswith("epoch 1/"):
            break
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, (out, err)
    assert "Traceback" not in err and "--resume" in out
    last = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert last["trainer_state"]["step"] < 4 * (280 // 16)
    r = run_cli("emo-train", "fit", "--resume", tmp_path / "cut", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert _same_weights(tmp_path / "full" / "model.pt", tmp_path / "cut" / "model.pt")
    h1 = json.loads((tmp_path / "full" / "metrics.json").read_text())["history"]
    h2 = json.loads((tmp_path / "cut" / "metrics.json").read_text())["history"]
    assert [h["val_accuracy"] for h in h1] == [h["val_accuracy"] for h in h2]
    again = run_cli("emo-train", "fit", "--resume", tmp_path / "cut", "--no-progress")
    assert again.returncode == 0 and "already finished" in again.stdout, again.stderr
    assert _same_weights(tmp_path / "full" / "model.pt", tmp_path / "cut" / "model.pt")


def test_finetune_with_distillation_ema_and_cpu_bf16(seed_run, synthetic_fer, tmp_path):
    teacher = str(seed_run / "model.pt")
    base = ["--set", "arch=seed", "--set", "max_steps=4", "--set", "batch_size=32", "--set", f"init_from={json.dumps(teacher)}",
            "--set", f"teachers=[{json.dumps(teacher)}]", "--set", "kd_alpha=0.7", "--set", "kd_flip=true", "--set", "ema=0.5", "--set", "cpu_amp=true"]
    r = _fit(synthetic_fer, tmp_path, "frozen", *base, "--set", "lr=0")
    assert r.returncode == 0, r.stderr
    assert "distilling from 1 teacher(s)" in r.stdout and "starting from the weights of" in r.stdout
    assert _same_weights(teacher, tmp_path / "frozen" / "model.pt")  # lr 0: the start point, exactly
    r = _fit(synthetic_fer, tmp_path, "moved", *base, "--set", "lr=0.001")
    assert r.returncode == 0, r.stderr
    assert not _same_weights(teacher, tmp_path / "moved" / "model.pt")
    # model.pt holds the weight average, last.pt the raw weights it resumes from
    assert not _same_weights(tmp_path / "moved" / "model.pt", tmp_path / "moved" / "last.pt")
    m = build_model("seed")
    x = torch.randn(5, 1, 48, 48)
    with torch.no_grad():
        want = (m.eval()(x) / 3.0).softmax(1)
    assert torch.allclose(teacher_probs([m, m], x, 3.0, False), want, atol=1e-6)
    with torch.no_grad():
        mirrored = (m(torch.flip(x, dims=[3])) / 3.0).softmax(1)
    assert torch.allclose(teacher_probs([m], x, 3.0, False, flip=True), (want + mirrored) / 2, atol=1e-6)


def test_finetune_and_distillation_errors(seed_run, synthetic_fer, tmp_path):
    r = _fit(synthetic_fer, tmp_path, "a", "--set", "arch=seed", "--set", "max_steps=1", "--set", "kd_alpha=0.5")
    assert r.returncode == 2 and "no teachers" in r.stderr and "Traceback" not in r.stderr
    init = json.dumps(str(seed_run / "model.pt"))
    r = _fit(synthetic_fer, tmp_path, "b", "--set", "arch=emonet-s", "--set", "max_steps=1", "--set", f"init_from={init}")
    assert r.returncode == 2 and "same architecture" in r.stderr and "Traceback" not in r.stderr
    r = _fit(synthetic_fer, tmp_path, "c", "--set", "arch=seed", "--set", "max_steps=1", "--set", f"teachers=[{init}]",
             "--set", "kd_alpha=0.5", "--set", "mean=0.4")
    assert r.returncode == 2 and "reads input" in r.stderr and "Traceback" not in r.stderr


def test_resume_refuses_recipe_changes(synthetic_fer, tmp_path):
    r = _fit(synthetic_fer, tmp_path, "a", "--set", "arch=seed", "--set", "max_steps=3")
    assert r.returncode == 0
    r = run_cli("emo-train", "fit", "--resume", tmp_path / "a", "--set", "lr=0.1")
    assert r.returncode == 2 and "cannot change: lr" in r.stderr and "Traceback" not in r.stderr


def test_ddp_two_processes_match_single_process(synthetic_fer, tmp_path):
    args = ["--set", "arch=seed", "--set", "max_steps=6", "--set", "batch_size=32", "--set", "augment=false",
            "--set", "arch_args={\"dropout\": 0.0}", "--set", "optimizer=adam", "--set", "lr=0.001", "--threads", "1"]
    single = _fit(synthetic_fer, tmp_path, "single", *args)
    assert single.returncode == 0, single.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([bin_path("torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "emo.train.cli", "fit",
                        "--data", str(synthetic_fer), "--out", str(tmp_path), "--name", "ddp", "--no-progress", *args],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _same_weights(tmp_path / "single" / "model.pt", tmp_path / "ddp" / "model.pt", atol=1e-5)


def test_evaluate_outputs_table_and_json(seed_run, synthetic_fer, tmp_path):
    r = run_cli("emo-train", "evaluate", seed_run / "model.pt", synthetic_fer, "--json", tmp_path / "e.json", "--tta")
    assert r.returncode == 0, r.stderr
    assert "confusion matrix" in r.stdout and "precision" in r.stdout and "flip TTA" in r.stdout
    rep = json.loads((tmp_path / "e.json").read_text())["report"]
    assert rep["n"] == 7 * 20 and len(rep["confusion_matrix"]) == 7
    assert sum(map(sum, rep["confusion_matrix"])) == 7 * 20
    assert 0 <= rep["accuracy"] <= 1 and set(rep["per_class"]) >= {"happy", "disgust"}


def test_half_keeps_a_checkpoint_in_float16_only_when_it_predicts_the_same(seed_run, synthetic_fer, tmp_path):
    src = seed_run / "model.pt"
    out = tmp_path / "teachers" / "seed.pt"
    r = run_cli("emo-train", "half", src, out, "--data", synthetic_fer)
    assert r.returncode == 0, r.stderr
    assert "same top-1 on" in r.stdout and f"wrote {out}" in r.stdout
    ck, orig = load_checkpoint(out), load_checkpoint(src)
    assert ck["storage"] == "float16" and ck["half"]["faces"] == 7 * 20 and ck["half"]["top1_agreement"] >= 0.995
    assert all(v.dtype == torch.float16 for v in ck["state_dict"].values() if v.is_floating_point())
    assert ck["data"] == orig["data"] and ck["config"] == orig["config"]  # a fold teacher keeps its fold record
    assert out.stat().st_size < 0.6 * src.stat().st_size
    x = torch.randn(16, 1, 48, 48)
    a, b = model_from_checkpoint(orig)(x), model_from_checkpoint(ck)(x)
    assert a.dtype == b.dtype == torch.float32 and torch.allclose(a, b, atol=0.05)
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.9
    # refusals: one line, exit 2, and the file already there is left as it was
    before = out.read_bytes()
    r = run_cli("emo-train", "half", src, out, "--data", synthetic_fer, "--min-agreement", "1.01")
    assert r.returncode == 2 and "does not keep its predictions" in r.stderr and "Traceback" not in r.stderr
    assert out.read_bytes() == before
    r = run_cli("emo-train", "half", out, tmp_path / "again.pt", "--data", synthetic_fer)
    assert r.returncode == 2 and "already stored in float16" in r.stderr and not (tmp_path / "again.pt").exists()
    r = run_cli("emo-train", "half", src, src, "--data", synthetic_fer)
    assert r.returncode == 2 and "is the checkpoint itself" in r.stderr


def test_bad_checkpoint_files(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(EmoError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    torch.save({"a": 1}, tmp_path / "y.pt")
    with pytest.raises(EmoError, match="not an emo checkpoint"):
        load_checkpoint(tmp_path / "y.pt")


# ---------------------------------------------------------------- pure functions, tested directly
def test_lr_schedule():
    cfg = TrainConfig(schedule="cosine", warmup_epochs=1)
    f = [lr_factor(cfg, s, total=100, steps_per_epoch=10) for s in range(100)]
    assert f[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warm-up over one epoch
    assert f[10] == pytest.approx(1.0) and f[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90)))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # then only down
    assert lr_factor(TrainConfig(schedule="constant", warmup_epochs=3), 0, 100, 10) == 1.0  # constant: no warm-up
    one = TrainConfig(schedule="onecycle", warmup_epochs=0)
    assert lr_factor(one, 0, 100, 10) == 1.0 and lr_factor(one, 100, 100, 10) == 0.01  # linear to 1%
    with pytest.raises(EmoError, match="unknown schedule"):
        lr_factor(TrainConfig(schedule="step", warmup_epochs=0), 5, 100, 10)


def test_augment_is_seeded_and_each_part_can_be_switched_off():
    x = torch.randn(8, 1, 48, 48)
    cfg = TrainConfig()
    a, b = augment(x.clone(), cfg, step_generator(0, 1, 2)), augment(x.clone(), cfg, step_generator(0, 1, 2))
    assert torch.equal(a, b) and a.shape == x.shape and not torch.equal(a, x)
    assert not torch.equal(a, augment(x.clone(), cfg, step_generator(0, 1, 3)))  # another step, other draws
    off = TrainConfig(rotate=0, scale=0, shift=0, flip=False, brightness=0, contrast=0, random_erasing=0)
    assert torch.allclose(augment(x.clone(), off, torch.Generator().manual_seed(0)), x, atol=1e-5)  # identity
    flip_only = TrainConfig(rotate=0, scale=0, shift=0, flip=True, brightness=0, contrast=0, random_erasing=0)
    y = augment(x.clone(), flip_only, torch.Generator().manual_seed(0))
    for i in range(len(x)):  # each face is itself or its mirror image
        assert torch.allclose(y[i], x[i], atol=1e-5) or torch.allclose(y[i], torch.flip(x[i], dims=[2]), atol=1e-5)
    erase = TrainConfig(rotate=0, scale=0, shift=0, flip=False, brightness=0, contrast=0, random_erasing=1.0)
    z = augment(torch.ones(4, 1, 48, 48), erase, torch.Generator().manual_seed(0))
    assert all(((z[i] == 0).sum() > 0) and ((z[i] == 1).sum() > 0) for i in range(4))  # a patch of each face erased


def test_mixup_blends_with_partners():
    x = torch.arange(6.0).view(6, 1, 1, 1)
    mixed, lam, partner = mixup(x, 0.3, torch.Generator().manual_seed(0))
    assert 0 <= lam <= 1 and sorted(partner.tolist()) == list(range(6))
    assert torch.allclose(mixed, lam * x + (1 - lam) * x[partner])


def test_run_state_records_the_best_epoch():
    s = RunState()
    row = lambda e, acc: {"epoch": e, "step": e * 10, "val_accuracy": acc, "val_macro_f1": acc / 2}  # noqa: E731
    assert s.record(row(1, 0.5), {"r": 1}) and s.epoch == 1 and s.best["epoch"] == 1
    assert not s.record(row(2, 0.4), {"r": 2}) and s.bad_epochs == 1 and s.best_report == {"r": 1}
    assert RunState.from_dict(s.to_dict()) == s


def test_fold_assignment_is_stratified_keeps_copies_together_and_is_fixed_by_its_seed():
    from emo.train.data import fold_assignment, fold_record

    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 7, (1000,), generator=g).numpy()
    images = torch.randint(0, 256, (1000, 8, 8), generator=g).to(torch.uint8).numpy()
    f = fold_assignment(images, labels, 5, seed=0)
    assert set(f.tolist()) == {0, 1, 2, 3, 4}
    sizes = [int((f == k).sum()) for k in range(5)]
    assert max(sizes) - min(sizes) <= 1
    for c in range(7):  # each class spread evenly over the folds
        per = [int(((f == k) & (labels == c)).sum()) for k in range(5)]
        assert max(per) - min(per) <= 1
    assert (fold_assignment(images, labels, 5, seed=0) == f).all() and not (fold_assignment(images, labels, 5, seed=1) == f).all()
    copies = images.copy()
    copies[500:600] = copies[:100]  # exact copies, some with another label (as in FER2013)
    fc = fold_assignment(copies, labels, 5, seed=0)
    assert (fc[500:600] == fc[:100]).all()
    rec = fold_record(fold_assignment(images, labels, 5, seed=0), 5, 2, 0)
    assert rec["held_out"] == sizes[2] and rec["folds"] == 5 and len(rec["assignment_sha256"]) == 64
    with pytest.raises(EmoError, match="at least 2"):
        fold_assignment(images, labels, 1, seed=0)


class _Const(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def _evaluate_folds(teacher, not_a_fold_run, data, tmp):
    """`emo-train evaluate --fold` on a 2-fold teacher: the held-out fold is the faces the run left
    out, the other the ones it trained on; bad asks get one-line errors."""
    from emo.train.data import fold_assignment

    train = load_split(data, "train")
    f = fold_assignment(train.images, train.labels, 2, 5)
    ck = load_checkpoint(teacher)
    model, spec = model_from_checkpoint(ck), InputSpec.from_dict(ck["input"])
    for which, k, how in (("held-out", 1, "held out: never trained on"), ("0", 0, "trained on")):
        r = run_cli("emo-train", "evaluate", teacher, data, "--fold", which, "--json", tmp / "rep.json")
        assert r.returncode == 0, r.stderr
        assert f"fold {k} of 2 ({how}), 140 training faces" in r.stdout
        idx = f == k
        with torch.no_grad():
            pred = model(torch.from_numpy(normalize(train.images[idx], spec))).argmax(1).numpy()
        assert json.loads((tmp / "rep.json").read_text())["report"]["accuracy"] == pytest.approx((pred == train.labels[idx]).mean(), abs=1e-4)
    other = write_synthetic_fer(tmp / "other", {"train": 20, "val": 2}, seed=9)
    bad = [(teacher, data, ("--fold", "2"), "--fold must be within 0..1"),
           (teacher, data, ("--fold", "one"), "a fold number (0..1) or 'held-out'"),
           (teacher, data, ("--fold", "0", "--split", "val"), "drop --split val"),
           (teacher, other, ("--fold", "held-out"), "split into other folds"),
           (not_a_fold_run, data, ("--fold", "held-out"), "is not a fold run")]
    for ck_path, where, args, msg in bad:
        r = run_cli("emo-train", "evaluate", ck_path, where, *args)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_heldout_probs_come_from_the_teacher_that_held_each_face_out():
    from emo.train.distill import heldout_teacher_probs

    teachers = [_Const([3.0, 0, 0, 0, 0, 0, 0]), _Const([0, 0, 0, 2.0, 0, 0, 0]), _Const([0, 0, 0, 0, 0, 0, 1.0])]
    folds = torch.tensor([2, 0, 1, 1, 0, 2])
    x = torch.randn(6, 1, 48, 48)
    got = heldout_teacher_probs(teachers, folds, x, 2.0, False, flip=True)
    for i, k in enumerate(folds.tolist()):
        assert torch.allclose(got[i], teacher_probs([teachers[k]], x[i : i + 1], 2.0, False)[0])


def test_fold_teachers_and_a_heldout_student(seed_run, synthetic_fer, tmp_path, monkeypatch, capfd):
    quick = ["--set", "arch=emonet-s", "--set", "max_steps=2", "--set", "batch_size=32", "--set", "plots=false"]
    for k in (1, 0):
        r = _fit(synthetic_fer, tmp_path, f"f{k}", *quick, "--set", "folds=2", "--set", f"fold={k}", "--set", "fold_seed=5")
        assert r.returncode == 0, r.stderr
        assert f"fold {k} of 2: training on 140 faces, 140 held out" in r.stdout  # 40 train faces x 7 classes
        rec = load_checkpoint(tmp_path / f"f{k}" / "model.pt")["data"]["fold"]
        assert rec["folds"] == 2 and rec["fold"] == k and rec["seed"] == 5 and rec["held_out"] == 140
    t = lambda *names: json.dumps([str(tmp_path / n / "model.pt") for n in names])  # noqa: E731
    student = [*quick, "--set", "kd_heldout=true", "--set", "kd_alpha=0.5"]
    r = _fit(synthetic_fer, tmp_path, "s", *student, "--set", f"teachers={t('f1', 'f0')}")
    assert r.returncode == 0, r.stderr
    assert "distilling from 2 teacher(s)" in r.stdout and "the teacher that held it out" in r.stdout
    assert "held out" not in r.stdout.split("distilling")[0]  # the student itself trains on every face
    bad = {"no teacher holds out fold(s) [1]": [f"teachers={t('f0')}"],
           "is not a fold run": [f"teachers={json.dumps([str(seed_run / 'model.pt')])}"],
           "both hold out fold 0": [f"teachers={t('f0', 'f0')}"],
           "drop folds": [f"teachers={t('f0', 'f1')}", "folds=2"],
           "mixup": [f"teachers={t('f0', 'f1')}", "mixup=0.2"]}
    fit_here = lambda *extra: emo_train_here(monkeypatch, capfd, "fit", "--data", synthetic_fer, "--out", tmp_path,  # noqa: E731
                                          "--name", "bad", "--no-progress", *extra)  # refused before training: in this process
    for msg, sets in bad.items():
        code, _, err = fit_here(*student, *[a for s in sets for a in ("--set", s)])
        assert code == 2 and msg in err and "Traceback" not in err, (msg, err)
    code, _, err = fit_here(*quick, "--set", "folds=2", "--set", "fold=2")
    assert code == 2 and "fold must be within 0..1" in err
    _evaluate_folds(tmp_path / "f1" / "model.pt", seed_run / "model.pt", synthetic_fer, tmp_path)
    code, _, err = fit_here(*quick, "--set", "fold=1")
    assert code == 2 and "folds is not" in err and "Traceback" not in err


def test_quiet_keeps_the_progress_lines_back(synthetic_fer, tmp_path):
    small = ["--set", "arch=seed", "--set", "max_steps=2", "--set", "batch_size=32", "--set", "plots=false"]
    loud = _fit(synthetic_fer, tmp_path, "loud", *small)
    quiet = run_cli("emo-train", "-q", "fit", "--data", synthetic_fer, "--out", tmp_path, "--name", "quiet", "--no-progress", *small)
    assert loud.returncode == 0 and quiet.returncode == 0, loud.stderr + quiet.stderr
    assert "epoch 1/" in loud.stdout and "model seed" in loud.stdout
    assert quiet.stdout == "" and quiet.stderr == "" and (tmp_path / "quiet" / "model.pt").is_file()
