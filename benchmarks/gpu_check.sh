#!/usr/bin/env bash
# One call on the GPU machine: build the extension against the torch there, run the tests
# (CUDA ones included: they are parametrised over the devices torch sees), run the benchmark
# suite at the GPU sizes (it measures copy bandwidth and the matmul rate once), and write the
# JSON, the markdown report and the plot to $OUT. Every step is logged with a timestamp; a
# failing step does not stop the later ones, but the script exits nonzero at the end.
#
# On the device machine (repository root):   bash benchmarks/gpu_check.sh
# Rehearsal on a CPU (builds in place, touches no installed package; see benchmarks/RESULTS.md):
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_BUILD=inplace OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh
#
# Settings (environment):
#   OUT                 results folder (required; the device tool sets it)
#   PYTHON              interpreter (default python3)
#   GPU_CHECK_DEVICE    cuda (default) or cpu (rehearsal)
#   GPU_CHECK_BUILD     pip (default: pip install --no-build-isolation --no-deps -e .) or inplace
#                       (setup.py build_ext --inplace: for rehearsals, leaves the environment alone)
#   GPU_CHECK_GRID      suite grid (default: default, i.e. the GPU sizes on cuda; quick for a dry run)
#   GPU_CHECK_DEADLINE  seconds for the whole script (default 450: the limit is 8 minutes)
#   GPU_CHECK_SLOWDOWN  multiplies every step's time limit (default 1; e.g. 4 for a 2-core rehearsal)
# Files written to $OUT (the device tool brings back at most 8): gpu_check.log env.txt build.log
#   tests.log bench.log bench_<device>.json bench_<device>.md bench_<device>.png
set -u
set -o pipefail

OUT=${OUT:?set OUT to the folder for the results}
PYTHON=${PYTHON:-python3}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
BUILD=${GPU_CHECK_BUILD:-pip}
GRID=${GPU_CHECK_GRID:-default}
DEADLINE=${GPU_CHECK_DEADLINE:-450}
SLOWDOWN=${GPU_CHECK_SLOWDOWN:-1}
export PYTHON DEVICE BUILD PYTHONUNBUFFERED=1
mkdir -p "$OUT"
cd "$(dirname "$0")/.." || exit 2
STARTED=$(date +%s)
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
    return
  fi
  log "START $name (limit ${limit}s): $shown"
  echo "===== $name: $shown =====" >>"$OUT/$logfile"
  timeout -s INT -k 15 "$limit" "$@" >>"$OUT/$logfile" 2>&1
  local rc=$?
  if (( rc == 0 )); then
    log "OK    $name"
  else
    log "FAIL  $name rc=$rc$( (( rc == 124 || rc == 130 )) && echo ' (stopped at its time limit)'); last lines of $logfile:"
    tail -n 15 "$OUT/$logfile" | sed 's/^/      /' | tee -a "$OUT/gpu_check.log"
    FAILED+=("$name(rc=$rc)")
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
EOF
  "$PYTHON" -m pip list 2>/dev/null | grep -i -E '^(torch|triton|numpy|pytest|pytest-benchmark|pillow|setuptools|ninja) '
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

log "gpu_check: device=$DEVICE build=$BUILD grid=$GRID deadline=${DEADLINE}s out=$OUT python=$PYTHON"
step environment env.txt 60 environment
step build build.log 240 build
step smoke build.log 60 smoke
step tests tests.log 150 "$PYTHON" -m pytest python_tests -m "not slow" -q -p no:cacheprovider -rfE
step determinism tests.log 90 determinism
JSON="$OUT/bench_$DEVICE.json"
step suite bench.log 400 "$PYTHON" -m pytest benchmarks -p no:cacheprovider -q -rfE \
  --bench-device "$DEVICE" --bench-grid "$GRID" --benchmark-json "$JSON" \
  --benchmark-columns=median,iqr,rounds,iterations --benchmark-sort=name
if [[ -s $JSON ]]; then
  step report bench.log 60 "$PYTHON" benchmarks/report.py "$JSON" \
    --markdown "$OUT/bench_$DEVICE.md" --png "$OUT/bench_$DEVICE.png"
else
  log "SKIP  report: the suite wrote no JSON"
  FAILED+=("report(no json)")
fi

[[ -s $OUT/bench_$DEVICE.md ]] && cat "$OUT/bench_$DEVICE.md"
if (( ${#FAILED[@]} )); then
  log "DONE with failures: ${FAILED[*]}"
  exit 1
fi
log "DONE: all steps passed"
