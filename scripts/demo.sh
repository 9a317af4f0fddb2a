#!/usr/bin/env bash
# The main job on the embedded Digits data set: train two end-points (different seeds).
# Every line is an ordinary command that can be copied.
set -euo pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-demo_runs}
for seed in 1 2; do
  $PYTHON train.py --dir=$OUT/LinearOneLayer/chp$seed --dataset=Digits --model=LinearOneLayer \
    --epochs=20 --save_freq=20 --seed=$seed
done
echo "end-points: $OUT/LinearOneLayer/chp1/checkpoint-20.pt $OUT/LinearOneLayer/chp2/checkpoint-20.pt"
