#!/usr/bin/env bash
# Reproduce the bundled default model from FER2013, on CPU or GPU (five teachers, then the student
# in three distillation rounds, then its BatchNorm statistics re-estimated on the plain faces, then
# hardened for real cameras):
#   bash configs/reproduce-default.sh ../shared/data/fer2013
# Runs go to runs/ (the emonet-kd configs read their teachers from there). Each stage is
# resumable: after Ctrl-C, rerun this script; a stage with a last.pt continues from it (a
# finished one returns at once).
set -euo pipefail
data=${1:?usage: reproduce-default.sh FER2013_ROOT}
out=runs
stage() {  # stage NAME CONFIG
  if [ -f "$out/$1/last.pt" ]; then
    emo-train fit --resume "$out/$1" --data "$data"
  else
    emo-train fit -c "$2" --data "$data" --out "$out"
  fi
}
stage emonet configs/emonet.toml
stage emonet-s configs/emonet-s.toml
stage emonet-2 configs/emonet-2.toml
stage emonet-kd configs/emonet-kd.toml
stage emonet-w configs/emonet-w.toml
stage emonet-kd2 configs/emonet-kd2.toml
stage emonet-w2 configs/emonet-w2.toml
stage emonet-kd3 configs/emonet-kd3.toml
emo-train recalibrate "$out/emonet-kd3/model.pt" --data "$data" --out "$out"  # writes $out/emonet-kd3-bn
# the bundled default: that network hardened for real cameras (a twin stem for spoiled faces and a
# quality gate; the clean network is kept in the repository as models/large/emonet-kd3-bn.pt)
emo-train harden "$out/emonet-kd3-bn/model.pt" --data "$data" --out "$out" --name emo-default --epochs 30 --adapter 64
emo-export "$out/emo-default/model.pt" --calib-data "$data" --calib-size 1000 --crop-margin 0  # --calib-method auto is the default
