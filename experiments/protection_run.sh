#!/usr/bin/env bash
# One row of a protection table: generate a poison with one seed, then train each victim on it.
#   experiments/protection_run.sh NAME SEED [miue generate options...]
# Writes out/sweep/NAME_sSEED.npz, out/sweep/NAME_sSEED_<victim>/report.json and a log line per
# step (wall seconds) to out/sweep/NAME_sSEED.log. Victims: $VICTIMS (default: resnet10 plaincnn).
# Single-threaded, so that two rows can run at once on two cores.
# Environment: DEVICE (default cpu), SWEEP_DIR (default out/sweep), EVAL_EXTRA (more evaluate
# options, e.g. "--epochs 30" to give a CUDA victim the CPU's default epochs), DATA (default patches).
set -euo pipefail
name=$1 seed=$2
shift 2
cd "$(dirname "$0")/.."
MIUE=${MIUE:-.venv/bin/miue}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
dir=${SWEEP_DIR:-out/sweep}
device=${DEVICE:-cpu}
mkdir -p "$dir"
stem="$dir/${name}_s${seed}"
log="$stem.log"
if [[ $name == clean || $name == random ]]; then
  poison=$name
else
  poison="$stem.npz"
  if [[ ! -s $poison ]]; then
    t0=$(date +%s)
    $MIUE generate --device "$device" --seed "$seed" --no-progress --out "$poison" "$@" >"$stem.generate.txt" 2>&1
    echo "generate $(( $(date +%s) - t0 )) s: $*" >>"$log"
  fi
fi
for victim in ${VICTIMS:-resnet10 plaincnn}; do
  report="${stem}_$victim"
  [[ -s $report/report.json ]] && continue
  rm -rf "$report"
  t0=$(date +%s)
  # shellcheck disable=SC2086  # EVAL_EXTRA holds several options
  $MIUE evaluate --poison "$poison" --data "${DATA:-patches}" --model "$victim" --device "$device" --no-progress \
    ${EVAL_EXTRA:-} --out "$report" >"$report.txt" 2>&1
  echo "evaluate $victim $(( $(date +%s) - t0 )) s" >>"$log"
done
