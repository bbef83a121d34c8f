#!/usr/bin/env bash
# Every GPU figure of the extraction work in one run on a lent GPU machine (about 4 minutes on an H200):
#   bash benchmarks/gpu_check.sh 2>&1 | tee gpu_check.log
# It uses the machine's own python3 (torch with CUDA) and only packages its image has (no dvc, kagglehub,
# imagehash or ray); nothing is downloaded; weights are random (speed does not depend on weight values).
# Each line that carries a figure starts with "==".
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD" PYTHONWARNINGS=ignore PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
JPEGS=${JPEGS:-/tmp/gpu_check_jpegs}

echo "== $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
$PY -c "import os, torch, torchvision, PIL; print('== torch', torch.__version__, 'torchvision', torchvision.__version__, 'pillow', PIL.__version__, 'cpus', os.cpu_count())"
$PY -m pytest -q -p no:cacheprovider tests/test_embedding.py 2>&1 | tail -2 | sed 's/^/== tests: /'

step() { echo "== $*"; timeout 200 "$PY" benchmarks/extract.py "$@" 2>/dev/null | grep -v '^$' | sed 's/^/   /'; }
step --images 3000 --jpegs "$JPEGS" --seconds 5                 # auto: nvjpeg, bf16, batch 256, default layout
step --images 3000 --jpegs "$JPEGS" --seconds 5 --decode cpu    # PIL in the loader workers, for comparison
step --stage --size 224x224                                     # the pets dataset's size and split counts, shipped params
step --stage --size 224x224 --decode cpu
step --images 3000 --jpegs "$JPEGS" --seconds 5 --batch-size 512
step --precision-check 256 --jpegs "$JPEGS"                     # bf16/fp16 cosine to fp32, random BN-calibrated backbone
step --images 3000 --jpegs "$JPEGS" --seconds 2 --profile 25      # where the main process spends the end-to-end pass
