#!/usr/bin/env bash
# On a GPU machine: the CUDA tests (tests/test_cuda.py), then the driver with --cuda in a longer
# setting than the CPU's (Table 2 and ensembles: 20 epochs, 10 points per unit of t, Linear3NoBias
# and Linear5NoBias). Everything it writes that is worth keeping is packed into OUT/.
# Usage: bash scripts/gpu_run.sh FASHION_MNIST_DIR OUT [DRIVER_SECONDS]
set -uo pipefail
FM=$1; OUT=$2; LIMIT=${3:-330}
export PYTHONPATH=$(pwd) PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py 2>&1 | tee $OUT/test_cuda.log | tail -n 25
timeout $LIMIT python3 scripts/reproduce.py --cuda --keep_going --dataset=FashionMNIST \
  --data_path=$FM --widths= --table2_models=Linear3NoBias,Linear5NoBias --table2_epochs=20 \
  --table2_points=10 --checkpoints=checkpoints/FashionMNIST-cuda \
  --experiments=experiments/FashionMNIST-cuda --results=$OUT/RESULTS-cuda.md 2>&1 \
  | tee $OUT/reproduce.log | grep -v '^\$'
tar czf $OUT/runs.tgz experiments/FashionMNIST-cuda \
  $(find checkpoints/FashionMNIST-cuda -name '*.log' -o -name command.sh 2>/dev/null)
