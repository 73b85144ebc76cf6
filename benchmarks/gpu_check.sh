#!/usr/bin/env bash
# One call on the GPU machine, ordered by value so that a run stopped at its time limit keeps
# what matters most: build the extension against the torch there; the CUDA tests alone (the CPU
# variants run in CI); --deterministic on CUDA; the benchmarks the targets table needs; a real
# generation (ResNet-18 surrogate, the paper's 100 epochs, on the embedded `patches`) evaluated
# with two victims; then, only if time remains, the rest of the benchmark grid. A summary table
# is printed last whatever happened. Each step logs with a timestamp; a failing step does not
# stop later ones, but the script exits nonzero at the end.
#
# On the device machine (repository root):   bash benchmarks/gpu_check.sh
# Rehearsal on a CPU (builds in place, touches no installed package; see benchmarks/RESULTS.md):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_BUILD=inplace OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
#
# Settings (environment):
#   OUT                 results folder (required; the device tool sets it)
#   PYTHON              interpreter (default python3)
#   GPU_CHECK_DEVICE    cuda (default) or cpu (rehearsal: runs the steps at tiny sizes)
#   GPU_CHECK_BUILD     pip (default: pip install --no-build-isolation --no-deps -e .) or inplace
#                       (setup.py build_ext --inplace: for rehearsals, leaves the environment alone)
#   GPU_CHECK_DEADLINE  seconds for the whole script (default 480)
#   GPU_CHECK_SLOWDOWN  multiplies every step's time limit (default 1; e.g. 4 for a 2-core rehearsal)
#   GPU_CHECK_EPOCHS    generation epochs (default 100 on cuda, 1 on cpu)
#   GPU_CHECK_GENERATE  0: skip the generation + victims step (kernels-only rerun)
#   GPU_CHECK_REST      1: after everything else, the default benchmark grid until the deadline
# Files written to $OUT (the device tool brings back at most 8): gpu_check.log build.log tests.log
#   bench.log bench_targets.json bench_<device>.md generate.log bench_rest.json
set -u
set -o pipefail

OUT=${OUT:?set OUT to the folder for the results}
PYTHON=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BUILD=${GPU_CHECK_BUILD:-pip}
DEADLINE=${GPU_CHECK_DEADLINE:-480}
SLOWDOWN=${GPU_CHECK_SLOWDOWN:-1}
REST=${GPU_CHECK_REST:-0}
GENERATE=${GPU_CHECK_GENERATE:-1}
if [[ $DEVICE == cuda ]]; then EPOCHS=${GPU_CHECK_EPOCHS:-100}; else EPOCHS=${GPU_CHECK_EPOCHS:-1}; fi
export PYTHON DEVICE BUILD EPOCHS OUT PYTHONUNBUFFERED=1
mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 2
STARTED=$(date +%s)
SUMMARY=()
FAILED=()

log() {
  echo "[$(date -u +%H:%M:%S) +$(( $(date +%s) - STARTED ))s] $*" | tee -a "$OUT/gpu_check.log"
}

# step NAME LOGFILE BUDGET_SECONDS COMMAND...: run COMMAND (a program, or a function of this
# script) with output to $OUT/LOGFILE, stopped at BUDGET * SLOWDOWN or at the script's deadline
# (SIGINT first, so that pytest still writes its JSON; SIGKILL 15 s later).
step() {
  local name=$1 logfile=$2 budget=$(( $3 * SLOWDOWN ))
  shift 3
  local shown="$*"
  if declare -F "$1" >/dev/null; then
    set -- bash -c "$(declare -f "$1"); $*"
  fi
  local left=$(( DEADLINE - ($(date +%s) - STARTED) ))
  local limit=$(( budget < left ? budget : left ))
  if (( limit < 5 )); then
    log "SKIP  $name: no time left before the ${DEADLINE}s deadline"
    FAILED+=("$name(skipped)")
    SUMMARY+=("| $name | skipped (deadline) | - |")
    return
  fi
  log "START $name (limit ${limit}s): $shown"
  echo "===== $name: $shown =====" >>"$OUT/$logfile"
  local t0=$(date +%s)
  timeout -s INT -k 15 "$limit" "$@" >>"$OUT/$logfile" 2>&1
  local rc=$? took=$(( $(date +%s) - t0 ))
  if (( rc == 0 )); then
    log "OK    $name (${took}s)"
    SUMMARY+=("| $name | ok | ${took}s |")
  else
    local why="rc=$rc"
    (( rc == 124 || rc == 130 )) && why="stopped at its ${limit}s limit"
    log "FAIL  $name ($why, ${took}s); last lines of $logfile:"
    tail -n 15 "$OUT/$logfile" | sed 's/^/      /' | tee -a "$OUT/gpu_check.log"
    FAILED+=("$name($why)")
    SUMMARY+=("| $name | FAILED: $why | ${took}s |")
  fi
}

