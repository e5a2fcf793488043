#!/usr/bin/env bash
# Run on a lent GPU machine (no network; it has torch, typer, rich, pandas, matplotlib, ...):
# installs the wheels `make gpu-wheels` put in .whl (carried), measures every CUDA figure of
# issue 5, then trains end to end on CUDA (smoke recipe: eager, train.compile, exact under
# compile, a packed compiled smoke grid). Writes <gpu>.json, <gpu>.log and <gpu>-train.log
# into $OUT (the device tool's) or benchmarks/. Usage: bash benchmarks/gpu.sh [all|bench|train]
# (default all; the two parts as separate device calls if one call's 10 minutes run short).
set -euo pipefail
part="${1:-all}"
case "$part" in all | bench | train) ;; *) echo "gpu.sh: part must be all, bench or train, got '$part'" >&2; exit 2 ;; esac
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
out="${OUT:-benchmarks}"
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | tr ' ' '-' | tr -cd 'A-Za-z0-9_.-')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
if [ "$part" != train ]; then
  python3 -m softmaso bench --device cuda --json "$out/$gpu.json" 2>&1 | tee "$out/$gpu.log" ||
    echo "== bench failed (exit $?); the training checks still run"
fi
[ "$part" = bench ] && exit 0

# End to end on CUDA; a failure is logged and the next check still runs.
set +e
runs="$(mktemp -d)"
train() {  # NAME, then overrides
  local name="$1"
  shift
  echo "== softmaso train smoke --device cuda $*"
  python3 -m softmaso train smoke --device cuda --out "$runs/$name" "$@"
  echo "== exit $? ($name)"
}
{
  train eager
  train compiled --set train.compile=true
  train exact-cholesky-compiled --set train.compile=true --set ortho.mode=exact
  train exact-qr-compiled --set train.compile=true --set ortho.mode=exact \
    --set ortho.method=qr
  python3 -m softmaso eval "$runs/compiled" --device cuda --json
  echo "== reproduce table2 --smoke, packed and compiled"
  python3 -m softmaso reproduce table2 --smoke --datasets cifar10 --runs 2 --pack \
    --devices 0 --set train.compile=true --results "$runs/grid"
  echo "== exit $? (grid)"
  cat "$runs/grid/table.md"
} 2>&1 | tee "$out/$gpu-train.log"
