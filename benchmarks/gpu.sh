#!/usr/bin/env bash
# Run on a lent GPU machine (no network; it has torch, typer, rich, pandas, matplotlib, ...):
# installs the wheels `make gpu-wheels` put in .whl (carried), then measures every CUDA figure
# of issue 5. Writes <gpu>.json and <gpu>.log into $OUT (the device tool's) or benchmarks/.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
out="${OUT:-benchmarks}"
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-' | tr -cd 'A-Za-z0-9_.-')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
python3 -m softmaso bench --device cuda --json "$out/$gpu.json" 2>&1 | tee "$out/$gpu.log"
