#!/usr/bin/env bash
# Time one full-width largeCNN epoch on a GPU (the unit of `softmaso reproduce table2`: 90 runs
# x 150-200 epochs), eager and under train.compile, baseline and exact, on the synthetic
# CIFAR-shaped set at CIFAR-10's size (50,000 training and 10,000 test images, batch 50, 1,000
# steps). Needs .whl carried (`make gpu-wheels`). Prints, per variant, the epoch's training
# seconds, evaluation seconds and training images/s (from metrics.jsonl), and writes
# gpu-epoch.log to $OUT (else benchmarks/).   bash benchmarks/gpu-epoch.sh [EPOCHS]
set -uo pipefail
epochs="${1:-2}"
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 2
export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
out="${OUT:-benchmarks}"
work="$(mktemp -d)"
{
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  for spec in "eager-none" "eager-exact ortho.mode=exact" "compiled-none train.compile=true" \
    "compiled-exact ortho.mode=exact train.compile=true"; do
    set -- $spec
    name="$1"
    shift
    sets=()
    for kv in "$@"; do sets+=(--set "$kv"); done
    t0=$(date +%s)
    timeout 170 python3 -m softmaso train table2/cifar10 --device cuda --out "$work/$name" \
      --set data.name=synthetic --set data.synthetic_train=50000 --set train.epochs="$epochs" \
      "${sets[@]}" > "$work/$name.log" 2>&1
    rc=$?
    python3 - "$work/$name" "$name" "$rc" "$(($(date +%s) - t0))" <<'PY'
import json, sys
from pathlib import Path
run, name, rc, wall = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()] if (run / "metrics.jsonl").exists() else []
for r in rows:
    print(f"{name}: epoch {r['epoch']} train {r['train_seconds']:.1f} s, eval {r['eval_seconds']:.1f} s, "
          f"{r['images_per_s']:.0f} images/s, peak CUDA {r.get('peak_cuda_mib')} MiB, test acc {r['test_acc']:.3f}")
print(f"{name}: exit {rc}, {wall} s in all (process start, data, compile included)")
PY
    [ "$rc" = 0 ] || tail -5 "$work/$name.log"
  done
} 2>&1 | tee "$out/gpu-epoch.log"
