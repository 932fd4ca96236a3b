#!/usr/bin/env bash
# The GPU check, ordered for a short lease: what matters most is measured first, and every step leaves its
# results on disk before the next begins, so a check cut short still returns what it got.
#   1. install the repo (no network: pip install --no-deps --no-build-isolation -e .)
#   2. report --part headline: each op's main case against its strongest peer (benchmarks/cases.py HEADLINE)
#   3. report --part rest: every other case and contender, added to the same results file
#   4. train throughput: steps per second of each stage at the gpu preset, peak memory with and
#      without activation checkpointing (benchmarks/train_throughput.py)
#   5. the kernel tests, natively on the GPU
# Run from anywhere on a CUDA machine:  bash benchmarks/gpu_check.sh   (about 8 minutes at most)
# Results go to $OUT when it is set (the device tool's folder; at most 8 files come back from it), else to
# benchmarks/results/. There: <gpu>-<date>.json/.md (the report), throughput-<gpu>-<date>.json/.md,
# gpu_check.log (every step's output) and gpu_check.md (each step's exit status and seconds, rewritten after
# every step). Exits non-zero if any step failed or was cut short.
set -uo pipefail  # no -e: a failing step must not cost the ones after it
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET  # native kernels only
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
RESULTS=${OUT:-benchmarks/results}
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
SUMMARY="$RESULTS/gpu_check.md"
BUDGET=${GPU_CHECK_BUDGET:-465}  # seconds for all steps: 8 minutes less a margin for the start and the copies
status=0
printf '# gpu_check\n\n| step | exit | seconds |\n|---|---:|---:|\n' > "$SUMMARY"
: > "$LOG"

# step NAME CAP COMMAND...: run COMMAND with a timeout of CAP seconds, or of what is left of the budget if
# that is less (so the steps first in line get their time); its output goes to the screen and the log.
step() {
  local name=$1 cap=$2 start=$SECONDS rc limit
  shift 2
  limit=$((BUDGET - SECONDS))
  [ "$limit" -gt "$cap" ] && limit=$cap
  if [ "$limit" -lt 10 ]; then
    echo "== $name: skipped, no time left in the ${BUDGET}s budget" | tee -a "$LOG"
    echo "| $name | skipped | 0 |" >> "$SUMMARY"
    status=1
    return
  fi
  echo "== $name (timeout ${limit}s)" | tee -a "$LOG"
  timeout -k 10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  rc=$?
  echo "== $name: exit $rc after $((SECONDS - start))s" | tee -a "$LOG"
  echo "| $name | $rc$([ "$rc" -eq 124 ] && echo ' (timed out)') | $((SECONDS - start)) |" >> "$SUMMARY"
  [ "$rc" -eq 0 ] || status=1
}

step install 60 "$PY" -m pip install -q --no-deps --no-build-isolation -e .
{ nvidia-smi || echo "nvidia-smi: not available"; } 2>&1 | tee -a "$LOG"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'triton', \
triton.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')" \
  2>&1 | tee -a "$LOG"
step report-headline 150 "$PY" benchmarks/report.py --part headline --out "$RESULTS"
step report-rest 150 "$PY" benchmarks/report.py --part rest --out "$RESULTS"
step train-throughput 60 "$PY" benchmarks/train_throughput.py --out "$RESULTS"
# the compile check (every variant for sm_90 and sm_80) runs in CI; here the kernels compile natively as they run
step kernel-tests 240 env DALLE_KERNELS_BACKEND=triton "$PY" -m pytest -q tests/kernels -x \
  --deselect tests/kernels/test_compile.py::test_every_kernel_variant_compiles_for_hopper_and_ampere
echo "== gpu_check: $([ $status -eq 0 ] && echo OK || echo FAILED) after ${SECONDS}s" | tee -a "$LOG"
echo "| total | $status | $SECONDS |" >> "$SUMMARY"
exit $status
