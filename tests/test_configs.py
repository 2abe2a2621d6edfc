"""The recipes in configs/ are valid, and the reproduce chain is consistent: every config parses
and builds its model, every teacher or starting checkpoint a config reads is the output of another
config, and reproduce-default.sh trains each of them before the run that reads it, then recalibrates
and exports the last one."""
import re
from dataclasses import asdict

import pytest
import torch

from emo.edge_runtime.errors import EmoError
from emo.train.checkpoint import load_checkpoint
from emo.train.config import TrainConfig, build_config, read_recipe, tomllib
from emo.train.models import build_model

from conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.toml"))
CHAIN = (REPO / "configs" / "reproduce-default.sh").read_text()
# runs the ladder script joins with `emo-train ensemble ... --name NAME` (continued lines joined)
ENSEMBLES = re.findall(r"^emo-train ensemble .*--name (\S+)",
                       (REPO / "configs" / "reproduce-ladder.sh").read_text().replace("\\\n", " "), flags=re.M)


def _run_name(path: str) -> str:
    """runs/NAME/model.pt, or models/teachers/NAME.pt: the float16 copy of it that
    reproduce-heldout.sh keeps (`emo-train half`)."""
    m = re.fullmatch(r"runs/([\w.-]+)/model\.pt", path) or re.fullmatch(r"models/teachers/([\w.-]+)\.pt", path)
    assert m, f"{path} is not runs/NAME/model.pt or models/teachers/NAME.pt"
    return m.group(1)


def _inputs(cfg) -> list[str]:
    """Run names of the teachers and starting checkpoint a recipe reads."""
    return [_run_name(p) for p in [*cfg.teachers, cfg.init_from] if p]


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_parses_and_builds(path):
    cfg = build_config(path, {})
    build_model(cfg.arch, **cfg.arch_args)
    for dep in _inputs(cfg):  # each input is the run of a config in configs/, or its recalibrated copy,
        if dep in ENSEMBLES:  # or an ensemble that reproduce-ladder.sh joins (`emo-train ensemble ... --name NAME`)
            continue
        base = dep.removesuffix("-bn")  # runs/NAME-bn: `emo-train recalibrate runs/NAME/model.pt`
        dep_path = REPO / "configs" / f"{base}.toml"
        assert dep_path.is_file() and build_config(dep_path, {}).name == base, f"{path.name} reads runs/{dep}, which no config trains"


def test_reproduce_chain_trains_inputs_first():
    stages = re.findall(r"^stage (\S+) configs/(\S+)\.toml$", CHAIN, flags=re.M)
    assert stages and all(name == cfg for name, cfg in stages)
    order = [name for name, _ in stages]
    for name in order:
        cfg = build_config(REPO / "configs" / f"{name}.toml", {})
        assert cfg.name == name  # the run folder other configs read it from
        for dep in _inputs(cfg):
            assert dep in order and order.index(dep) < order.index(name), f"{name} reads {dep} before it is trained"
    recalibrated = re.search(r'^emo-train recalibrate "\$out/([\w.-]+)/model\.pt" .*--out "\$out"', CHAIN, flags=re.M).group(1)
    assert recalibrated == order[-1]
    exported = re.search(r'^emo-export "\$out/([\w.-]+)/model\.pt"', CHAIN, flags=re.M).group(1)
    assert exported == f"{recalibrated}-bn"  # the recalibrated copy of the last stage


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_holds_only_what_differs(path):
    """No key restates the trainer's default or the value the recipe's base already gives it."""
    own = tomllib.loads(path.read_text())
    base = read_recipe(path.parent / own["base"]) if "base" in own else {}
    defaults = asdict(TrainConfig())
    for k, v in own.items():
        if k != "base":
            assert v != base.get(k, defaults[k]), f"{path.name}: {k} = {v!r} restates its base or the default"


