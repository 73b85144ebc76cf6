#!/usr/bin/env bash
# Protection sweep on a GPU machine: the CPU defaults (smallcnn surrogate, 20 epochs, fp32) for
# several generation variants x seeds, each poison judged by the CPU's victims (resnet10 and
# plaincnn, 30 epochs), several rows at once on the one GPU. A screening tool: the GPU's
# kernels and victims' bf16 training are not the CPU's, so a variant it picks is re-measured
# on the CPU before any claim.
#
#   OUT=/tmp/sweep bash experiments/gpu_sweep.sh [VARIANTS_FILE]
#
# VARIANTS_FILE: lines "NAME OPTIONS..." (default: experiments/gpu_sweep_variants.txt).
# Environment: SEEDS (default "0 1 2"), PARALLEL (default 6), SWEEP_DEADLINE seconds after
# which no new row starts (default 420), SWEEP_DEVICE (default cuda; cpu for a rehearsal with
# SWEEP_TINY=1: 64 images, 1 epoch, 1 victim epoch), SWEEP_BUILD (default 1: pip install -e .).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu_sweep}
mkdir -p "$OUT"
variants=${1:-experiments/gpu_sweep_variants.txt}
PYTHON=${PYTHON:-python3}
export DEVICE=${SWEEP_DEVICE:-cuda} SWEEP_DIR="$OUT/sweep" MIUE="$PYTHON -m miue_ext" OMP_NUM_THREADS=2
start=$(date +%s)
deadline=$(( start + ${SWEEP_DEADLINE:-420} ))
if [[ ${SWEEP_BUILD:-1} == 1 ]]; then
  echo "build: $(date -u +%T)"
  USE_CUDA=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=$(nproc) \
    "$PYTHON" -m pip install --no-build-isolation --no-deps -e . >"$OUT/build.log" 2>&1 || { tail -20 "$OUT/build.log"; exit 1; }
  echo "built: $(( $(date +%s) - start )) s"
fi
tiny=()
if [[ ${SWEEP_TINY:-0} == 1 ]]; then
  tiny=(--max-samples 64 --epochs 1)
  export EVAL_EXTRA="--epochs 1"
else
  export EVAL_EXTRA="--epochs 30"  # the CPU victims' default; CUDA's default is 60
fi
rows=()
for seed in ${SEEDS:-0 1 2}; do  # seed-major: a run cut by the deadline keeps whole seeds
  while read -r name opts; do
    [[ -z $name || $name == \#* ]] && continue
    rows+=("$name $seed --model smallcnn --epochs 20 --no-amp $opts ${tiny[*]}")
  done <"$variants"
done
run_row() {
  if (( $(date +%s) >= deadline )); then echo "skip (deadline): $*"; return 0; fi
  local t0=$(date +%s)
  # shellcheck disable=SC2086
  bash experiments/protection_run.sh $* && echo "done $(( $(date +%s) - t0 )) s: $*" || echo "FAILED: $*"
}
export -f run_row
export deadline
printf '%s\n' "${rows[@]}" | xargs -P "${PARALLEL:-6}" -I{} bash -c 'run_row {}'
echo "rows finished at $(( $(date +%s) - start )) s"
"$PYTHON" experiments/protection_table.py "$OUT/sweep" | tee "$OUT/table.md"