environment() {
  date -u
  git log -1 --format='commit %H %s' 2>/dev/null || echo "commit unknown (no git)"
  command -v nvidia-smi >/dev/null && nvidia-smi
  command -v nvcc >/dev/null && nvcc --version
  "$PYTHON" - <<'EOF'
import os, platform, sys, torch
print("python", sys.version.split()[0], platform.machine(), "cpus", os.cpu_count())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("device", p.name, "sm", f"{p.major}.{p.minor}", "multiprocessors", p.multi_processor_count,
          "memory GiB", round(p.total_memory / 2**30, 1))
try:
    import expecttest  # noqa: F401  (torch.library.opcheck needs it)
    print("expecttest: present")
except ImportError:
    print("expecttest: MISSING: the opcheck tests will fail; carry its wheel (RESULTS.md)")
EOF
  "$PYTHON" -m pip list 2>/dev/null | grep -i -E '^(torch|triton|numpy|pytest|pytest-benchmark|pillow|setuptools|ninja|expecttest) '
}

build() {
  if [[ $DEVICE == cuda ]]; then
    export USE_CUDA=1  # fail loudly rather than build a CPU-only extension
  fi
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  export MAX_JOBS=${MAX_JOBS:-$(nproc)}
  if [[ $BUILD == inplace ]]; then
    "$PYTHON" setup.py -q build_ext --inplace
  else
    "$PYTHON" -m pip install --no-build-isolation --no-deps -e .
  fi
}

smoke() {  # the extension loads, and its kernels run on the device under test
  "$PYTHON" - "$DEVICE" <<'EOF'
import sys, torch
import miue_ext.ops as ops
device = sys.argv[1]
features = torch.randn(64, 32, device=device, requires_grad=True)
labels = torch.randint(0, 10, (64,), device=device)
loss = ops.mi_ue_loss(features, labels)
loss.backward()
delta = torch.zeros(8, 3, 4, 4, device=device)
ops.pgd_update_(delta, torch.rand_like(delta), torch.randn_like(delta), 0.01, 0.03)
assert torch.isfinite(loss) and torch.isfinite(features.grad).all() and delta.abs().max() > 0
print("ok:", device, "loss", float(loss.detach()), "from", ops.__file__)
EOF
}

device_tests() {  # the tests that exercise the device under test; on a CPU rehearsal, the CPU ops
  local select="cuda"
  [[ $DEVICE == cpu ]] && select="cpu and (test_ops_precision or test_ops_loss or test_ops_intra_class_cosine or test_ops_pgd_update)"
  "$PYTHON" -m pytest python_tests -m "not slow" -k "$select" -q -p no:cacheprovider -rfE --maxfail=20 \
    -o addopts="" 2>&1 || return 1
}

determinism() {  # --deterministic: the same seed on the same device gives a bit-identical poison
  local scratch
  scratch=$(mktemp -d)
  for run in a b; do
    "$PYTHON" -m miue_ext generate --device "$DEVICE" --max-samples 1024 --epochs 2 --deterministic \
      --no-progress --out "$scratch/$run.npz" || return 1
  done
  "$PYTHON" - "$scratch/a.npz" "$scratch/b.npz" <<'EOF'
import sys
import numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
same = all(np.array_equal(a[k], b[k]) for k in ("images", "labels", "perturbation"))
print("bit-identical poison:", same, "| L-inf", int(np.abs(a["perturbation"]).max()))
sys.exit(0 if same else 1)
EOF
}

