"""`emo-train finetune`: a user's own faces, split by group, taught without forgetting, reported
before and after, exported, resumable, and refused in one line when they cannot be used. The
user's faces are the suite's synthetic cartoon faces, drawn larger, in colour or gray, named
<person>_<n>.png, with no neutral face among them; the base is the seed CNN (``seed_run``), whose
recorded training data (``synthetic_fer``) is the FER2013 stand-in it replays."""
from __future__ import annotations

import json
import os
import signal

import cv2
import numpy as np
import pytest
import torch

from emo.edge_runtime.classifier import Classifier
from emo.edge_runtime.errors import EmoError
from emo.edge_runtime.labels import LABELS
from emo.export.exporter import calibrate_confidence, check_gates
from emo.export.options import Gates
from emo.train.checkpoint import load_checkpoint
from emo.train.data import face_groups, group_split, group_splits
from emo.train.finetune import FinetuneRequest, finetune
from emo.train.trainer import Stop

from conftest import emo_train_here, synthetic_face

# a dozen steps of the recipe, its replay weighed less (a toy this short learns little under the full weight)
FAST = ["--threads", "1", "--no-progress", "--set", "max_steps=12", "--set", "batch_size=16", "--set", "replay_batch=16",
        "--set", "replay_alpha=4"]
NEUTRAL = LABELS.index("neutral")


def write_user_faces(root, people: int = 6, per_class: int = 3, classes=range(6), seed: int = 1):
    """DATA/<emotion>/person<P>_<K>.png: 96x96 (twice the model's input), every other one in colour,
    the face darker than FER2013's (the user's room): their own domain, with no neutral faces."""
    rng = np.random.default_rng(seed)
    for p in range(people):
        for c in classes:
            d = root / LABELS[c]
            d.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                img = cv2.resize((synthetic_face(c, rng) * 0.6).astype(np.uint8), (96, 96), interpolation=cv2.INTER_CUBIC)
                if (p + k) % 2:
                    img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
                cv2.imwrite(str(d / f"person{p}_{k:03d}.png"), img)
    return root


def cli(monkeypatch, capfd, *args) -> tuple[int, str, str]:
    """emo-train in this process (its main(): one-line errors, exit codes), with its output."""
    return emo_train_here(monkeypatch, capfd, *args)


@pytest.fixture(scope="module")
def user_faces(tmp_path_factory):
    return write_user_faces(tmp_path_factory.mktemp("user"))


# ---------------------------------------------------------------- the split by group
def test_groups_come_from_the_file_name_prefix_or_a_csv(tmp_path):
    names = ["happy/alice_0001.png", "happy/alice_0002.png", "sad/bob_x_1.png", "sad/carol.png"]
    assert face_groups(names) == ["alice", "alice", "bob", "carol"]
    csv = tmp_path / "groups.csv"
    csv.write_text("file,group\nhappy/alice_0001.png,A\nalice_0002.png,A\nsad/bob_x_1.png,B\ncarol.png,C\n")
    assert face_groups(names, str(csv)) == ["A", "A", "B", "C"]
    csv.write_text("file,group\nhappy/alice_0001.png,A\n")
    with pytest.raises(EmoError, match="no group for 3 of the 4 faces"):
        face_groups(names, str(csv))
    csv.write_text("name,person\nx,y\n")
    with pytest.raises(EmoError, match="columns file and group"):
        face_groups(names, str(csv))


def test_group_split_keeps_each_group_on_one_side_and_is_fixed_by_its_seed():
    rng = np.random.default_rng(0)
    groups = [f"g{rng.integers(0, 30)}" for _ in range(600)]
    labels = rng.integers(0, 6, 600)
    lonely = np.array([g == "g0" for g in groups])  # the only group with disgust faces
    labels[labels == 1] = 2
    labels[lonely] = 1
    val = group_split(labels, groups, 0.2, seed=3)
    g = np.array(groups)
    assert not set(g[val]) & set(g[~val])  # no group on both sides
    assert len(set(g[val])) == round(0.2 * len(set(groups)))
    assert not val[lonely].any()  # a class with one group stays in training
    for c in (0, 2, 3, 4, 5):  # stratified: each class near a fifth of its faces in validation
        assert 0.08 < val[labels == c].sum() / (labels == c).sum() < 0.35
    assert np.array_equal(val, group_split(labels, groups, 0.2, seed=3))
    assert not np.array_equal(val, group_split(labels, groups, 0.2, seed=4))
    with pytest.raises(EmoError, match="one group"):
        group_split(labels[:5], ["solo"] * 5, 0.2, seed=0)


