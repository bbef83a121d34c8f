#!/usr/bin/env bash
# Every GPU figure issue 4 asks for, in one run on a lent GPU machine (about 6 minutes on an H100):
#   bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.log
# It uses the machine's own python3 (torch with CUDA); nothing is downloaded, weights are random
# (speed does not depend on weight values). Each line that carries a figure starts with "==".
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONWARNINGS=ignore
PY=${PYTHON:-python3}

echo "== $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
$PY -c "import torch, torchvision, PIL; print('== torch', torch.__version__, 'torchvision', torchvision.__version__, 'pillow', PIL.__version__)"
$PY -m pytest -q -p no:cacheprovider tests/test_embedding.py 2>&1 | tail -3 | sed 's/^/== tests: /'

step() { echo "== $*"; timeout 240 "$PY" benchmarks/extract.py "$@" 2>/dev/null | grep -v '^$' | sed 's/^/   /'; }
step --images 3000                               # decode auto = nvjpeg, bf16, channels_last, batch 256
step --images 3000 --decode cpu                  # PIL in the loader workers, for comparison
step --images 3000 --batch-size 512
step --stage --size 224x224                      # the pets dataset's size and split counts
step --stage --size 224x224 --decode cpu
step --precision-check 512                       # bf16/fp16 cosine to fp32, random BN-calibrated backbone
