#!/usr/bin/env bash
# The first thing to run on a lent GPU machine (no network; torch, torchvision, pandas, typer,
# rich and matplotlib there, pydantic and submitit not): installs the wheels carried in .whl
# (`make gpu-wheels` here), then runs benchmarks/gpu_check.py within the call: every CUDA path
# of softmaso, one OK, FAIL or SKIP line each, figures against issue 24's targets
# (benchmarks/RESULTS.md says which). Writes into $OUT (the device tool copies it back), else
# benchmarks/gpu-first/: gpu-check.json (rewritten after every check), gpu-first.log (this
# output) and gpu-check-logs/ (each check's commands and their output).
#
#   bash benchmarks/gpu-first.sh                    # device call: carry .whl, timeout_s 540
#   bash benchmarks/gpu-first.sh --only workers,pack_layout     # gpu_check.py's options
#   bash benchmarks/gpu-first.sh --dry-run          # the same, tiny, on the CPU (a test)
#
# GPU_FIRST_LIMIT_S (default 480): the script ends within that many seconds, skipping the checks
# that would not fit. SOFTMASO_GPU_DRY_RUN=1 is --dry-run. PYTHON (default python3).
set -uo pipefail
t0=$(date +%s)
limit_s="${GPU_FIRST_LIMIT_S:-480}"
dry="${SOFTMASO_GPU_DRY_RUN:-0}"
args=()
for a in "$@"; do
  if [ "$a" = --dry-run ]; then dry=1; else args+=("$a"); fi
done
cd "$(dirname "$0")/.."
out="${OUT:-benchmarks/gpu-first}"
mkdir -p "$out"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
{
  echo "== gpu-first.sh at $(git rev-parse --short HEAD 2>/dev/null || echo '(no git)')," \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ), limit ${limit_s} s"
  if [ "$dry" = 1 ]; then
    device=cpu
    args+=(--dry-run)
  else
    device=cuda
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    pip=("$py" -m pip install -q --no-index --no-cache-dir --upgrade --target /tmp/site)
    "${pip[@]}" --find-links .whl pydantic submitit ||
      "${pip[@]}" --no-deps .whl/*.whl || # a .whl without submitit's cloudpickle
      echo "== the wheels in .whl did not install; trying without them"
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
  "$py" -c "import sys, torch, pydantic, softmaso.config
print('python', sys.version.split()[0], 'torch', torch.__version__, 'pydantic', pydantic.VERSION)" ||
    { echo "== softmaso does not import: carry .whl (make gpu-wheels)"; exit 2; }
  budget=$((limit_s - ($(date +%s) - t0) - 5))
  "$py" benchmarks/gpu_check.py --device "$device" --budget-s "$budget" \
    --out "$out/gpu-check.json" ${args[@]+"${args[@]}"}
} 2>&1 | tee "$out/gpu-first.log"
exit "${PIPESTATUS[0]}"
