#!/usr/bin/env bash
# All benchmarks of docs/PERFORMANCE.md, on Fashion-MNIST (Debian's dataset-fashion-mnist).
# Trains the end-points it needs first (skipped when present). Long: about two hours on 2 cores.
set -euo pipefail
export PYTHONPATH=$(pwd)
PYTHON=${PYTHON:-python3}
FM=${FM:-/usr/share/datasets/fashion-mnist}
C=checkpoints/FashionMNIST

train() {  # model seed epochs
  [ -f $C/$1/chp$2/checkpoint-$3.pt ] || $PYTHON train.py --dir=$C/$1/chp$2 --dataset=FashionMNIST \
    --data_path=$FM --model=$1 --epochs=$3 --save_freq=$3 --seed=$2
}
for seed in 1 2; do train LinearOneLayer $seed 10; done
for seed in 1 2 3 4 5; do train Linear3NoBias $seed 3; done

$PYTHON bench/train_speed.py --data_path=$FM
$PYTHON bench/path_speed.py --table 1 --data_path=$FM \
  --start=$C/LinearOneLayer/chp1/checkpoint-10.pt --end=$C/LinearOneLayer/chp2/checkpoint-10.pt
$PYTHON bench/path_speed.py --table 2 --data_path=$FM --floor_networks=1 ${SHORT:+--short} \
  --start=$C/Linear3NoBias/chp1/checkpoint-3.pt --end=$C/Linear3NoBias/chp2/checkpoint-3.pt
$PYTHON bench/ensemble_speed.py --data_path=$FM --model_paths=$C/Linear3NoBias --name=checkpoint-3.pt
$PYTHON bench/vgg_speed.py
$PYTHON bench/distributed_overhead.py --data_path=$FM \
  --start=$C/LinearOneLayer/chp1/checkpoint-10.pt --end=$C/LinearOneLayer/chp2/checkpoint-10.pt
$PYTHON bench/assignment_speed.py \
  --start=$C/Linear3NoBias/chp1/checkpoint-3.pt --end=$C/Linear3NoBias/chp2/checkpoint-3.pt
$PYTHON bench/alignment_speed.py --data_path=$FM \
  --start=$C/Linear3NoBias/chp1/checkpoint-3.pt --end=$C/Linear3NoBias/chp2/checkpoint-3.pt
$PYTHON bench/alignment_speed.py --model=VGG16