streaming() {  # --storage stream with float32 delta files gives the resident run's poison, bit for bit
  local scratch
  scratch=$(mktemp -d)
  for storage in resident stream; do
    "$PYTHON" -m miue_ext generate --device "$DEVICE" --max-samples 1024 --epochs 2 --deterministic \
      --storage "$storage" --stream-dtype float32 --chunk-size 512 --no-progress --out "$scratch/$storage.npz" \
      || return 1
  done
  "$PYTHON" - "$scratch/resident.npz" "$scratch/stream.npz" <<'EOF'
import sys
import numpy as np
a, b = np.load(sys.argv[1]), np.load(sys.argv[2])
same = all(np.array_equal(a[k], b[k]) for k in ("images", "labels", "perturbation"))
print("streamed (2 chunks) == resident:", same)
sys.exit(0 if same else 1)
EOF
}

bench_grid() {  # GRID JSON [pytest args...]
  local grid=$1 json=$2
  shift 2
  local size_grid=$grid
  [[ $DEVICE == cpu ]] && size_grid=quick  # a rehearsal checks the plumbing, not the timings
  "$PYTHON" -m pytest benchmarks -p no:cacheprovider -q -rfE --bench-device "$DEVICE" --bench-grid "$size_grid" \
    --benchmark-json "$json" --benchmark-columns=median,iqr,rounds,iterations --benchmark-sort=name "$@"
}

# The generation issue's run: the device's defaults (ResNet-18 surrogate on CUDA) for $EPOCHS
# epochs on `patches`, then the resnet18 victim and the device's default victim (vgg11 on CUDA).
generate_and_evaluate() {
  local scratch extra=()
  scratch=$(mktemp -d)
  [[ $DEVICE == cpu ]] && extra=(--max-samples 256)
  local t0=$(date +%s)
  "$PYTHON" -m miue_ext generate --device "$DEVICE" --epochs "$EPOCHS" --seed 0 --no-progress \
    --out "$scratch/poison.npz" "${extra[@]}" || return 1
  echo "generation wall time: $(( $(date +%s) - t0 )) s"
  local victim_epochs=()
  [[ $DEVICE == cpu ]] && victim_epochs=(--epochs 1)
  for victim in resnet18 auto; do
    t0=$(date +%s)
    "$PYTHON" -m miue_ext evaluate --poison "$scratch/poison.npz" --model "$victim" --device "$DEVICE" \
      --no-progress "${victim_epochs[@]}" --out "$scratch/eval_$victim" || return 1
    echo "evaluation ($victim) wall time: $(( $(date +%s) - t0 )) s"
    "$PYTHON" - "$scratch/eval_$victim/report.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"RESULT victim={r['model']} final={100 * r['final_test_acc']:.2f}% peak={100 * r['peak_test_acc']:.2f}% "
      f"(epoch {r['peak_epoch']}) wall={r['wall_time_s']:.0f}s")
EOF
  done
}

log "gpu_check: device=$DEVICE build=$BUILD deadline=${DEADLINE}s epochs=$EPOCHS out=$OUT python=$PYTHON"
step environment build.log 30 environment
step build build.log 240 build
step smoke build.log 60 smoke
step device-tests tests.log 120 device_tests
step determinism tests.log 60 determinism
step streaming tests.log 60 streaming
step bench-targets bench.log 150 bench_grid targets "$OUT/bench_targets.json"
step profile-loss profile.log 60 "$PYTHON" benchmarks/profile_loss.py --device "$DEVICE" --passes 20
if [[ $GENERATE == 1 ]]; then
  step generate generate.log 240 generate_and_evaluate
fi
if [[ $REST == 1 ]]; then
  step bench-rest bench.log 600 bench_grid default "$OUT/bench_rest.json"
fi
reports=()
for json in "$OUT/bench_targets.json" "$OUT/bench_rest.json"; do [[ -s $json ]] && reports+=("$json"); done
if (( ${#reports[@]} )); then
  step report bench.log 30 "$PYTHON" benchmarks/results_table.py "${reports[@]}" --markdown "$OUT/bench_$DEVICE.md"
  [[ -s $OUT/bench_$DEVICE.md ]] && cat "$OUT/bench_$DEVICE.md"
fi
grep -h "RESULT\|wall time\|mean throughput" "$OUT/generate.log" 2>/dev/null
echo
echo "| step | outcome | time |"
echo "|---|---|---|"
printf '%s\n' "${SUMMARY[@]}"
if (( ${#FAILED[@]} )); then
  log "DONE with failures: ${FAILED[*]}"
  exit 1
fi
log "DONE: all steps passed"
