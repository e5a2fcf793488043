#!/usr/bin/env bash
# One short call on a lent GPU machine (no network; torch, typer, rich, pandas, ... are there):
#   1. the real Fashion-MNIST grid (`softmaso reproduce fashion`, 15 runs) on CUDA, eight
#      worker processes sharing the GPU, unpacked, so its table sits beside the 2-core CPU one;
#   2. CUDA end to end on the smoke recipe: eager, then `exact` under train.compile (CUDA
#      graphs around cuSOLVER's Cholesky: whether capture works was never measured).
# Needs, carried: .whl (`make gpu-wheels`) and .gpu-data (the four Fashion-MNIST IDX .gz
# files, e.g. Debian's). Each part has its own time limit and a failure does not stop the
# next. Writes gpu-check.log and fashion-cuda.tar.gz (run files without checkpoints or
# weights, table, curves) to $OUT (the device tool's), else to benchmarks/.
#   bash benchmarks/gpu-check.sh [GRID_SECONDS] [WORKERS]
set -uo pipefail
grid_s="${1:-300}"
workers="${2:-8}"
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 2
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1 SOFTMASO_DATA=/tmp/softmaso-data
out="${OUT:-benchmarks}"
work="$(mktemp -d)"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  python3 -m softmaso data fetch fashion-mnist --from .gpu-data
  devices="$(python3 -c "print(','.join(['0'] * $workers))")"
  echo "== reproduce fashion on CUDA, $workers workers, limit ${grid_s}s"
  t0=$(date +%s)
  timeout "$grid_s" python3 -m softmaso reproduce fashion --devices "$devices" --no-pack \
    --results "$work/fashion"
  echo "== exit $? (grid) after $(($(date +%s) - t0)) s"
  cat "$work/fashion/table.md"
  for spec in "eager" "exact-compiled --set ortho.mode=exact --set train.compile=true"; do
    set -- $spec
    name="$1"
    shift
    echo "== train smoke --device cuda $* (limit 150 s)"
    t0=$(date +%s)
    timeout 150 python3 -m softmaso train smoke --device cuda --out "$work/smoke-$name" "$@"
    echo "== exit $? ($name) after $(($(date +%s) - t0)) s"
  done
} 2>&1 | tee "$out/gpu-check.log"
tar -czf "$out/fashion-cuda.tar.gz" -C "$work" --exclude=checkpoint.pt \
  --exclude=model.safetensors --exclude=.lock fashion smoke-eager smoke-exact-compiled 2>/dev/null
ls -la "$out"