def test_group_splits_of_a_user_folder(user_faces):
    train, val, rec = group_splits(str(user_faces), 48, 0.34, 0, "")
    side = lambda s: {n.split("/")[1].split("_")[0] for n in s.names}  # noqa: E731
    assert side(train) and side(val) and not side(train) & side(val)
    assert train.images.shape[1:] == (48, 48) and len(train.labels) + len(val.labels) == 6 * 6 * 3
    assert rec["classes_seen"] == list(LABELS[:6]) and rec["groups"] == {"train": 4, "val": 2, "file": "file-name prefix"}
    assert group_splits(str(user_faces), 48, 0.34, 0, "")[2]["fingerprint"] == rec["fingerprint"]


# ---------------------------------------------------------------- a whole fine-tune
def test_finetune_reports_before_and_after_keeps_a_missing_class_and_exports(seed_run, user_faces, tmp_path, monkeypatch, capfd):
    code, out, err = cli(monkeypatch, capfd, "finetune", user_faces, "--from", seed_run / "model.pt", "--out", tmp_path,
                         "--name", "ft", "--export", *FAST)
    assert code == 0, out + err
    assert "replaying FER2013 faces of" in out and "the base model's training data" in out  # seed_run's recorded data
    assert "no faces of neutral: the model keeps what the base model knows of them" in out
    assert "your validation faces" in out and "FER2013 PublicTest" in out and "the same, int8" in out
    run = tmp_path / "ft"
    res = json.loads((run / "finetune.json").read_text())
    user, fer = res["figures"]["user_val"], res["figures"]["fer2013_publictest"]
    assert user["n"] == res["faces"]["val"] > 0 and res["groups"]["val"] >= 1
    for r in (user, fer):
        assert 0 <= r["before"]["accuracy"] <= 1 and 0 <= r["after"]["accuracy"] <= 1
    assert user["after"]["accuracy"] >= user["before"]["accuracy"]  # the user's darker faces: no worse after a dozen steps
    assert fer["after"]["missing_classes_recall"] >= 0.8  # neutral, which DATA lacks, still works
    assert fer["after"]["accuracy"] >= fer["before"]["accuracy"] - 0.1  # a dozen steps of a toy: near, not equal
    ck = load_checkpoint(run / "model.pt")
    assert ck["finetune"]["classes_seen"] == list(LABELS[:6]) and ck["finetune"]["data_fingerprint"] == res["data_fingerprint"]
    assert ck["data"]["replay"]["faces"] > 0 and ck["config"]["val_by_group"]
    # the int8 model loads as emo-edge loads it, and says what it was fine-tuned from and on
    clf = Classifier(run / "model.int8.onnx")
    ft = json.loads(clf.meta.extra["finetune"])
    assert ft["base_sha256"] == res["base_sha256"] and ft["data_fingerprint"] == res["data_fingerprint"]
    assert ft["classes_seen"] == list(LABELS[:6])
    rep = json.loads((run / "export-report.json").read_text())
    assert rep["passed"] and rep["n"] == res["faces"]["val"] and "val:" in rep["verification_data"]
    assert rep["calibration"]["faces"] == res["faces"]["train"]  # calibrated on the training faces
    assert not rep["confidence"]["fitted"] and "verification faces" in rep["confidence"]["not_fitted"]  # too few to fit
    assert set(rep["robustness_int8"]["accuracy"]) and 0 <= rep["robustness_int8"]["mean"] <= 1
    neutral = np.stack([synthetic_face(NEUTRAL, np.random.default_rng(i)) for i in range(20)])
    assert (clf.predict_crops(neutral).argmax(1) == NEUTRAL).mean() >= 0.8