def test_base_chain(tmp_path):
    (tmp_path / "a.toml").write_text('lr = 0.5\nepochs = 3\narch_args = { dropout = 0.1 }\nname = "a-run"\n')
    (tmp_path / "b.toml").write_text('base = "a.toml"\nepochs = 4\n')
    cfg = build_config(tmp_path / "b.toml", {"seed": 9})
    assert (cfg.lr, cfg.epochs, cfg.arch_args, cfg.seed) == (0.5, 4, {"dropout": 0.1}, 9)
    assert cfg.name == "b"  # a run name is never inherited; it defaults to the recipe's file name
    (tmp_path / "c.toml").write_text('base = "c.toml"\n')
    with pytest.raises(EmoError, match="names itself as a base"):
        build_config(tmp_path / "c.toml", {})
    (tmp_path / "d.toml").write_text('base = "nope.toml"\n')
    with pytest.raises(EmoError, match="does not exist"):
        build_config(tmp_path / "d.toml", {})


FAKE_TRAIN = r"""#!/usr/bin/env bash
# stands in for emo-train: records each call's start and end, makes the run folder, and fails
# emonet-wkf3 and emonet-kdh on their first call, as a run stopped by the end of a session would
case "$1" in
  half) echo "half $2 $3 $4 $5" >> calls; mkdir -p "$(dirname "$3")"; touch "$3"; exit 0;;
  recalibrate) echo "recalibrate $2" >> calls; d="runs/$(basename "$(dirname "$2")")-bn"; mkdir -p "$d"; touch "$d/model.pt"; exit 0;;
  ensemble) shift; echo "ensemble $*" >> calls; mkdir -p runs/emonet-large-h; touch runs/emonet-large-h/model.pt; exit 0;;
esac
prev=""; name=""
for a in "$@"; do
  [ "$prev" = "-c" ] && name=$(basename "$a" .toml)
  [ "$prev" = "--resume" ] && name=$(basename "$a")
  prev=$a
done
echo "start $name $(date +%s.%N) $*" >> calls
mkdir -p "runs/$name"; touch "runs/$name/last.pt"
sleep 0.3
if [ "$name" = emonet-wkf3 ] || [ "$name" = emonet-kdh ] && [ ! -f "$name.failed-once" ]; then
  touch "$name.failed-once"; echo "stopped by SIGTERM"; exit 130
fi
echo "end $name $(date +%s.%N)" >> calls
echo "best val accuracy 0.5 at epoch 1"
"""


