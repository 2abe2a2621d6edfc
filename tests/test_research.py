"""research/: the held-out distillation chain (research/configs/reproduce-heldout.sh, with a
stand-in emo-train) and the research scripts (research/scripts/), so that what a researcher may
rerun still runs. Its recipes are checked with the others in test_configs.py."""
import json
import os
import subprocess
import sys

from conftest import REPO

SCRIPTS = REPO / "research" / "scripts"


def run(script, *args):
    r = subprocess.run([sys.executable, str(SCRIPTS / script), *map(str, args)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return r


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
    (tmp_path / "research" / "configs").mkdir(parents=True)
    (tmp_path / "models" / "large").mkdir(parents=True)
    (tmp_path / "models" / "large" / "emonet-kd3-bn.pt").write_bytes(b"")
    script = (REPO / "research" / "configs" / "reproduce-heldout.sh").read_text()
    (tmp_path / "research" / "configs" / "reproduce-heldout.sh").write_text(script)
    fake = tmp_path / "bin" / "emo-train"
    fake.parent.mkdir()
    fake.write_text(FAKE_TRAIN)
    fake.chmod(0o755)
    (fake.parent / "emo-export").write_text('#!/usr/bin/env bash\necho "export $*" >> calls\n')
    (fake.parent / "emo-export").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}{os.pathsep}{os.environ['PATH']}"}
    run = lambda: subprocess.run(["bash", "research/configs/reproduce-heldout.sh", "DATA", "2", "--threads", "1"],  # noqa: E731
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
    kept = sorted(p.name for p in (tmp_path / "runs" / "fold-teachers").iterdir())
    assert kept == ["emonet-wkf0.pt", "emonet-wkf1.pt", "emonet-wkf2.pt", "emonet-wkf4.pt"]  # each finished teacher, in float16
    assert "half runs/emonet-wkf0/model.pt runs/fold-teachers/emonet-wkf0.pt --data DATA" in calls
    seen = len(calls)
    second = run()
    assert second.returncode == 1 and "not finished: emonet-kdh" in second.stderr, second.stdout + second.stderr
    calls = (tmp_path / "calls").read_text().splitlines()[seen:]
    seen += len(calls)
    starts = [c.split()[1] for c in calls if c.startswith("start")]
    assert starts[0] == "emonet-wkf3" and sorted(starts[1:]) == ["emonet-kdh", "emonet-wkh"]  # kept teachers are not trained again
    assert "kept in runs/fold-teachers/emonet-wkf0.pt" in second.stdout
    assert all("--resume runs/emonet-wkf" in c and "--threads 1" in c for c in calls if c.startswith("start emonet-wkf"))
    assert "-c research/configs/emonet-wkh.toml" in [c for c in calls if c.startswith("start emonet-wkh")][0]
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
                     "ensemble models/large/emonet-kd3-bn.pt models/large/emonet-wkd-bn.pt models/large/emonet-dkd-bn.pt "
                     "runs/emonet-wkh-bn/model.pt --data DATA --out runs --name emonet-large-h --half",
                     "export runs/emonet-large-h/model.pt --calib-data DATA --calib-size 1000",
                     "recalibrate runs/emonet-kdh/model.pt",
                     "export runs/emonet-kdh-bn/model.pt --calib-data DATA --calib-size 1000 --crop-margin 0"]


def test_probe_arch_times_untrained_candidates():
    r = run("probe_arch.py", '{"small": ["emonet", {"widths": [8, 16, 32], "blocks": [1, 1], "stem_stride": 2}]}', "--runs", 20, "--warmup", 2)
    rows = [line for line in r.stdout.splitlines() if line.startswith("| small |")]
    assert len(rows) == 1 and rows[0].rstrip().endswith("x |")
    bad = subprocess.run([sys.executable, str(SCRIPTS / "probe_arch.py"), '{"x": ["nope", {}]}'], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown architecture" in bad.stderr and "Traceback" not in bad.stderr


def _ensemble_subsets():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import ensemble_subsets
    finally:
        sys.path.pop(0)
    return ensemble_subsets


def test_split_half_check_tells_luck_from_a_better_subset():
    """Choosing among equals gains nothing out of sample; a truly better subset is found and its lead holds."""
    import torch

    es = _ensemble_subsets()
    g = torch.Generator().manual_seed(1)
    base = torch.rand(2000, generator=g) < 0.6
    # equals: the same number of faces right, different faces (shuffled)
    equals = {"A+B": base, **{f"A+B+{c}": base[torch.randperm(2000, generator=g)] for c in "CDEFG"}}
    luck = es.split_half(equals, "A+B", 300, seed=0)
    assert luck["chosen_minus_baseline"] < 0.005  # the half-set winner among equals gains nothing on the other half
    better = {"A+B": base, "A+B+C": base | (torch.rand(2000, generator=g) < 0.25)}  # about 70%
    found = es.split_half(better, "A+B", 300, seed=0)
    assert found["picks"] == {"A+B+C": 300} and 0.08 < found["chosen_minus_baseline"] < 0.12


def test_ensemble_subsets_scores_checkpoints(seed_run, synthetic_fer, tmp_path):
    """Two copies of one model: every subset scores as the model itself, so choosing gains exactly nothing."""
    r = run("ensemble_subsets.py", f"A={seed_run / 'model.pt'}", f"B={seed_run / 'model.pt'}", "--data", synthetic_fer,
            "--flip", "--splits", 50, "--json", tmp_path / "s.json")
    res = json.loads((tmp_path / "s.json").read_text())
    assert set(res["accuracy"]) == {"A+B", "A+B flip"} and res["baseline"] == "A+B"
    assert res["accuracy"]["A+B"] == res["member_accuracy"]["A"] and res["split_half"]["chosen_minus_baseline"] <= 0
    assert "split-half check (50 halvings)" in r.stdout
    bad = subprocess.run([sys.executable, str(SCRIPTS / "ensemble_subsets.py"), f"A={seed_run / 'model.pt'}", "B=nope.pt",
                          "--data", synthetic_fer], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "checkpoint nope.pt not found" in bad.stderr and "Traceback" not in bad.stderr