def test_a_stopped_finetune_continues_when_rerun(seed_run, user_faces, tmp_path):
    def request(name):
        return FinetuneRequest(data=str(user_faces), base=str(seed_run / "model.pt"), replay="none", out=str(tmp_path), name=name,
                               overrides={"max_steps": 12, "batch_size": 16, "repeat": 2})
    live = {"threads": 1, "progress": False}
    lines = []
    full = finetune(request("full"), log=lines.append, live=live)
    assert any("no FER2013 faces replayed" in str(s) for s in lines)
    assert "fer2013_publictest" in full["figures"]  # the base's recorded FER2013 data, though not replayed

    def stop_after_first_epoch(*a):
        if str(a[0]).startswith("epoch 1/"):
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Stop):
        finetune(request("cut"), log=stop_after_first_epoch, live=live, resume_hint="the same command again")
    assert load_checkpoint(tmp_path / "cut" / "last.pt")["trainer_state"]["epoch"] == 1
    lines.clear()
    finetune(request("cut"), log=lines.append, live=live)
    assert any("resuming" in str(s) for s in lines)
    a, b = (load_checkpoint(tmp_path / n / "model.pt")["state_dict"] for n in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines.clear()
    finetune(request("cut"), log=lines.append, live=live)  # done: a rerun only reports
    assert any("already finished" in str(s) for s in lines)
    changed = request("cut")
    changed.overrides["lr"] = 0.01
    with pytest.raises(EmoError, match="other settings \\(lr\\)"):
        finetune(changed, log=lines.append, live=live)


# ---------------------------------------------------------------- what is refused, in one line
def test_errors_are_one_line(seed_run, user_faces, tmp_path, monkeypatch, capfd):
    base = ["--from", seed_run / "model.pt", "--out", tmp_path, "--replay", "none", *FAST]

    def refused(data, *extra) -> str:
        code, out, err = cli(monkeypatch, capfd, "finetune", data, *base, *extra)
        assert code == 2 and "Traceback" not in err and err.count("\n") == 1, (code, out, err)
        return err

    empty = tmp_path / "empty"
    write_user_faces(empty, people=2, classes=[3])
    (empty / "sad").mkdir()
    err = refused(empty)
    assert "sad in" in err and "hold no images" in err
    made = tmp_path / "made-by-collect"  # emo-edge collect makes every folder: an empty one is a missing emotion
    write_user_faces(made, people=2, classes=[3, 5])
    (made / "sad").mkdir()
    (made / "faces.csv").write_text("file,group\n")
    assert group_splits(str(made), 48, 0.5, 0)[2]["classes_seen"] == ["happy", "surprise"]
    broken = tmp_path / "broken" / "happy"
    broken.mkdir(parents=True)
    for i in range(12):
        (broken / f"p{i}_0.png").write_bytes(b"not an image")
    assert "could be read" in refused(broken.parent)
    flat = tmp_path / "flat"
    flat.mkdir()
    cv2.imwrite(str(flat / "a_1.png"), synthetic_face(3))
    assert "no class folders" in refused(flat)
    one = write_user_faces(tmp_path / "one", people=1)
    assert "one group" in refused(one)
    few = write_user_faces(tmp_path / "few", people=2, per_class=1, classes=[3, 4])
    assert "needs at least 10" in refused(few)
    assert "ensemble of three networks" in refused(user_faces, "--from", "large")
    assert "no such checkpoint" in refused(user_faces, "--from", tmp_path / "nope.pt")
    assert "--groups" in refused(user_faces, "--groups", tmp_path / "nope.csv")


def test_unreadable_images_are_skipped_and_counted(seed_run, tmp_path):
    data = write_user_faces(tmp_path / "data", people=3, per_class=2, classes=[3, 4])
    (data / "happy" / "person9_bad.png").write_bytes(b"\x89PNG broken")
    train, val, rec = group_splits(str(data), 48, 0.34, 0, "")
    assert rec["report"]["unreadable_count"] == 1 and len(train.labels) + len(val.labels) == 12


# ---------------------------------------------------------------- the export on a few dozen faces
def test_export_steps_on_a_few_faces():
    labels = np.arange(40) % 7
    logits = np.eye(7)[labels] * 4.0
    c = calibrate_confidence(logits, labels, None)
    assert c["temperature"] == 1.0 and not c["fitted"] and "only 40" in c["not_fitted"]
    labels = np.arange(200) % 7
    c = calibrate_confidence(np.eye(7)[labels] * 4.0, labels, None)  # all right: no finite temperature fits best
    assert not c["fitted"] and "every verification face is right" in c["not_fitted"]
    wrong = np.eye(7)[labels] * 4.0
    wrong[:30] = np.eye(7)[(labels[:30] + 1) % 7] * 4.0
    assert calibrate_confidence(wrong, labels, None)["fitted"]
    # with spoiled copies, a copy is not a new face: 40 faces are still too few
    labels = np.arange(40) % 7
    c = calibrate_confidence(np.eye(7)[labels] * 4.0, labels, None, spoiled=np.eye(7)[(labels + 1) % 7] * 4.0)
    assert not c["fitted"] and "only 40" in c["not_fitted"]


def test_temperature_fitted_on_spoiled_copies_too():
    """Calibrated on clean faces but overconfident on spoiled ones: fitting on both softens the
    softmax and lowers the spoiled faces' calibration error; the report names both."""
    rng = np.random.default_rng(0)
    labels = np.arange(700) % 7

    def logits(acc: float, margin: float) -> np.ndarray:
        pred = np.where(rng.random(len(labels)) < acc, labels, (labels + rng.integers(1, 7, len(labels))) % 7)
        return np.eye(7)[pred] * margin + rng.normal(0, 0.3, (len(labels), 7))

    clean, spoiled = logits(0.8, 2.5), logits(0.5, 5.0)
    alone, both = calibrate_confidence(clean, labels, None), calibrate_confidence(clean, labels, None, spoiled=spoiled)
    assert "spoiled_faces" not in alone and both["spoiled_faces"] and both["fitted"]
    assert both["temperature"] > alone["temperature"]
    assert both["ece_spoiled_after"] < both["ece_spoiled_before"] - 0.05
    assert both["ece_before"] == alone["ece_before"]  # the clean faces' ECE stays the clean faces'
    assert calibrate_confidence(clean, labels, 2.0, spoiled=spoiled)["temperature"] == 2.0  # a given temperature is kept
    labels = np.arange(40) % 7
    ref = np.eye(7)[labels] * 5.0
    one_off = ref.copy()
    one_off[0] = np.eye(7)[(labels[0] + 1) % 7] * 5.0
    assert not all(g["passed"] for g in check_gates(ref, ref, one_off, labels, Gates())["gates"].values())
    assert all(g["passed"] for g in check_gates(ref, ref, one_off, labels, Gates(one_face=True))["gates"].values())
    two_off = one_off.copy()
    two_off[1] = np.eye(7)[(labels[1] + 1) % 7] * 5.0
    assert not check_gates(ref, ref, two_off, labels, Gates(one_face=True))["gates"]["int8_agrees_with_fp32"]["passed"]


# ---------------------------------------------------------------- the trainer's parts that fine-tuning uses
def test_trainer_keeps_the_last_epoch_repeats_few_faces_and_can_freeze_batchnorm(synthetic_fer, tmp_path):
    from emo.train.config import TrainConfig
    from emo.train.trainer import RunState, train

    state = RunState()
    for acc in (0.9, 0.5):
        assert state.record({"epoch": state.epoch + 1, "step": 1, "val_accuracy": acc, "val_macro_f1": acc}, {}, key="")
    assert state.best["val_accuracy"] == 0.5 and state.best["epoch"] == 2
    cfg = TrainConfig(data=str(synthetic_fer), arch="emonet", arch_args={"widths": [8, 16, 32], "blocks": [1, 1]}, batch_size=64,
                      epochs=1, repeat=2, bn_frozen=True, out=str(tmp_path), name="r", threads=1, progress=False, plots=False)
    train(cfg, log=lambda *a: None)
    ck = load_checkpoint(tmp_path / "r" / "model.pt")
    assert ck["metrics"]["history"][0]["step"] == 2 * 280 // 64  # one epoch: two passes over the 280 faces
    bn = {k: v for k, v in ck["state_dict"].items() if "running_" in k}
    assert bn and all(torch.equal(v, torch.zeros_like(v) if "mean" in k else torch.ones_like(v)) for k, v in bn.items())


def test_refit_trains_again_on_every_face_and_keeps_the_validated_figures(seed_run, user_faces, tmp_path):
    req = FinetuneRequest(data=str(user_faces), base=str(seed_run / "model.pt"), replay="none", out=str(tmp_path), name="r",
                          overrides={"max_steps": 12, "batch_size": 16}, refit=True)
    lines = []
    res = finetune(req, log=lines.append, live={"threads": 1, "progress": False})
    run, checked = tmp_path / "r", tmp_path / "r" / "validated"
    assert res["run"] == str(run) and res["refit"]["validated_run"] == str(checked)
    assert res["refit"]["faces"] == res["faces"]["train"] + res["faces"]["val"] == 6 * 6 * 3
    assert any("refitting on all 108 of your faces" in str(s) for s in lines)
    first, final = load_checkpoint(checked / "model.pt"), load_checkpoint(run / "model.pt")
    assert first["data"]["train_report"]["count"] == res["faces"]["train"]  # the validated run held its groups out
    assert final["config"]["train_on_val"] and final["finetune"]["refit"]
    assert final["data"]["train_fingerprint"] != first["data"]["train_fingerprint"]
    assert 0 <= res["refit"]["fer2013_publictest"] <= 1  # the base's recorded FER2013, judged on the refit model
    from emo.train.data import run_group_faces
    calib, val = run_group_faces(final, "r")
    assert len(calib.labels) == 108 and len(val.labels) == res["faces"]["val"]  # the export calibrates on every face
    lines.clear()
    finetune(req, log=lines.append, live={"threads": 1, "progress": False})  # a rerun: both runs done
    assert sum("already finished" in str(s) for s in lines) == 2
