#!/usr/bin/env bash
# The main job on the embedded Digits data set: train end-points, connect them with every method of
# the paper's Table 1 (LinearOneLayer) and Table 2 (Linear3NoBias), one summary line per method.
# Every line is an ordinary command that can be copied; full tables and plots are left in $OUT.
set -euo pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-demo_runs}

train() {  # model epochs seed
  $PYTHON train.py --dir=$OUT/$1/chp$3 --dataset=Digits --model=$1 --epochs=$2 --save_freq=$2 \
    --seed=$3 > $OUT/train-$1-$3.log
  tail -n 1 $OUT/train-$1-$3.log | awk -v m=$1 -v s=$3 '{printf "trained %s seed %s: test accuracy %s%%\n", m, s, $6}'
}

connect() {  # model epochs finder method
  local dir=$OUT/eval/$1/$3-$4
  $PYTHON eval_curve.py --dir=$dir --point_finder=$3 --method=$4 --model=$1 --dataset=Digits \
    --num_points=21 --start=$OUT/$1/chp1/checkpoint-$2.pt --end=$OUT/$1/chp2/checkpoint-$2.pt > $dir.log
  grep '^summary:' $dir.log | sed 's/^summary: //'
}

mkdir -p $OUT/eval/LinearOneLayer $OUT/eval/Linear3NoBias
for seed in 1 2; do train LinearOneLayer 20 $seed; done
echo "== Table 1 (LinearOneLayer on Digits) =="
connect LinearOneLayer 20 PointFinderWithBias lin_connect
connect LinearOneLayer 20 PointFinderWithBias arc_connect
connect LinearOneLayer 20 PointFinderTransportation lin_connect
connect LinearOneLayer 20 PointFinderInverseWithBias lin_connect
connect LinearOneLayer 20 PointFinderInverseWithBias arc_connect
connect LinearOneLayer 20 PointFinderInverseWithBiasOT lin_connect

for seed in 1 2; do train Linear3NoBias 10 $seed; done
echo "== Table 2 (Linear3NoBias on Digits) =="
connect Linear3NoBias 10 PointFinderSimultaneous lin_connect
connect Linear3NoBias 10 PointFinderSimultaneous arc_connect
connect Linear3NoBias 10 PointFinderStepWiseButterfly lin_connect
connect Linear3NoBias 10 PointFinderStepWiseButterfly arc_connect
connect Linear3NoBias 10 PointFinderStepWiseInverse lin_connect
connect Linear3NoBias 10 PointFinderStepWiseInverse arc_connect
connect Linear3NoBias 10 PointFinderStepWiseTransportation lin_connect
connect Linear3NoBias 10 PointFinderStepWiseInverseOT lin_connect
echo "tables, curve.npz and curve.png of every path: $OUT/eval/<model>/<finder>-<method>{.log,/}"

train Linear3NoBias 10 3
echo "== WA(1) ensemble of three Linear3NoBias end-points (Digits) =="
$PYTHON eval_ensemble.py --dir=$OUT/eval_ensemble/Linear3NoBias --dataset=Digits \
  --model=Linear3NoBias --name=10 --layer=1 --layer_ind=2 --model_paths=$OUT/Linear3NoBias \
  > $OUT/eval_ensemble.log
grep -E '^(model [0-9]|WA\()' $OUT/eval_ensemble.log
echo "ensemble table, ens_stat.npz and ensemble.png: $OUT/eval_ensemble/"
