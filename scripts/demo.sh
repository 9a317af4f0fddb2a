#!/usr/bin/env bash
# The main job on the embedded Digits data set: train end-points, connect them with every method of
# the paper's Table 1 (LinearOneLayer) and Table 2 (Linear3NoBias), build WA(1) and WA(2)
# ensembles of five end-points; end with one summary table per model and demo_runs/summary.png.
# Every line is an ordinary command that can be copied; full tables and plots are left in $OUT.
# QUICK=1 (used by the tests) trains 1 epoch and evaluates 5 points per path instead.
set -euo pipefail
PYTHON=${PYTHON:-python3}
OUT=${OUT:-demo_runs}
if [ "${QUICK:-0}" = 1 ]; then EPOCHS1=1; EPOCHS2=1; POINTS=5; else EPOCHS1=20; EPOCHS2=6; POINTS=21; fi

train() {  # model epochs lr seed
  $PYTHON train.py --dir=$OUT/$1/chp$4 --dataset=Digits --model=$1 --epochs=$2 --save_freq=$2 \
    --lr=$3 --seed=$4 > $OUT/train-$1-$4.log
  awk -v m=$1 -v s=$4 '$1 ~ /^[0-9]+$/ {acc=$6} END {printf "trained %s seed %s: test accuracy %s%%\n", m, s, acc}' \
    $OUT/train-$1-$4.log
}

connect() {  # model epochs finder method
  local dir=$OUT/eval/$1/$3-$4
  $PYTHON eval_curve.py --dir=$dir --point_finder=$3 --method=$4 --model=$1 --dataset=Digits \
    --num_points=$POINTS --start=$OUT/$1/chp1/checkpoint-$2.pt --end=$OUT/$1/chp2/checkpoint-$2.pt > $dir.log
  grep '^summary:' $dir.log | sed 's/^summary: /  /'
}

mkdir -p $OUT/eval/LinearOneLayer $OUT/eval/Linear3NoBias
for seed in 1 2; do train LinearOneLayer $EPOCHS1 0.01 $seed; done
echo "== Table 1 (LinearOneLayer on Digits) =="
for path in "PointFinderWithBias lin_connect" "PointFinderWithBias arc_connect" \
            "PointFinderTransportation lin_connect" "PointFinderInverseWithBias lin_connect" \
            "PointFinderInverseWithBias arc_connect" "PointFinderInverseWithBiasOT lin_connect"; do
  connect LinearOneLayer $EPOCHS1 $path
done

# Linear3NoBias: five end-points (seeds 1-5); seeds 1 and 2 are joined by the Table-2 paths
for seed in 1 2 3 4 5; do train Linear3NoBias $EPOCHS2 0.05 $seed; done
echo "== Table 2 (Linear3NoBias on Digits) =="
for path in "PointFinderSimultaneous lin_connect" "PointFinderSimultaneous arc_connect" \
            "PointFinderStepWiseButterfly lin_connect" "PointFinderStepWiseButterfly arc_connect" \
            "PointFinderStepWiseInverse lin_connect" "PointFinderStepWiseInverse arc_connect" \
            "PointFinderStepWiseTransportation lin_connect" "PointFinderStepWiseInverseOT lin_connect"; do
  connect Linear3NoBias $EPOCHS2 $path
done

for layer in 1 0; do  # --layer=1 is WA(1), --layer=0 WA(2) for Linear3NoBias
  $PYTHON eval_ensemble.py --dir=$OUT/eval_ensemble/Linear3NoBias-layer$layer --dataset=Digits \
    --model=Linear3NoBias --name=checkpoint-$EPOCHS2.pt --layer=$layer --layer_ind=$((layer + 1)) \
    --model_paths=$OUT/Linear3NoBias > $OUT/eval_ensemble-layer$layer.log
done

echo
echo "== Summary: every path (t as a fraction of the path; barrier = max train loss minus the mean of the end-points) =="
$PYTHON scripts/path_summary.py --figure=$OUT/summary.png $OUT/eval
echo
echo "== WA(n) ensembles of the five Linear3NoBias end-points (Digits: 360 test images, one image = 0.28 points) =="
sed -n '/^  n  checkpoint/,$p' $OUT/eval_ensemble-layer1.log
grep '^WA([0-9]) ensemble of' $OUT/eval_ensemble-layer0.log
echo "A WA(1) member adds only its last layer (20k parameters) to the base's shared trunk, a plain"
echo "member all 12.7M. On Digits these wide nets make nearly the same mistakes, so no ensemble gains"
echo "more than a few test images over its best member; compare the two ensembles' accuracy above."
echo
echo "per path: $OUT/eval/<model>/<finder>-<method>{.log,/curve.npz,/curve.png}; ensembles: $OUT/eval_ensemble*/"