def test_reproduce_heldout_trains_teachers_jobs_at_a_time_then_students(tmp_path):
    import os
    import subprocess

    (tmp_path / "configs").mkdir()
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "emo_default.pt").write_bytes(b"")
    script = (REPO / "configs" / "reproduce-heldout.sh").read_text()
    (tmp_path / "configs" / "reproduce-heldout.sh").write_text(script)
    fake = tmp_path / "bin" / "emo-train"
    fake.parent.mkdir()
    fake.write_text(FAKE_TRAIN)
    fake.chmod(0o755)
    (fake.parent / "emo-export").write_text('#!/usr/bin/env bash\necho "export $*" >> calls\n')
    (fake.parent / "emo-export").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    run = lambda: subprocess.run(["bash", "configs/reproduce-heldout.sh", "DATA", "2", "--threads", "1"],  # noqa: E731
                                 cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    first = run()
    assert first.returncode == 1 and "not finished: emonet-wkf3" in first.stderr, first.stdout + first.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert not any("emonet-wkh" in c or "emonet-kdh" in c for c in calls)  # no student before all five teachers
    spans = {}
    for c in (c for c in calls if c.startswith(("start", "end"))):
        kind, name, t = c.split()[:3]
        spans.setdefault(name, {})[kind] = float(t)
    ended = [s for s in spans.values() if "end" in s]
    overlap = max(sum(s["start"] <= t < s["end"] for s in ended) for t in [s["start"] for s in ended])
    assert overlap <= 2  # JOBS = 2 teachers at a time
    assert (tmp_path / "runs" / "emonet-kd3-bn" / "model.pt").is_symlink()
    kept = sorted(p.name for p in (tmp_path / "models" / "teachers").iterdir())
    assert kept == ["emonet-wkf0.pt", "emonet-wkf1.pt", "emonet-wkf2.pt", "emonet-wkf4.pt"]  # each finished teacher, in float16
    assert "half runs/emonet-wkf0/model.pt models/teachers/emonet-wkf0.pt --data DATA" in calls
    seen = len(calls)
    second = run()
    assert second.returncode == 1 and "not finished: emonet-kdh" in second.stderr, second.stdout + second.stderr
    calls = (tmp_path / "calls").read_text().splitlines()[seen:]
    seen += len(calls)
    starts = [c.split()[1] for c in calls if c.startswith("start")]
    assert starts[0] == "emonet-wkf3" and sorted(starts[1:]) == ["emonet-kdh", "emonet-wkh"]  # kept teachers are not trained again
    assert "kept in models/teachers/emonet-wkf0.pt" in second.stdout
    assert all("--resume runs/emonet-wkf" in c and "--threads 1" in c for c in calls if c.startswith("start emonet-wkf"))
    assert "-c configs/emonet-wkh.toml" in [c for c in calls if c.startswith("start emonet-wkh")][0]
    t = {(c.split()[0], c.split()[1]): float(c.split()[2]) for c in calls if c.startswith(("start", "end"))}
    assert t["end", "emonet-wkf3"] < min(t["start", "emonet-wkh"], t["start", "emonet-kdh"])  # the students last ...
    assert max(t["start", "emonet-wkh"], t["start", "emonet-kdh"]) < t["end", "emonet-wkh"]  # ... side by side
    assert "student emonet-wkh: best val accuracy" in second.stdout
    third = run()  # the stopped student resumes; the finished one is left alone
    assert third.returncode == 0, third.stdout + third.stderr
    calls = (tmp_path / "calls").read_text().splitlines()[seen:]
    assert [c.split()[1] for c in calls if c.startswith("start")] == ["emonet-kdh"]
    assert "--resume runs/emonet-kdh" in calls[0] and "student emonet-wkh: finished" in third.stdout
    # then the two candidates that MODEL_CARD.md's rules judge: large + emonet-wkh, and emonet-kdh
    after = [c for c in calls if not c.startswith(("start", "end"))]
    assert after == ["recalibrate runs/emonet-wkh/model.pt",
                     "ensemble models/emo_default.pt models/large/emonet-wkd-bn.pt models/large/emonet-dkd-bn.pt "
                     "runs/emonet-wkh-bn/model.pt --data DATA --out runs --name emonet-large-h --half",
                     "export runs/emonet-large-h/model.pt --calib-data DATA --calib-size 1000",
                     "recalibrate runs/emonet-kdh/model.pt",
                     "export runs/emonet-kdh-bn/model.pt --calib-data DATA --calib-size 1000 --crop-margin 0"]


KEPT = sorted((REPO / "models" / "teachers").glob("*.pt"))
RUN_ONLY = {"data", "threads", "progress", "device"}  # where and how fast a run went, not what it trained


@pytest.mark.parametrize("path", KEPT, ids=lambda p: p.name)
def test_kept_teacher_is_the_float16_run_of_its_config(path):
    """models/teachers/NAME.pt, which the held-out students read, is the float16 copy
    (`emo-train half`) of the run configs/NAME.toml trains: the same recipe, the fold it names held
    out, and a copy that kept the original's top-1 answers."""
    ck = load_checkpoint(path)
    want = asdict(build_config(REPO / "configs" / f"{path.stem}.toml", {}))
    got = ck["config"]
    assert {k: got.get(k) for k in want if k not in RUN_ONLY} == {k: v for k, v in want.items() if k not in RUN_ONLY}
    fold = ck["data"]["fold"]
    assert (fold["folds"], fold["fold"]) == (want["folds"], want["fold"]) and fold["held_out"] > 5000
    assert ck["storage"] == "float16"
    assert all(v.dtype == torch.float16 for v in ck["state_dict"].values() if v.is_floating_point())
    assert ck["half"]["top1_agreement"] >= 0.995
    assert ck["half"]["val_accuracy_float32"] - ck["half"]["val_accuracy_float16"] <= 0.002


def test_kept_teachers_split_the_faces_one_way():
    """Held-out soft labels are honest only if every kept teacher cut the faces by the same fold
    assignment, each holding out a different fold."""
    if not KEPT:
        pytest.skip("no teachers kept in models/teachers yet")
    folds = [load_checkpoint(p)["data"]["fold"] for p in KEPT]
    assert len({f["assignment_sha256"] for f in folds}) == 1
    assert len({f["fold"] for f in folds}) == len(folds)
