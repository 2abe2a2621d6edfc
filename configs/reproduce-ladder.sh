#!/usr/bin/env bash
# Rebuild the model ladder's tiny and large models (and the mini-Xception reference point) from
# FER2013 and the clean default model's checkpoint, which the repository keeps (models/large/emonet-kd3-bn.pt):
#   bash configs/reproduce-ladder.sh ../shared/data/fer2013
# The recipes read the default model as runs/emonet-kd3-bn/model.pt, the name the default's own
# chain (reproduce-default.sh) gives it, and the hardened default as runs/emo-default/model.pt;
# without that run, this links the kept checkpoints there.
# Each stage is resumable: after Ctrl-C, rerun this script; a stage with a last.pt continues from it.
# Then export, measure and bundle: see MODEL_CARD.md, "The model ladder".
set -euo pipefail
data=${1:?usage: reproduce-ladder.sh FER2013_ROOT}
out=runs
if [ ! -e "$out/emonet-kd3-bn/model.pt" ]; then
  mkdir -p "$out/emonet-kd3-bn"
  ln -s "$(pwd)/models/large/emonet-kd3-bn.pt" "$out/emonet-kd3-bn/model.pt"
fi
if [ ! -e "$out/emo-default/model.pt" ]; then  # the hardened default (reproduce-default.sh's last stage)
  mkdir -p "$out/emo-default"
  ln -s "$(pwd)/models/emo_default.pt" "$out/emo-default/model.pt"
fi
stage() {  # stage NAME CONFIG
  if [ -f "$out/$1/last.pt" ]; then
    emo-train fit --resume "$out/$1" --data "$data"
  else
    emo-train fit -c "$2" --data "$data" --out "$out"
  fi
}
stage emonet-tiny3 configs/emonet-tiny3.toml
stage robust-tiny configs/robust-tiny.toml  # the bundled tiny: emonet-tiny3 made robust to spoiled faces
stage mini-xception configs/mini-xception.toml
stage emonet-wkd configs/emonet-wkd.toml  # 100 epochs: several sessions on a 2-core CPU
stage emonet-dkd configs/emonet-dkd.toml  # likewise
# every model gets BatchNorm statistics re-estimated on the plain training faces (writes $out/NAME-bn)
# before export (robust-tiny: -0.7 points clean fp32, but its int8 export passes the agreement gate)
emo-train recalibrate "$out/robust-tiny/model.pt" --data "$data" --out "$out"
emo-export "$out/robust-tiny-bn/model.pt" --calib-data "$data" --calib-size 1000 --crop-margin 0
emo-train recalibrate "$out/mini-xception/model.pt" --data "$data" --out "$out"
emo-export "$out/mini-xception-bn/model.pt" --calib-data "$data" --calib-size 1000 --crop-margin 0
# large: the default and the two long runs (BatchNorm recalibrated), logits averaged in one graph.
# (The repository keeps these members in float16 as models/large/*.pt: MODEL_CARD.md gives the
# one command that joins them without retraining.)
emo-train recalibrate "$out/emonet-wkd/model.pt" --data "$data" --out "$out"
emo-train recalibrate "$out/emonet-dkd/model.pt" --data "$data" --out "$out"
# each member hardened for real cameras (the default by reproduce-default.sh: $out/emo-default),
# every training face of the twin spoiled; the deep member's stem reaches the 12x12 stage at block 8
emo-train harden "$out/emonet-wkd-bn/model.pt" --data "$data" --out "$out" --name emonet-wkd-hardened --split 5 --spoil 1
emo-train harden "$out/emonet-dkd-bn/model.pt" --data "$data" --out "$out" --name emonet-dkd-hardened --split 8 --spoil 1
emo-train ensemble "$out/emo-default/model.pt" "$out/emonet-wkd-hardened/model.pt" "$out/emonet-dkd-hardened/model.pt" \
  --data "$data" --out "$out" --name emo-large --half
emo-export "$out/emo-large/model.pt" --calib-data "$data" --calib-size 1000 --crop-margin 0 --calib-method percentile
